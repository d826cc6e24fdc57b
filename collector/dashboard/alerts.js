// Alerts: open and recent, filtered by state, kind, severity and device; each
// can be acknowledged (the operator's name and the time are recorded).
'use strict';

const filters = ['state', 'kind', 'severity', 'device'].map(n => document.getElementById('f-' + n));

function query() {
  const p = new URLSearchParams();
  for (const f of filters) if (f.value.trim()) p.set(f.id.slice(2), f.value.trim());
  return p.toString();
}

function row(a) {
  const closed = a.closed_ms != null ? `${HB.time(a.closed_ms)} <span class="muted">(${HB.duration(a.closed_ms - a.onset_ms)})</span>` : '<b>open</b>';
  return `<tr data-alert="${a.id}"><td><span class="pill ${HB.esc(a.severity)}">${HB.esc(a.severity)}</span></td>` +
    `<td>${HB.KIND_NAMES[a.kind] || HB.esc(a.kind)}${a.retrospective ? ' <span class="muted">(retrospective)</span>' : ''}${a.signal_lost ? ' <span class="muted">(signal lost)</span>' : ''}</td>` +
    `<td><a href="/devices/${encodeURIComponent(a.device_id)}">${HB.esc(a.device_id)}</a></td>` +
    `<td>${HB.time(a.onset_ms)}</td><td>${HB.time(a.opened_ms)}</td><td>${closed}</td>` +
    `<td>${a.peak_bpm == null ? '' : a.peak_bpm}</td><td class="ackcell">${HB.ackCell(a)}</td></tr>`;
}

async function load() {
  const q = query();
  history.replaceState(null, '', q ? '?' + q : location.pathname);
  try {
    const body = await HB.api('/api/alerts?' + q);
    document.getElementById('alerts').innerHTML = body.alerts.length
      ? body.alerts.map(row).join('')
      : '<tr><td colspan="8" class="empty">No alerts match.</td></tr>';
    document.getElementById('alerts-info').textContent = body.alerts.length + ' alerts';
  } catch (e) {
    document.getElementById('alerts-info').textContent = e.message;
  }
}

document.getElementById('alerts').addEventListener('click', async ev => {
  const button = ev.target.closest('button.ack');
  if (!button) return;
  const a = await HB.acknowledge(button.dataset.id, button);
  if (a) button.closest('td').innerHTML = HB.ackCell(a);
});

const reload = HB.debounce(load, 1000);
for (const f of filters) f.addEventListener('change', load);

HB.header('/alerts').then(() => {
  const p = new URLSearchParams(location.search);
  for (const f of filters) if (p.get(f.id.slice(2))) f.value = p.get(f.id.slice(2));
  load();
  HB.stream(m => { if (m.transition || m.ack || m.resync) reload(); });
});
