// A device: its BPM trend (min/avg/max per bucket, downsampled by the server) for
// 15 min / 1 h / 24 h / 7 d with its thresholds as bands and its alert episodes
// shaded, its RR intervals, what its agent reports, and its alert history.
'use strict';

const id = decodeURIComponent(location.pathname.split('/').pop());
let rangeMs = 3600000;
let device = null;
let trend = null;        // uPlot
let rrPlot = null;       // uPlot
let episodes = [];

function bands(u) {
  // Threshold bands and alert episodes, under the series.
  if (!device) return;
  const ctx = u.ctx;
  const { left, top, width, height } = u.bbox;
  const t = device.thresholds;
  const y = v => u.valToPos(v, 'y', true);
  ctx.save();
  ctx.beginPath(); ctx.rect(left, top, width, height); ctx.clip();
  const yBrady = Math.min(top + height, Math.max(top, y(t.bradycardia_below_bpm)));
  const yTachy = Math.min(top + height, Math.max(top, y(t.tachycardia_above_bpm)));
  ctx.fillStyle = 'rgba(88,166,255,0.10)';
  ctx.fillRect(left, yBrady, width, top + height - yBrady);
  ctx.fillStyle = 'rgba(248,81,73,0.10)';
  ctx.fillRect(left, top, width, yTachy - top);
  for (const e of episodes) {
    if (e.kind !== 'bradycardia' && e.kind !== 'tachycardia') continue;
    const x0 = u.valToPos(e.onset_ms / 1000, 'x', true);
    const x1 = u.valToPos((e.closed_ms || Date.now()) / 1000, 'x', true);
    ctx.fillStyle = e.kind === 'bradycardia' ? 'rgba(88,166,255,0.25)' : 'rgba(248,81,73,0.25)';
    ctx.fillRect(x0, top, Math.max(2, x1 - x0), height);
  }
  ctx.setLineDash([4, 4]);
  ctx.lineWidth = 1;
  ctx.strokeStyle = 'rgba(88,166,255,0.8)';
  ctx.beginPath(); ctx.moveTo(left, yBrady); ctx.lineTo(left + width, yBrady); ctx.stroke();
  ctx.strokeStyle = 'rgba(248,81,73,0.8)';
  ctx.beginPath(); ctx.moveTo(left, yTachy); ctx.lineTo(left + width, yTachy); ctx.stroke();
  ctx.restore();
}

function axes() {
  const grid = { stroke: '#2d3a47', width: 1 };
  return [
    { stroke: '#8a99a8', grid, ticks: grid },
    { stroke: '#8a99a8', grid, ticks: grid, label: 'BPM', size: 50 },
  ];
}

function width(el) { return Math.max(300, el.clientWidth - 16); }

async function loadTrend() {
  const to = Date.now();
  const from = to - rangeMs;
  const body = await HB.api(`/api/devices/${encodeURIComponent(id)}/readings?from=${from}&to=${to}&max_points=600`);
  episodes = body.alerts;
  const xs = [], min = [], avg = [], max = [];
  let previous = null;
  for (const [t, lo, mean, hi] of body.points) {
    // No line across a stretch without readings (more than three empty buckets
    // or 15 s): uPlot breaks its lines at null.
    if (previous !== null && t - previous > Math.max(3 * body.bucket_ms, 15000)) {
      xs.push((previous + body.bucket_ms) / 1000); min.push(null); avg.push(null); max.push(null);
    }
    previous = t;
    xs.push((t + body.bucket_ms / 2) / 1000); min.push(lo); avg.push(mean); max.push(hi);
  }
  document.getElementById('trend-info').textContent =
    `${body.points.length} points · ${HB.duration(body.bucket_ms)} buckets · ` +
    `${episodes.length} alert episode${episodes.length === 1 ? '' : 's'}`;
  const data = [xs, min, avg, max];
  const el = document.getElementById('trend');
  const scaleX = { time: true, min: from / 1000, max: to / 1000 };
  // A new chart per load: the window moves with every refresh.
  if (trend) trend.destroy();
  trend = new uPlot({
    width: width(el), height: 320,
    scales: { x: scaleX, y: { range: (u, lo, hi) => [Math.min(40, (lo || 60) - 5), Math.max(130, (hi || 100) + 5)] } },
    series: [
      {},
      { label: 'min', stroke: 'rgba(63,185,80,0.5)', width: 1 },
      { label: 'avg BPM', stroke: '#3fb950', width: 2 },
      { label: 'max', stroke: 'rgba(63,185,80,0.5)', width: 1 },
    ],
    bands: [{ series: [3, 1], fill: 'rgba(63,185,80,0.15)' }],
    axes: axes(),
    hooks: { drawAxes: [bands] },
    legend: { live: true },
  }, data, el);
}

function drawRr() {
  const xs = [], ms = [];
  for (const [t, rr] of device.rr) {
    rr.forEach((v, i) => { xs.push(t / 1000 + i * 0.001); ms.push(Math.round(v * 1000 / 1024)); });
  }
  document.getElementById('rr-info').textContent = xs.length
    ? `${xs.length} intervals from ${device.rr.length} readings`
    : 'This device sent no RR intervals in the last 10 minutes.';
  const el = document.getElementById('rr');
  if (!xs.length) { el.innerHTML = ''; rrPlot = null; return; }
  const data = [xs, ms];
  if (rrPlot) { rrPlot.setData(data); return; }
  const a = axes(); a[1].label = 'RR ms';
  rrPlot = new uPlot({
    width: width(el), height: 160,
    series: [{}, { label: 'RR (ms)', stroke: '#d29922', width: 0, points: { show: true, size: 4, fill: '#d29922' } }],
    axes: a,
  }, data, el);
}

function fact(name, value) { return `<dt>${name}</dt><dd>${value}</dd>`; }

function drawDevice() {
  const d = device;
  document.title = `Heartbeat · ${d.id}`;
  const status = d.online ? `<span class="st-${d.status}">${HB.STATUS_NAMES[d.status]}</span>` : '<span class="muted">offline</span>';
  document.getElementById('title').innerHTML =
    `${HB.esc(d.id)} <span style="font-size:28px;margin-left:12px">${d.status === 'no_signal' ? '—' : d.bpm}</span> <small class="muted">BPM</small> · ${status}`;
  const t = d.thresholds;
  document.getElementById('facts').innerHTML =
    fact('Last reading', `${HB.time(d.ts_ms)} <span class="muted">(${HB.ago(d.ts_ms)})</span>`) +
    fact('Last received', HB.ago(d.seen_ms)) +
    fact('First seen', HB.time(d.first_seen_ms)) +
    fact('Epoch / seq', `${d.epoch} / ${d.seq}`) +
    fact('Bradycardia', `below ${t.bradycardia_below_bpm} BPM, clears at ${t.bradycardia_clear_bpm}`) +
    fact('Tachycardia', `above ${t.tachycardia_above_bpm} BPM, clears at ${t.tachycardia_clear_bpm}`) +
    fact('Clock skew', d.clock_skew_ms == null ? '<span class="muted">clock not synced</span>' : `${d.clock_skew_ms} ms`);
  const a = d.agent;
  document.getElementById('agent').innerHTML = a
    ? fact('State', HB.esc(a.state)) + fact('Reported', HB.ago(d.agent_ms)) +
      fact('Buffered', a.buffered) + fact('Dropped', a.dropped) + fact('Corrupt spool tails', a.corrupt_tails) +
      fact('Unconfirmed', a.unconfirmed) + fact('Waiting for confirmation', HB.duration(a.confirm_lag_ms || 0))
    : '<dt class="muted">No status received from this device\'s agent yet.</dt><dd></dd>';
  document.getElementById('alerts').innerHTML = d.alerts.length ? d.alerts.map(al =>
    `<tr data-alert="${al.id}"><td><span class="pill ${HB.esc(al.severity)}">${HB.esc(al.severity)}</span></td>` +
    `<td>${HB.KIND_NAMES[al.kind] || HB.esc(al.kind)}${al.retrospective ? ' <span class="muted">(retro)</span>' : ''}</td>` +
    `<td>${HB.time(al.onset_ms)}</td><td>${al.closed_ms != null ? HB.time(al.closed_ms) : '<b>open</b>'}</td>` +
    `<td>${al.peak_bpm == null ? '' : al.peak_bpm}</td><td class="ackcell">${HB.ackCell(al)}</td></tr>`).join('')
    : '<tr><td colspan="6" class="empty">No alerts.</td></tr>';
  drawRr();
}

async function loadDevice() {
  try {
    device = await HB.api('/api/devices/' + encodeURIComponent(id));
  } catch (e) {
    document.getElementById('title').innerHTML = `<span class="error">${HB.esc(e.message)}</span>`;
    throw e;
  }
  drawDevice();
}

document.getElementById('alerts').addEventListener('click', async ev => {
  const button = ev.target.closest('button.ack');
  if (!button) return;
  const a = await HB.acknowledge(button.dataset.id, button);
  if (a) button.closest('td').innerHTML = HB.ackCell(a);
});

function selectRange(ms) {
  rangeMs = ms;
  for (const b of document.querySelectorAll('#ranges button')) b.classList.toggle('active', Number(b.dataset.ms) === ms);
  loadTrend().catch(console.warn);
}
for (const b of document.querySelectorAll('#ranges button')) b.addEventListener('click', () => selectRange(Number(b.dataset.ms)));

const refresh = HB.debounce(() => { loadDevice().then(loadTrend).catch(console.warn); }, 2000);

HB.header('').then(async () => {
  await loadDevice();
  selectRange(rangeMs);
  HB.stream(m => {
    if (m.resync) refresh();
    else if (m.readings && m.readings.rows.some(r => r[0] === id)) refresh();
    else if ((m.transition && m.transition.device_id === id) || (m.ack && m.ack.device_id === id)) refresh();
  });
  window.addEventListener('resize', () => {
    if (trend) trend.setSize({ width: width(document.getElementById('trend')), height: 320 });
  });
});
