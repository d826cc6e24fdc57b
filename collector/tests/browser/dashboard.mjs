// Drives the dashboard in headless Chromium and checks what a person would see.
// Run by collector/tests/it/dashboard.rs, which prepares the data and talks to this
// script over stdout: this script prints `SEND` when the live log is open, the
// test then produces a reading, and this script prints `SEEN` once the reading is
// in the table. Any console error or page error fails the run.
//
// Environment: HB_URL, HB_TOKEN, HB_SCREENSHOTS (directory), HB_DEVICES (tiles
// expected), HB_STATUSES (comma-separated donut categories expected),
// HB_TREND_DEVICE, HB_LIVE_DEVICE, HB_LIVE_BPM, HB_CHROMIUM.
import { chromium } from 'playwright-core';

const env = name => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const url = env('HB_URL');
const shots = env('HB_SCREENSHOTS');
const errors = [];

function check(condition, what) {
  if (!condition) throw new Error(what);
}

const browser = await chromium.launch({
  executablePath: process.env.HB_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  watch(page);

  // Without a token the API answers 401 and pages go to the login form.
  const denied = await context.request.get(url + '/api/devices');
  check(denied.status() === 401, `/api/devices without a token: ${denied.status()}`);
  await page.goto(url + '/');
  check(page.url().endsWith('/login'), `not sent to the login form: ${page.url()}`);
  await page.fill('#token', env('HB_TOKEN'));
  await Promise.all([page.waitForURL(url + '/'), page.click('button[type=submit]')]);

  // Fleet: a tile per device, the donut's categories.
  const devices = Number(env('HB_DEVICES'));
  await page.waitForFunction(n => document.querySelectorAll('.tile').length === n, devices, { timeout: 15000 });
  await page.waitForSelector('#legend li[data-status]');
  const shown = await page.$$eval('#legend li[data-status]', lis => lis.map(li => li.dataset.status).sort());
  const expected = env('HB_STATUSES').split(',').sort();
  check(JSON.stringify(shown) === JSON.stringify(expected), `donut shows ${shown}, expected ${expected}`);
  await page.waitForFunction(() => document.getElementById('c-devices').textContent !== '–');
  await page.waitForTimeout(700); // one drawing pass of the sparklines
  await page.screenshot({ path: `${shots}/fleet.png` });
  console.log('OK fleet');

  // Device: the trend has points.
  const trendDevice = env('HB_TREND_DEVICE');
  await page.goto(`${url}/devices/${encodeURIComponent(trendDevice)}`);
  await page.waitForSelector('#trend canvas');
  await page.waitForFunction(() => /^[1-9]\d* points/.test(document.getElementById('trend-info').textContent), null, { timeout: 15000 });
  await page.click('#ranges button[data-ms="900000"]');
  await page.waitForFunction(() => /^[1-9]\d* points/.test(document.getElementById('trend-info').textContent), null, { timeout: 15000 });
  await page.waitForTimeout(300);
  await page.screenshot({ path: `${shots}/device.png`, fullPage: true });
  console.log('OK device');

  // Alerts: acknowledge the first one.
  await page.goto(url + '/alerts');
  const button = await page.waitForSelector('button.ack:not([disabled])', { timeout: 15000 });
  const row = await button.evaluateHandle(b => b.closest('tr'));
  const id = await row.evaluate(r => r.dataset.alert);
  await button.click();
  await page.waitForFunction(i => {
    const cell = document.querySelector(`tr[data-alert="${i}"] .ackcell`);
    return cell && cell.textContent.includes('✓');
  }, id, { timeout: 10000 });
  await page.screenshot({ path: `${shots}/alerts.png`, fullPage: true });
  console.log(`ACKED ${id}`);

  // Live log: a reading sent now appears.
  await page.goto(url + '/log');
  await page.waitForFunction(() => document.getElementById('live-text').textContent === 'live', null, { timeout: 15000 });
  const live = env('HB_LIVE_DEVICE');
  const bpm = env('HB_LIVE_BPM');
  console.log('SEND');
  await page.waitForFunction(([d, b]) => [...document.querySelectorAll('#log tr.reading')].some(tr =>
    tr.children[1].textContent === d && tr.children[3].textContent === b), [live, bpm], { timeout: 30000, polling: 20 });
  console.log('SEEN');
  await page.screenshot({ path: `${shots}/log.png` });

  check(errors.length === 0, 'console errors:\n' + errors.join('\n'));
  console.log('DONE');
} catch (e) {
  console.log('FAIL ' + String(e && e.stack || e).split('\n').join('\n     '));
  if (errors.length) console.log('console errors:\n' + errors.join('\n'));
  process.exitCode = 1;
} finally {
  await browser.close();
}

function watch(p) {
  p.on('console', m => { if (m.type() === 'error') errors.push(`${p.url()}: ${m.text()}`); });
  p.on('pageerror', e => errors.push(`${p.url()}: ${e.message}`));
}
