// The live log: readings and alert transitions as they are stored, newest first,
// filtered by device and status, with pause. At most MAX_ROWS are kept; the table
// is redrawn at most four times a second.
'use strict';

const MAX_ROWS = 500;
let entries = [];        // newest first: {stored, device, kind: 'reading'|'transition', ...}
let paused = false;
let missed = 0;          // entries that arrived while paused and fell out
let dirty = true;

const fDevice = document.getElementById('f-device');
const fStatus = document.getElementById('f-status');
const fPause = document.getElementById('f-pause');

function matches(e) {
  const device = fDevice.value.trim();
  if (device && e.device !== device) return false;
  const status = fStatus.value;
  if (status === 'alerts') return e.kind === 'transition';
  if (status) return e.kind === 'reading' && e.status === status;
  return true;
}

function add(list) {
  entries = list.concat(entries);
  if (entries.length > MAX_ROWS) {
    if (paused) missed += entries.length - MAX_ROWS;
    entries.length = MAX_ROWS;
  }
  dirty = true;
}

function reading(r, stored) {
  const [device, ts, bpm, status, backfill, epoch, seq] = r;
  return { stored, device, kind: 'reading', bpm, status, ts, backfill, epoch, seq };
}

function transition(t, stored) {
  return {
    stored, device: t.device_id, kind: 'transition', what: t.transition, alertKind: t.kind,
    severity: t.severity, bpm: t.value_bpm, ts: t.at_ms != null ? t.at_ms : t.at, retrospective: t.retrospective,
  };
}

function row(e) {
  const device = `<a href="/devices/${encodeURIComponent(e.device)}">${HB.esc(e.device)}</a>`;
  if (e.kind === 'reading') {
    return `<tr class="reading"><td>${HB.time(e.stored)}</td><td>${device}</td><td>reading${e.backfill ? ' <span class="muted">(backfill)</span>' : ''}</td>` +
      `<td>${e.status === 'no_signal' ? '—' : e.bpm}</td><td class="st-${e.status}">${HB.STATUS_NAMES[e.status] || HB.esc(e.status)}</td>` +
      `<td>${HB.time(e.ts)}</td><td class="muted">${e.epoch}/${e.seq}</td></tr>`;
  }
  return `<tr class="transition"><td>${HB.time(e.stored)}</td><td>${device}</td>` +
    `<td><b>alert ${HB.esc(e.what)}</b>: ${HB.KIND_NAMES[e.alertKind] || HB.esc(e.alertKind)}${e.retrospective ? ' <span class="muted">(retrospective)</span>' : ''}</td>` +
    `<td>${e.bpm == null ? '' : e.bpm}</td><td><span class="pill ${HB.esc(e.severity)}">${HB.esc(e.severity)}</span></td>` +
    `<td>${HB.time(e.ts)}</td><td></td></tr>`;
}

function draw() {
  if (!dirty || paused) return;
  dirty = false;
  const shown = entries.filter(matches).slice(0, 200);
  document.getElementById('log').innerHTML = shown.length
    ? shown.map(row).join('')
    : '<tr><td colspan="7" class="empty">Nothing yet: entries appear here as they are stored.</td></tr>';
  document.getElementById('log-info').textContent = `${shown.length} shown of ${entries.length} kept`;
}

async function load() {
  const device = fDevice.value.trim();
  const body = await HB.api('/api/log' + (device ? '?device=' + encodeURIComponent(device) : ''));
  const list = body.transitions.map(t => transition(t, t.recorded_ms))
    .concat(body.readings.map(r => reading(r, null)));
  list.sort((a, b) => (b.stored || b.ts) - (a.stored || a.ts));
  entries = list.slice(0, MAX_ROWS);
  dirty = true;
  draw();
}

function onMessage(m) {
  const now = Date.now();
  if (m.resync) { load().catch(console.warn); return; }
  if (m.readings) {
    add(m.readings.rows.slice().reverse().map(r => reading(r, now)));
  } else if (m.transition) {
    add([transition(m.transition, now)]);
  }
}

fDevice.addEventListener('change', () => load().catch(console.warn));
fStatus.addEventListener('change', () => { dirty = true; draw(); });
fPause.addEventListener('change', () => {
  paused = fPause.checked;
  if (!paused) {
    if (missed) document.getElementById('log-info').textContent = `${missed} entries passed while paused`;
    missed = 0;
    dirty = true;
    draw();
  } else {
    document.getElementById('log-info').textContent = 'paused';
  }
});

HB.header('/log').then(async () => {
  const device = new URLSearchParams(location.search).get('device');
  if (device) fDevice.value = device;
  await load();
  HB.stream(onMessage);
  setInterval(draw, 250);
}).catch(e => { document.getElementById('log-info').textContent = e.message; });
