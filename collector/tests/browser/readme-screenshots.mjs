// The README's screenshots, from a running system (scripts/run.sh):
//   node collector/tests/browser/readme-screenshots.mjs http://127.0.0.1:8080 TOKEN DEVICE OUT_DIR
// Saves OUT_DIR/dashboard-fleet.png and OUT_DIR/dashboard-device.png (DEVICE's page),
// and prints how many long tasks (> 50 ms) the fleet page ran in 10 s of live updates.
import { chromium } from 'playwright-core';

const [url, token, device, out] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.HB_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 },
    extraHTTPHeaders: { Authorization: `Bearer ${token}` } });
  const page = await context.newPage();
  await page.goto(url + '/');
  await page.waitForSelector('.tile');
  // Smoothness under live updates: the main thread's long tasks (> 50 ms) over 10 s.
  const long = await page.evaluate(() => new Promise(resolve => {
    const tasks = [];
    new PerformanceObserver(list => tasks.push(...list.getEntries().map(e => e.duration)))
      .observe({ type: 'longtask', buffered: false });
    setTimeout(() => resolve(tasks), 10000);
  }));
  const tiles = await page.$$eval('.tile', t => t.length);
  console.log(`fleet page: ${tiles} tiles; long tasks in 10 s: ${long.length}` +
    (long.length ? `, longest ${Math.max(...long).toFixed(0)} ms` : ''));
  await page.screenshot({ path: `${out}/dashboard-fleet.png` });
  await page.goto(`${url}/devices/${encodeURIComponent(device)}`);
  await page.waitForFunction(() => /^[1-9]\d* points/.test(document.getElementById('trend-info').textContent));
  await page.waitForTimeout(1000);
  await page.screenshot({ path: `${out}/dashboard-device.png`, fullPage: true });
} finally {
  await browser.close();
}
