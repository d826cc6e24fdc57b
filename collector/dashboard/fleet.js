// The fleet: a tile per device (open alerts first, the most severe first, then by
// id), counters, and the last 15 minutes' status distribution. Live updates are
// applied to a model and drawn in one pass at most twice a second, so that 1000
// devices reporting every second stay smooth: only changed tiles are touched,
// and sparklines are drawn on canvas.
'use strict';

const SPARK_WINDOW_MS = 300000;
const DRAW_EVERY_MS = 500;
// A 5-minute sparkline 140 px wide moves a pixel every 2 s: redrawing each at most
// every 5 s keeps 1000 of them from costing a frame.
const SPARK_EVERY_MS = 5000;
const devices = new Map();      // id → {d: API device, spark: [[t, bpm]], el, parts, dirty, sparkDirty, shown}
let order = [];                 // ids in tile order
let offlineAfterMs = 30000;
const rateWindow = [];          // [arrival ms, readings] of the last 10 s
let stats = null;

function tileClass(d, online) {
  let c = 'tile ' + d.status;
  if (!online) c += ' offline';
  if (d.alert && !d.alert.acknowledged && d.alert.severity !== 'none') c += ' alert-' + d.alert.severity;
  return c;
}

function makeTile(entry) {
  const a = document.createElement('a');
  a.href = '/devices/' + encodeURIComponent(entry.d.id);
  a.dataset.id = entry.d.id;
  a.innerHTML = '<div class="top"><span class="id"></span><span class="bpm"><b></b><small> bpm</small></span></div>' +
    '<canvas width="140" height="28"></canvas><div class="alert"></div><div class="meta"><span class="st"></span><span class="seen"></span></div>';
  a.querySelector('.id').textContent = entry.d.id;
  entry.el = a;
  entry.parts = {
    bpm: a.querySelector('.bpm b'), unit: a.querySelector('.bpm small'), alert: a.querySelector('.alert'),
    st: a.querySelector('.st'), seen: a.querySelector('.seen'), canvas: a.querySelector('canvas'),
  };
  entry.shown = {};
  entry.dirty = entry.sparkDirty = true;
}

// Writes only what changed since the tile was last drawn: with 1000 devices
// reporting every second, most of a frame's work is a few text nodes per tile.
function set(entry, key, value, apply) {
  if (entry.shown[key] !== value) { entry.shown[key] = value; apply(value); }
}

function drawTile(entry, now) {
  const d = entry.d;
  const p = entry.parts;
  const online = now - d.seen_ms <= offlineAfterMs;
  set(entry, 'class', tileClass(d, online), v => { entry.el.className = v; });
  set(entry, 'bpm', d.status === 'no_signal' ? '—' : String(d.bpm), v => { p.bpm.textContent = v; p.unit.hidden = v === '—'; });
  set(entry, 'alert', d.alert
    ? (HB.KIND_NAMES[d.alert.kind] || d.alert.kind) + (d.alert.severity !== 'none' ? ' · ' + d.alert.severity : '') + (d.alert.acknowledged ? ' · ack' : '')
    : '', v => { p.alert.textContent = v; });
  set(entry, 'st', online ? d.status : 'offline', v => {
    p.st.textContent = v === 'offline' ? 'offline' : HB.STATUS_NAMES[v];
    p.st.className = 'st st-' + v;
  });
  // "now" while the device keeps reporting, so that 1000 tiles do not each tick
  // every second; the age once it falls silent.
  set(entry, 'seen', now - d.seen_ms < 5000 ? 'now' : HB.ago(d.seen_ms, now), v => { p.seen.textContent = v; });
  // A sparkline not drawn yet (its points arrive after the tiles) is drawn at once.
  if (entry.sparkDirty && (!entry.sparkAt || now - entry.sparkAt >= SPARK_EVERY_MS)) {
    const drawn = drawSpark(p.canvas, entry.spark, now, HB.STATUS_COLOURS[d.status]);
    entry.sparkDirty = false;
    // Spread the tiles' redraws over the interval.
    if (drawn) entry.sparkAt = now - Math.random() * 1000;
  }
}

function drawSpark(canvas, points, now, colour) {
  const ctx = canvas.getContext('2d');
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const all = points.filter(p => p[0] >= now - SPARK_WINDOW_MS && p[1] > 0);
  // At most one point per pixel column pair.
  const stride = Math.max(1, Math.ceil(all.length / (w / 2)));
  const pts = stride === 1 ? all : all.filter((_, i) => i % stride === 0 || i === all.length - 1);
  if (pts.length < 2) return false;
  let lo = Infinity, hi = -Infinity;
  for (const p of pts) { lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); }
  lo -= 5; hi += 5;
  ctx.strokeStyle = colour;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  pts.forEach((p, i) => {
    const x = (p[0] - (now - SPARK_WINDOW_MS)) / SPARK_WINDOW_MS * w;
    const y = h - 2 - (p[1] - lo) / (hi - lo) * (h - 4);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  return true;
}

function drawDonut() {
  const canvas = document.getElementById('donut');
  const ctx = canvas.getContext('2d');
  const counts = (stats && stats.statuses_15m) || {};
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const cx = canvas.width / 2, cy = canvas.height / 2, r = 60, inner = 38;
  let angle = -Math.PI / 2;
  const legend = [];
  for (const status of ['normal', 'bradycardia', 'tachycardia', 'no_signal']) {
    const n = counts[status] || 0;
    if (n > 0) {
      const sweep = n / total * 2 * Math.PI;
      ctx.beginPath();
      ctx.moveTo(cx, cy);
      ctx.arc(cx, cy, r, angle, angle + sweep);
      ctx.closePath();
      ctx.fillStyle = HB.STATUS_COLOURS[status];
      ctx.fill();
      angle += sweep;
      legend.push(`<li data-status="${status}"><span class="swatch" style="background:${HB.STATUS_COLOURS[status]}"></span>` +
        `${HB.STATUS_NAMES[status]} <span class="muted">${(n / total * 100).toFixed(1)} % · ${n.toLocaleString()}</span></li>`);
    }
  }
  if (total === 0) {
    ctx.beginPath(); ctx.arc(cx, cy, r, 0, 2 * Math.PI); ctx.fillStyle = '#2d3a47'; ctx.fill();
    legend.push('<li class="muted">No readings</li>');
  }
  ctx.beginPath(); ctx.arc(cx, cy, inner, 0, 2 * Math.PI); ctx.fillStyle = '#182029'; ctx.fill();
  document.getElementById('legend').innerHTML = legend.join('');
}

function drawCounters(now) {
  let online = 0;
  let open = 0;
  for (const e of devices.values()) {
    if (now - e.d.seen_ms <= offlineAfterMs) online++;
    open += e.d.open_alerts;
  }
  document.getElementById('c-devices').textContent = devices.size;
  document.getElementById('c-online').textContent = online;
  document.getElementById('c-offline').textContent = devices.size - online;
  document.getElementById('c-alerts').textContent = open;
  while (rateWindow.length && rateWindow[0][0] < now - 10000) rateWindow.shift();
  const streamed = rateWindow.reduce((a, r) => a + r[1], 0) / 10;
  const rate = streamed > 0 ? streamed : (stats ? stats.readings_per_s : 0);
  document.getElementById('c-rate').textContent = rate >= 100 ? Math.round(rate).toLocaleString() : rate.toFixed(1);
}

// Puts the tiles in `order`, creating missing ones; moves DOM nodes only when the
// order changed (an alert opened or closed), in one pass.
let laidOut = '';
function layout() {
  const container = document.getElementById('tiles');
  if (order.length === 0) { container.innerHTML = '<div class="empty">No devices have sent readings yet.</div>'; laidOut = ''; return; }
  const now = Date.now();
  for (const id of order) {
    const e = devices.get(id);
    if (!e.el) makeTile(e);
    if (e.dirty) { drawTile(e, now); e.dirty = false; }
  }
  const key = order.join('\n');
  if (key === laidOut) return;
  if (!laidOut) container.replaceChildren();
  laidOut = key;
  // Moves only the tiles out of place: an alert opening moves one tile to the top,
  // not a thousand.
  const children = container.children;
  order.forEach((id, i) => {
    const el = devices.get(id).el;
    if (children[i] !== el) container.insertBefore(el, children[i] || null);
  });
  while (children.length > order.length) container.lastChild.remove();
}

async function loadDevices() {
  const body = await HB.api('/api/devices');
  offlineAfterMs = body.offline_after_ms;
  const seen = new Set();
  for (const d of body.devices) {
    seen.add(d.id);
    const e = devices.get(d.id);
    if (e) { e.d = d; e.dirty = true; } else devices.set(d.id, { d, spark: [], el: null, dirty: true });
  }
  for (const id of [...devices.keys()]) if (!seen.has(id)) devices.delete(id);
  order = body.devices.map(d => d.id);
  layout();
}

async function loadSparklines() {
  const body = await HB.api('/api/sparklines');
  for (const [id, points] of Object.entries(body.devices)) {
    const e = devices.get(id);
    if (!e) continue;
    // The server's 10-second averages, then what the stream brought since the last
    // of them (a reload after a resync must not repeat points).
    const server = points.map(p => [p[0] + body.bucket_ms / 2, p[1]]);
    const last = points.length ? points[points.length - 1][0] + body.bucket_ms : 0;
    e.spark = server.concat(e.spark.filter(p => p[0] >= last));
    e.dirty = e.sparkDirty = true;
  }
}

async function loadStats() {
  stats = await HB.api('/api/stats');
  drawDonut();
}

let loadedAt = 0;
async function loadAll() {
  await loadDevices();
  await Promise.all([loadSparklines(), loadStats()]);
  loadedAt = Date.now();
}

// Alert changes reorder the tiles: at most one reload every 3 s.
const reloadDevices = HB.debounce(() => loadDevices().catch(console.warn), 3000);

function onMessage(m) {
  // Every stream starts with a resync; the page loaded just before it.
  if (m.resync) { if (Date.now() - loadedAt > 2000) loadAll().catch(console.warn); return; }
  if (m.transition || m.ack) { reloadDevices(); return; }
  if (!m.readings) return;
  const now = Date.now();
  rateWindow.push([now, m.readings.summarised]);
  for (const [id, ts, bpm, status, backfill] of m.readings.rows) {
    const e = devices.get(id);
    if (!e) { reloadDevices(); continue; }
    if (ts >= e.d.ts_ms) { e.d.bpm = bpm; e.d.status = status; e.d.ts_ms = ts; }
    e.d.seen_ms = now;
    if (!backfill) { e.spark.push([ts, bpm]); e.sparkDirty = true; }
    e.dirty = true;
  }
}

function frame() {
  const now = Date.now();
  for (const e of devices.values()) {
    if (e.spark.length && e.spark[0][0] < now - SPARK_WINDOW_MS - 60000) {
      e.spark = e.spark.filter(p => p[0] >= now - SPARK_WINDOW_MS);
      e.sparkDirty = true;
    }
    if ((e.dirty || e.sparkDirty) && e.el) { drawTile(e, now); e.dirty = false; }
  }
  drawCounters(now);
}

HB.header('/').then(async () => {
  await loadAll();
  HB.stream(onMessage);
  // A timer, not requestAnimationFrame: a hidden tab still trims its buffers (and
  // browsers slow its timers down).
  setInterval(frame, DRAW_EVERY_MS);
  // "Last seen" and online/offline age even without updates.
  setInterval(() => { for (const e of devices.values()) e.dirty = true; }, 5000);
  setInterval(() => loadStats().catch(console.warn), 10000);
}).catch(e => {
  document.getElementById('tiles').innerHTML = `<div class="empty error">${HB.esc(e.message)}</div>`;
});
