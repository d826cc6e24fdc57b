// Heartbeat dashboard: what every page shares. Plain JavaScript, no build step.
'use strict';

const HB = {
  STATUS_COLOURS: { normal: '#3fb950', bradycardia: '#58a6ff', tachycardia: '#f85149', no_signal: '#8b949e' },
  STATUS_NAMES: { normal: 'Normal', bradycardia: 'Bradycardia', tachycardia: 'Tachycardia', no_signal: 'No signal' },
  KIND_NAMES: { bradycardia: 'Bradycardia', tachycardia: 'Tachycardia', signal_loss: 'Signal loss', device_offline: 'Offline' },
  whoami: null,

  // JSON from the API; a 401 goes to the login form.
  async api(path, options) {
    // X-HB-Request: the server accepts changes by cookie only with it, which a
    // form or a page of another origin cannot send.
    const response = await fetch(path, Object.assign({ headers: { Accept: 'application/json', 'X-HB-Request': '1' } }, options || {}));
    if (response.status === 401) { location.href = '/login'; throw new Error('not signed in'); }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || ('HTTP ' + response.status));
    return body;
  },

  esc(s) {
    return String(s == null ? '' : s).replace(/[&<>"']/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  },

  time(ms) {
    if (ms == null) return '—';
    const d = new Date(ms);
    const today = new Date();
    const t = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
    return d.toDateString() === today.toDateString() ? t : d.toLocaleDateString([], { month: 'short', day: 'numeric' }) + ' ' + t;
  },

  ago(ms, now) {
    if (ms == null) return '—';
    const s = Math.max(0, Math.round(((now || Date.now()) - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  },

  duration(ms) {
    const s = Math.round(ms / 1000);
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  },

  // Calls `fn` at most once per `ms`, with the latest call's arguments.
  debounce(fn, ms) {
    let timer = null;
    return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
  },

  // The header: navigation, who is signed in, and the live indicator.
  header(active) {
    const links = [['/', 'Fleet'], ['/log', 'Live log'], ['/alerts', 'Alerts']]
      .map(([href, name]) => `<a href="${href}" class="${href === active ? 'active' : ''}">${name}</a>`).join('');
    document.body.insertAdjacentHTML('afterbegin',
      `<header><a class="brand" href="/">Heartbeat</a><nav>${links}</nav>` +
      `<div class="who"><span><span id="live-dot" class="live-dot" title="live updates"></span><span id="live-text">connecting</span></span>` +
      `<span id="who"></span></div></header>`);
    return HB.api('/api/whoami').then(w => {
      HB.whoami = w;
      document.getElementById('who').innerHTML = w.name
        ? `${HB.esc(w.name)} <form method="post" action="/logout" style="display:inline"><button type="submit">Sign out</button></form>`
        : '<span title="start hb-collector with --dashboard-token to acknowledge">read-only</span>';
      return w;
    });
  },

  // Live updates: calls onMessage(object) per event; `resync` events tell the
  // page to load its data again. The browser reconnects by itself.
  stream(onMessage) {
    const dot = document.getElementById('live-dot');
    const text = document.getElementById('live-text');
    const source = new EventSource('/api/stream');
    source.onopen = () => { dot.classList.add('on'); text.textContent = 'live'; };
    source.onerror = () => { dot.classList.remove('on'); text.textContent = 'reconnecting'; };
    source.onmessage = e => {
      let m;
      try { m = JSON.parse(e.data); } catch (_) { return; }
      onMessage(m);
    };
    return source;
  },

  async acknowledge(id, button) {
    button.disabled = true;
    try {
      return await HB.api(`/api/alerts/${id}/ack`, { method: 'POST' });
    } catch (e) {
      button.disabled = false;
      alert('Could not acknowledge: ' + e.message);
      return null;
    }
  },

  ackCell(a) {
    if (a.acknowledged_by) return `<span title="${HB.esc(HB.time(a.acknowledged_ms))}">✓ ${HB.esc(a.acknowledged_by)}</span>`;
    const can = HB.whoami && HB.whoami.can_acknowledge;
    return `<button class="ack" data-id="${a.id}" ${can ? '' : 'disabled title="read-only"'}>Acknowledge</button>`;
  },
};
