// spec/clients/console_bench.mjs — bench/console.sh's browser side: each
// console page's first load (a fresh browser context: no cache, no
// sessionStorage but the token) in headless Chromium: the time from the
// navigation's start to the page's content rendered with every API answer it
// needs (the page's performance mark 'ratchet:rendered', on the page's own
// clock), and the wall time the driver saw. Prints one line per page:
//   PAGE name median_ms max_ms wall_median_ms
//   BASE_URL TOKEN TRACE_ID RUNS  node console_bench.mjs
import { chromium } from 'playwright-core';

const { BASE_URL, TOKEN, TRACE_ID } = process.env;
const RUNS = Number(process.env.RUNS || 5);
const pages = [
  ['overview', '#/', '.prompt-card .spark canvas'],
  ['prompt', '#/prompt/bench', '#history tr td'],
  ['traces', '#/traces?prompt=bench', '#traces a'],
  ['traces-failed', '#/traces?prompt=bench&failed=true', '#traces a'],
  ['traces-tag', '#/traces?prompt=bench&tag=vip', '#traces a'],
  ['trace', '#/trace/' + TRACE_ID, '#trace-output'],
  ['datasets', '#/datasets', '#datasets a'],
];
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
let failed = false;
for (const [name, hash, ready] of pages) {
  const times = [], walls = [];
  for (let i = 0; i < RUNS; i++) {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    await context.addInitScript((t) => sessionStorage.setItem('ratchet.token', t), TOKEN);
    const page = await context.newPage();
    const errors = [];
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    page.on('response', (r) => { if (r.status() >= 400) errors.push(r.status() + ' ' + r.url()); });
    const t0 = performance.now();
    await page.goto(BASE_URL + '/console/' + hash);
    await page.waitForSelector(ready, { timeout: 60000 });
    walls.push(performance.now() - t0);
    const t = await page.evaluate(() => {
      const m = performance.getEntriesByName('ratchet:rendered');
      const nav = performance.getEntriesByType('navigation')[0];
      const apis = performance.getEntriesByType('resource').filter((r) => r.name.includes('/v1/'));
      return { rendered: m[m.length - 1].startTime, dcl: nav.domContentLoadedEventEnd,
        api: apis.map((r) => `${new URL(r.name).pathname.split('/').slice(2, 4).join('/')}:${r.startTime.toFixed(0)}+${r.duration.toFixed(0)}`).join(' ') };
    });
    times.push(t.rendered);
    if (process.env.DEBUG) console.error(name, JSON.stringify(t));
    if (errors.length) { console.error(name + ': ' + errors.join('; ')); failed = true; }
    await context.close();
  }
  times.sort((a, b) => a - b);
  walls.sort((a, b) => a - b);
  const mid = Math.floor(times.length / 2);
  console.log(`PAGE ${name} ${times[mid].toFixed(0)} ${times[times.length - 1].toFixed(0)} ${walls[mid].toFixed(0)}`);
}
await browser.close();
process.exit(failed ? 1 : 0);
