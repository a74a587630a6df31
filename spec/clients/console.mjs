// spec/clients/console.mjs — the web console in headless Chromium (Debian's
// chromium driven by playwright-core), against an engine running the demo
// loop with require_approval = true (spec/engine/console_spec.lua starts
// both). It signs in as a viewer (no action button anywhere), then as the
// admin: watches the loop reach awaiting_approval without a reload, approves
// the winner, sees the canary and the promotion, and opens every page,
// asserting on what a person would see. A console error, a page error, a
// failed request or a response >= 400 fails it. A screenshot of each page
// goes to OUT_DIR.
//   BASE_URL ADMIN_TOKEN VIEWER_TOKEN PROMPT OUT_DIR  node console.mjs
import { chromium } from 'playwright-core';

const { BASE_URL, ADMIN_TOKEN, VIEWER_TOKEN, PROMPT, OUT_DIR } = process.env;
const WAIT = Number(process.env.WAIT_MS || 90000);
const problems = [];
const step = (s) => console.log('step: ' + s);

function check(cond, what) {
  if (!cond) throw new Error('expected: ' + what);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});

async function newPage(viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') problems.push('console error: ' + m.text()); });
  page.on('pageerror', (e) => problems.push('page error: ' + e.message));
  // a fetch answered 304 (the page's If-None-Match) is also reported as
  // aborted by Chromium once its (empty) body is dropped: that is no failure
  const notModified = new Set();
  page.on('requestfailed', (r) => {
    const why = (r.failure() || {}).errorText;
    if (why === 'net::ERR_ABORTED' && notModified.has(r.url())) return;
    problems.push('request failed: ' + r.url() + ' ' + why);
  });
  page.on('response', (r) => {
    if (r.status() === 304) notModified.add(r.url());
    if (r.status() >= 400) problems.push(`response ${r.status()}: ${r.url()}`);
  });
  return page;
}

async function signIn(page, token) {
  await page.goto(BASE_URL + '/console/');
  await page.waitForSelector('#login:not([hidden])');
  await page.fill('#token', token);
  await page.press('#token', 'Enter');
  await page.waitForSelector('.prompt-card');
}

const shot = (page, name) => page.screenshot({ path: `${OUT_DIR}/${name}.png`, fullPage: true });

try {
  // ---- a viewer: sees everything, no action button ----
  step('viewer');
  const v = await newPage({ width: 390, height: 844 }); // a phone
  await signIn(v, VIEWER_TOKEN);
  check((await v.textContent('#who')).includes('viewer'), 'the header says viewer');
  await v.goto(`${BASE_URL}/console/#/prompt/${PROMPT}`);
  await v.waitForSelector('#versions tr[data-version]');
  check((await v.locator('#actions').count()) === 0, 'a viewer sees no Actions section on the prompt page');
  check((await v.locator('main button').count()) === 0, 'a viewer sees no button on the prompt page');
  await shot(v, 'viewer-prompt-phone');
  await v.goto(`${BASE_URL}/console/#/loop/${PROMPT}`);
  await v.waitForSelector('#loop-state');
  check((await v.locator('main button').count()) === 0, 'a viewer sees no button on the loop page');
  await v.context().close();

  // ---- the admin: the loop reaches awaiting_approval, shown live ----
  step('admin waits for awaiting_approval');
  const p = await newPage({ width: 1280, height: 900 });
  await signIn(p, ADMIN_TOKEN);
  await p.goto(`${BASE_URL}/console/#/loop/${PROMPT}`);
  await p.waitForSelector('#loop-state');
  await p.waitForSelector('#approve', { timeout: WAIT }); // no reload: the page polls
  check((await p.textContent('#loop-state')).includes('awaiting_approval'), 'the state says awaiting_approval');
  check(await p.locator('#timeline li[data-kind="gate"]').count() === 1, 'the timeline shows the gate');
  check((await p.textContent('#timeline')).includes('v3 improved'), 'the gate verdict names the winner');
  check(await p.locator('details.candidate').count() >= 1, 'candidates are listed');
  await p.locator('details.candidate summary').last().click();
  await p.waitForSelector('details.candidate[open] .diff .add');
  check((await p.textContent('details.candidate[open] .diff .add')).includes('Escape quotes in strings'), 'the candidate diff shows the changed line');
  await shot(p, 'loop-awaiting-approval');
  step('approve');
  await p.click('#approve');
  await p.waitForFunction(() => /canary|idle/.test(document.querySelector('#loop-state')?.textContent || ''), null, { timeout: WAIT });
  step('wait for the promotion');
  await p.waitForSelector('#timeline li[data-kind="promote"]', { timeout: WAIT });
  check((await p.textContent('#timeline li[data-kind="approved"]')).includes('console approved v3'), 'the timeline says who approved');
  await p.waitForFunction(() => {
    const c = window.Chart && window.Chart.getChart(document.querySelector('#canary-chart'));
    return c && c.data.datasets[0].data.length >= 2;
  }, null, { timeout: 10000 });
  const points = await p.evaluate(() => window.Chart.getChart(document.querySelector('#canary-chart')).data.datasets.map((d) => d.data.length));
  check(points[0] >= 2 && points[2] >= 2, 'the canary chart has points and its boundary: ' + points);
  const calls = await p.textContent('#llm-calls');
  // the optimizer's one call and the gate's (how many the gate makes is the gate's business: it stops early)
  check(/^\d+ calls \(1 to the optimizer\), \d+ tokens/.test(calls) && parseInt(calls, 10) > 10, 'the cycle\'s LLM calls (the gate\'s and the optimizer\'s): ' + calls);
  await shot(p, 'loop');

  // ---- overview ----
  step('overview');
  await p.goto(`${BASE_URL}/console/#/`);
  await p.waitForSelector(`.prompt-card[data-prompt="${PROMPT}"]`);
  const card = p.locator(`.prompt-card[data-prompt="${PROMPT}"]`);
  check((await card.locator('.production').textContent()) === 'v3', 'the overview shows v3 in production');
  check(/%/.test(await card.locator('.pass-rate').textContent()), 'the overview shows a pass rate');
  await p.waitForFunction(() => window.Chart && window.Chart.getChart(document.querySelector('.spark canvas')));
  const spark = await p.evaluate(() => window.Chart.getChart(document.querySelector('.spark canvas')).data.datasets[0].data.filter((x) => x !== null));
  // rising: the last bucket well above the first (how high the last one is
  // depends on how many of its traces came after the promotion: it read 0.88
  // once, under a 0.9 bound this check used to have)
  check(spark.length >= 2 && spark[0] < 0.8 && spark[spark.length - 1] >= spark[0] + 0.1,
    'the sparkline shows the pass rate rising: ' + spark);
  check((await p.textContent('#needs-a-look')).includes('Nothing'), 'nothing needs a look');
  // live: the overview polls while visible, with the ETag of each answer (304 when nothing changed)
  await p.waitForResponse((r) => r.url().endsWith('/v1/prompts') && r.status() === 304, { timeout: 15000 });
  // nobody looks, no load: a hidden tab (simulated: the document says it is
  // hidden and fires visibilitychange, as a browser does for a background
  // tab) sends nothing for three poll periods; shown again, it polls at once
  await p.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'hidden' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  await p.waitForTimeout(1000); // a poll already under way finishes
  let hiddenCalls = 0;
  const count = (r) => { if (r.url().includes('/v1/')) hiddenCalls++; };
  p.on('request', count);
  await p.waitForTimeout(3 * 3000);
  check(hiddenCalls === 0, `a hidden overview sends no request (${hiddenCalls} in 9 s)`);
  const back = p.waitForRequest((r) => r.url().includes('/v1/'), { timeout: 2000 }).then(() => true, () => false);
  await p.evaluate(() => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => 'visible' });
    document.dispatchEvent(new Event('visibilitychange'));
  });
  check(await back, 'shown again, the overview asks the engine at once');
  p.off('request', count);
  await shot(p, 'overview');

  // ---- prompt ----
  step('prompt');
  await p.click(`.prompt-card[data-prompt="${PROMPT}"] h2 a`);
  await p.waitForSelector('#versions tr[data-version="3"]');
  check((await p.textContent('#versions tr[data-version="3"]')).includes('production'), 'v3 is production in the versions table');
  check((await p.textContent('#versions tr[data-version="2"]')).includes('rejected'), 'v2 is rejected');
  await p.waitForSelector('#diff .add');
  check((await p.textContent('#diff .add')).includes('Escape quotes in strings'), 'the diff shows the changed line');
  check(/console/.test(await p.textContent('#history')) || /canary/.test(await p.textContent('#history')), 'the audit log has the canary');
  check(await p.locator('#actions button').count() >= 4, 'an admin sees the actions');
  await p.waitForFunction(() => {
    const c = window.Chart && window.Chart.getChart(document.querySelector('canvas.version-spark[data-version="3"]'));
    return c && c.data.datasets[0].data.filter((x) => x !== null).length >= 2;
  }, null, { timeout: 10000 });
  await shot(p, 'prompt');

  // ---- run compare ----
  step('run compare');
  await p.goto(`${BASE_URL}/console/#/loop/${PROMPT}`);
  await p.click('text=compare the versions case by case');
  await p.waitForSelector('#matrix td.cell');
  const all = await p.locator('#matrix tr[data-case]').count();
  check(all > 10, 'the matrix has the cases: ' + all);
  check((await p.textContent('#matrix tr.summary')).includes('95% CI'), 'the summary row has intervals');
  await p.check('#filter-changed');
  check((await p.locator('#matrix tr[data-case]').count()) === all, 'every case changed between v1, v2 and v3');
  await p.selectOption('#filter-tag', 'critical');
  const critical = await p.locator('#matrix tr[data-case]').count();
  check(critical === 2, `the tag filter keeps the 2 critical cases (${critical} of ${all})`);
  check((await p.textContent('#shown')) === `2 of ${all} cases`, 'the page says how many it shows');
  await p.locator('#matrix td.cell').first().focus();
  await p.keyboard.press('ArrowRight');
  await p.keyboard.press('Enter');
  await p.waitForSelector('#drawer:not([hidden]) .sample');
  check((await p.textContent('#drawer')).includes('json_schema'), 'a cell opens the evaluator reasons');
  await shot(p, 'run-compare');
  await p.keyboard.press('Escape');

  // ---- traces ----
  step('traces');
  await p.goto(`${BASE_URL}/console/#/traces?prompt=${PROMPT}&failed=true`);
  await p.waitForSelector('#traces a');
  check((await p.locator('#traces tr').count()) === 51, 'a page of 50 failed traces');
  check((await p.locator('#traces td.fail').count()) === 50, 'every one failed');
  await p.click('#next-page');
  await p.waitForFunction(() => location.hash.includes('cursor='));
  await p.waitForSelector('#traces a');
  await p.locator('#traces a').first().click();
  await p.waitForSelector('#trace-output');
  check((await p.textContent('main')).includes('json_schema'), 'the trace shows its evaluator result');
  // a judgement that failed says fail (not its status "ok", the evaluator having run)
  const result = await p.locator('main table tr', { hasText: 'json_schema' }).locator('td').nth(1).textContent();
  check(result === 'fail', `the failed evaluator result says fail: ${result}`);
  check(await p.locator('#add-to-dataset').count() === 1, 'an admin may add it to a dataset');
  await shot(p, 'trace');
  await p.click('#add-to-dataset');
  await p.waitForSelector('.actions .result.pass');
  // the filters: by the evaluator that failed, and by text
  await p.goto(`${BASE_URL}/console/#/traces?prompt=${PROMPT}`);
  await p.waitForSelector('#traces a');
  await p.fill('#trace-filters input[name="evaluator"]', 'json_schema');
  await p.fill('#trace-filters input[name="q"]', 'Print');
  await p.click('#trace-filters button[type="submit"]');
  await p.waitForFunction(() => location.hash.includes('evaluator=json_schema') && location.hash.includes('q=Print'));
  // the unfiltered table stays on screen until the filtered answer comes: wait for the one that has only failures
  await p.waitForFunction(() => {
    const n = document.querySelectorAll('#traces tr').length;
    return n > 1 && document.querySelectorAll('#traces td.fail').length === n - 1;
  }).catch(() => {});
  const rows = await p.locator('#traces tr').count();
  check(rows > 1 && rows <= 51 && (await p.locator('#traces td.fail').count()) === rows - 1, 'traces json_schema failed, with "Print"');
  for (const out of await p.locator('#traces pre').allTextContents()) check(out.includes('Print'), 'each output says Print: ' + out);
  // the tag filter: the demo's traffic tags each trace with its channel
  await p.goto(`${BASE_URL}/console/#/traces?prompt=${PROMPT}`);
  await p.waitForSelector('#traces a');
  await p.fill('#trace-filters input[name="tag"]', 'channel:email');
  await p.click('#trace-filters button[type="submit"]');
  await p.waitForFunction(() => location.hash.includes('tag=channel%3Aemail'));
  await p.waitForFunction(() => {
    const cells = [...document.querySelectorAll('#traces td.tags')];
    return cells.length > 1 && cells.every((c) => c.textContent === 'channel:email');
  }).catch(() => {});
  const tagged = await p.locator('#traces td.tags').allTextContents();
  check(tagged.length > 1 && tagged.every((x) => x === 'channel:email'), `the tag filter keeps the email traces (${tagged.length}: ${[...new Set(tagged)].join(', ')})`);
  await p.goto(`${BASE_URL}/console/#/traces?prompt=${PROMPT}`);
  await p.waitForSelector('#traces a');
  const both = new Set(await p.locator('#traces td.tags').allTextContents());
  check(both.has('channel:email') && both.has('channel:chat'), 'unfiltered, both channels show');
  await shot(p, 'traces');

  // ---- datasets ----
  step('datasets');
  await p.goto(`${BASE_URL}/console/#/datasets`);
  await p.waitForSelector('#datasets a');
  await p.click('#datasets a');
  await p.waitForSelector('#cases tr td');
  check((await p.locator('#cases tr').count()) === 9, 'the golden dataset has its 7 cases and the failed trace added');
  check((await p.textContent('#dataset-versions')).includes('v2'), 'adding the trace made version 2');
  await p.waitForSelector('#dataset-diff pre');
  await shot(p, 'datasets');

  // ---- an action from the prompt page: roll back ----
  step('roll back');
  await p.goto(`${BASE_URL}/console/#/prompt/${PROMPT}`);
  await p.waitForSelector('#actions');
  await p.click('#actions button:has-text("Roll back")');
  await p.waitForFunction(() => /production/.test(document.querySelector('#versions tr[data-version="1"]')?.textContent || ''), null, { timeout: 10000 });
  check(!(await p.textContent('#versions tr[data-version="3"]')).includes('production'), 'v3 is no longer in production');
  check((await p.textContent('#history')).includes('console'), 'the audit log says the console did it');
  await p.context().close();
} catch (e) {
  problems.unshift(String(e.stack || e));
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('console ok');
