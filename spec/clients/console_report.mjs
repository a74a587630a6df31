// spec/clients/console_report.mjs — a `ratchet eval --html` report opened
// from disk in headless Chromium: the console's compare page renders the
// embedded run with no request at all (spec/engine/console_spec.lua).
//   REPORT=/path/report.html SHOT=/path/eval-report.png node console_report.mjs
import { chromium } from 'playwright-core';

const { REPORT, SHOT } = process.env;
const problems = [];
const check = (cond, what) => { if (!cond) throw new Error('expected: ' + what); };
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
try {
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 900 } })).newPage();
  page.on('console', (m) => { if (m.type() === 'error') problems.push('console error: ' + m.text()); });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  page.on('request', (r) => { if (!r.url().startsWith('file:')) problems.push('a request from a self-contained report: ' + r.url()); });
  await page.goto('file://' + REPORT);
  await page.waitForSelector('#matrix td.cell');
  check((await page.title()).startsWith('ratchet eval: ticket-triage'), 'the title names the prompt: ' + await page.title());
  check(await page.locator('#login').isHidden(), 'no sign-in form');
  check((await page.locator('#matrix tr[data-case]').count()) === 8, 'the 7 golden cases and the trace the browser spec added');
  check((await page.textContent('#matrix tr.summary')).includes('95% CI'), 'the summary row has intervals');
  check((await page.textContent('main')).includes('Escape quotes in strings'), 'the prompt diff');
  await page.locator('#matrix tr[data-case="login"] td.cell').last().click();
  await page.waitForSelector('#drawer:not([hidden]) .sample');
  const drawer = await page.textContent('#drawer');
  check(drawer.includes('I cannot login since I changed my password'), 'the case\'s input');
  check(drawer.includes('json_schema') && /ms/.test(drawer) && drawer.includes('cost'), 'evaluator, latency, cost');
  await page.screenshot({ path: SHOT, fullPage: true });
} catch (e) {
  problems.unshift(String(e.stack || e));
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('report ok');
