// console/app.js — the ratchet console: one module, a client of the engine's
// JSON API (docs/api.md). Pages are hash routes; every request carries the
// token of this tab (sessionStorage) in the Authorization header. Text from
// the API is only ever set as textContent, never parsed as HTML.
// `ratchet eval --html` inlines this file with a run's JSON in
// <script type="application/json" id="ratchet-run">: then only the compare
// page is rendered, from that JSON, with no request.

const TOKEN_KEY = 'ratchet.token';
const SCOPE_KEY = 'ratchet.scope'; // what GET /v1/session said for the token: the page draws at once, then checks
const POLL_MS = 3000;
const S = { token: sessionStorage.getItem(TOKEN_KEY) || '', scope: null, poll: null, charts: [], signature: '' };
const embedded = document.getElementById('ratchet-run');

// ---- DOM helpers ----

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (sel, el = document) => el.querySelector(sel);
const pct = (x) => (x === null || x === undefined || Number.isNaN(x) ? '–' : (100 * x).toFixed(1) + '%');
const when = (t) => (t ? new Date(t).toLocaleString() : '–');
const enc = encodeURIComponent;
const link = (href, text, attrs) => h('a', Object.assign({ href }, attrs || {}), text);
const badge = (s) => h('span', { class: 'badge ' + (s || '') }, s || '–');
function bar(rate) {
  return h('span', { class: 'bar', title: pct(rate) }, h('i', { style: null, dataset: { w: rate } }));
}
// widths are set through the CSSOM (allowed by the page's style-src 'self')
function sizeBars(root) {
  for (const i of root.querySelectorAll('.bar > i')) i.style.width = (100 * (Number(i.dataset.w) || 0)).toFixed(1) + '%';
}

// ---- the API ----

class AuthError extends Error {}

// The last answer to each GET, by path, with its ETag: a poll that sends it
// back gets 304 and no body when nothing changed (docs/console.md).
const answers = new Map();

async function api(path, opts = {}) {
  const headers = { Accept: 'application/json' };
  if (S.token) headers.Authorization = 'Bearer ' + S.token;
  const known = !opts.method && answers.get(path);
  if (known) headers['If-None-Match'] = known.etag;
  let body;
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    headers['X-Ratchet-Actor'] = 'console'; // the audit log says who moved a version
    body = JSON.stringify(opts.body);
  }
  const r = await fetch(path, { method: opts.method || 'GET', headers, body, cache: 'no-store' });
  if (r.status === 304 && known) return known.json;
  let j = null;
  try { j = await r.json(); } catch { j = null; }
  if (r.status === 401 || (r.status === 403 && !opts.method)) {
    showLogin(j && j.error ? j.error.message : 'the engine refused the token');
    throw new AuthError('unauthorized');
  }
  if (!r.ok) throw new Error(j && j.error ? j.error.message : `${r.status} ${r.statusText}`);
  if (!opts.method && r.headers.get('ETag')) {
    if (answers.size > 200) answers.clear(); // a bound: a long session visits many paths
    answers.set(path, { etag: r.headers.get('ETag'), json: j });
  }
  return j;
}

async function allPages(path, max = 20000) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const r = await api(path + sep + 'limit=1000' + (cursor ? '&cursor=' + enc(cursor) : ''));
    items.push(...r.items);
    cursor = r.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

// ---- sign-in ----

function showLogin(message) {
  stopPolling();
  $('#app').replaceChildren();
  $('#login').hidden = false;
  $('#nav').hidden = true;
  $('#logout').hidden = true;
  $('#login-error').textContent = message || '';
  $('#token').focus();
}

function signedIn(scope) {
  S.scope = scope;
  $('#login').hidden = true;
  $('#nav').hidden = false;
  $('#logout').hidden = false;
  $('#who').textContent = scope === 'admin' ? 'admin' : 'viewer (read-only)';
  document.body.dataset.scope = scope;
}

async function signIn(token) {
  S.token = token;
  const s = await api('/v1/session');
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(SCOPE_KEY, s.scope);
  signedIn(s.scope);
}

const isAdmin = () => S.scope === 'admin';

// ---- live updates: polling only while the page is visible ----

function stopPolling() {
  if (S.poll) clearInterval(S.poll);
  S.poll = null;
}

function startPolling(fn) {
  stopPolling();
  S.poll = setInterval(() => { if (document.visibilityState === 'visible') fn().catch(showError); }, POLL_MS);
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && S.poll) route();
});

// ---- the router ----

const pages = [
  [/^#?\/?$/, overview],
  [/^#\/prompt\/([^/?]+)$/, promptPage],
  [/^#\/loop\/([^/?]+)$/, loopPage],
  [/^#\/run\/([^/?]+)$/, runPage],
  [/^#\/traces(?:\?(.*))?$/, tracesPage],
  [/^#\/trace\/([^/?]+)$/, tracePage],
  [/^#\/datasets$/, datasetsPage],
  [/^#\/dataset\/([^/?]+)$/, datasetPage],
];

function showError(e) {
  if (e instanceof AuthError) return;
  console.warn(e);
  const box = h('p', { class: 'error', role: 'alert' }, String(e.message || e));
  $('#app').prepend(box);
}

async function route() {
  if (embedded) return;
  stopPolling();
  for (const c of S.charts) c.destroy();
  S.charts = [];
  closeDrawer();
  const hash = location.hash || '#/';
  for (const [re, page] of pages) {
    const m = hash.match(re);
    if (!m) continue;
    const app = $('#app');
    app.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    try {
      await page(...m.slice(1).map((x) => (x === undefined ? x : decodeURIComponent(x))));
    } catch (e) {
      app.replaceChildren();
      showError(e);
    }
    return;
  }
  $('#app').replaceChildren(h('h1', null, 'Not found'), h('p', null, 'No page at ' + hash + '. '), link('#/', 'Overview'));
}

const nodesOf = (nodes) => nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false);

function render(...nodes) {
  const app = $('#app');
  app.replaceChildren(...nodesOf(nodes));
  sizeBars(app);
  performance.mark('ratchet:rendered'); // bench/console.sh reads when the content was on screen
}

// A page that refreshes: draw(data) is called again only when the data changed.
async function live(load, draw) {
  S.signature = '';
  const tick = async () => {
    const data = await load();
    const sig = JSON.stringify(data);
    if (sig === S.signature) return;
    S.signature = sig;
    for (const c of S.charts) c.destroy();
    S.charts = [];
    draw(data);
  };
  await tick();
  startPolling(tick);
}

// Chart.js (Debian's libjs-chart.js, served as chart.js) is loaded the first
// time a page draws a chart, so the pages without one never parse it.
let chartScript = null;
function loadChart() {
  if (window.Chart) return Promise.resolve();
  chartScript ||= new Promise((resolve, reject) => {
    const el = document.createElement('script');
    el.src = 'chart.js';
    el.onload = resolve;
    el.onerror = () => reject(new Error('chart.js did not load'));
    document.head.append(el);
  });
  return chartScript;
}

function chart(canvas, config) {
  loadChart().then(() => {
    if (!canvas.isConnected) return; // the page changed meanwhile
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
    S.charts.push(new window.Chart(canvas, config));
  }).catch(showError);
}

async function action(btn, path, body, after) {
  btn.disabled = true;
  const out = btn.parentElement.querySelector('.result') || btn.parentElement.appendChild(h('span', { class: 'result' }));
  try {
    await api(path, { method: 'POST', body: body || {} });
    out.textContent = 'done';
    out.className = 'result pass';
    if (after) await after();
  } catch (e) {
    out.textContent = e.message;
    out.className = 'result error';
  } finally {
    btn.disabled = false;
  }
}

// ---- drawer (a cell's or a trace's details) ----

function openDrawer(...nodes) {
  $('#drawer-body').replaceChildren(...nodesOf(nodes));
  $('#drawer').hidden = false;
  $('#drawer-close').focus();
}
function closeDrawer() { $('#drawer').hidden = true; }

// ---- the overview ----

function problems(st) {
  const out = [];
  if (!st.store_healthy) out.push('the store\'s last commit failed');
  for (const e of (st.scripts && st.scripts.errors) || []) out.push('script error: ' + e);
  if (st.scripts && st.scripts.config_error) out.push('config error (the running config stays): ' + st.scripts.config_error);
  for (const p of (st.llm && st.llm.providers) || [])
    if (p.circuit && p.circuit !== 'closed') out.push(`provider ${p.name}: circuit ${p.circuit}`);
  if (st.evaluation && st.evaluation.dropped > 0) out.push(`${st.evaluation.dropped} traces were left unevaluated (the evaluation backlog was full)`);
  for (const r of (st.runs && st.runs.active) || [])
    if (r.idle_s >= 600) out.push(`run ${r.id} (prompt ${r.prompt}) is stuck: no result for ${r.idle_s} s`);
  return out;
}

async function overview() {
  await live(async () => {
    const [st, prompts, loop] = await Promise.all([api('/v1/status'), api('/v1/prompts'), api('/v1/loop')]);
    const metrics = {}, series = {};
    await Promise.all(prompts.items.filter((p) => p.registered !== false).map(async (p) => {
      metrics[p.name] = await api(`/v1/prompts/${enc(p.name)}/metrics`);
      // the last 24 hours, or the prompt's life when it is younger: 30 buckets
      const now = Date.now(), born = Date.parse(p.created_at) || 0;
      const since = new Date(Math.max(now - 86400000, Math.min(born, now - 60000))).toISOString();
      series[p.name] = await api(`/v1/prompts/${enc(p.name)}/series?buckets=30&since=${enc(since)}`);
    }));
    return { st: { store_healthy: st.store_healthy, scripts: st.scripts, llm: st.llm, evaluation: st.evaluation, runs: st.runs }, prompts, loop, metrics, series };
  }, ({ st, prompts, loop, metrics, series }) => {
    const look = problems(st);
    const cards = prompts.items.map((p) => {
      const lv = (loop.prompts || {})[p.name];
      const m = metrics[p.name];
      const prod = m && m.versions.find((v) => v.version === p.production);
      const can = m && m.versions.find((v) => v.status === 'canary');
      const canvas = h('canvas', { 'aria-label': 'pass rate over time' });
      const card = h('section', { class: 'card prompt-card', dataset: { prompt: p.name } },
        h('h2', null, link('#/prompt/' + enc(p.name), p.name)),
        h('dl', { class: 'kv' },
          h('dt', null, 'production'), h('dd', { class: 'production' }, p.production ? 'v' + p.production : 'none'),
          h('dt', null, 'pass rate'), h('dd', { class: 'pass-rate' }, prod ? pct(prod.pass_rate) : '–', ' ', prod ? bar(prod.pass_rate) : ''),
          h('dt', null, 'traffic'), h('dd', null, prod ? `${prod.traces} traces in 24 h` : '–'),
          h('dt', null, 'canary'), h('dd', { class: 'canary' }, p.canary ? `v${p.canary}` + (lv && lv.percent ? ` at ${lv.percent}% (step ${lv.step})` : '') + (can ? `, pass rate ${pct(can.pass_rate)}` : '') : 'none'),
          h('dt', null, 'loop'), h('dd', { class: 'loop-state' }, lv ? link('#/loop/' + enc(p.name), lv.state) : 'not configured'),
          h('dt', null, 'last decision'), h('dd', null, lv && lv.decision ? lv.decision : '–'),
          ...(prod ? Object.entries(prod.evaluators || {}).map(([n, e]) => [h('dt', null, n), h('dd', null, pct(e.pass_rate), ' of ', e.n)]) : [])),
        h('div', { class: 'spark' }, canvas));
      const sr = series[p.name];
      if (sr && sr.points && sr.points.length)
        queueMicrotask(() => chart(canvas, {
          type: 'line',
          data: { labels: sr.points.map((x) => new Date(x.t).toLocaleTimeString()), datasets: [{ data: sr.points.map((x) => x.pass_rate), borderColor: '#1f7a3f', backgroundColor: '#1f7a3f', pointRadius: 1.5, spanGaps: true, tension: 0.2 }] },
          options: { plugins: { legend: { display: false }, tooltip: { enabled: true } }, scales: { x: { display: false }, y: { display: false, min: 0, max: 1 } } },
        }));
      return card;
    });
    render(
      h('h1', null, 'Overview'),
      h('section', { class: 'card', id: 'needs-a-look' }, h('h2', null, 'Needs a look'),
        look.length ? h('ul', null, look.map((x) => h('li', { class: 'warn' }, x))) : h('p', { class: 'muted' }, 'Nothing: the store is healthy, scripts loaded, providers up.')),
      h('div', { class: 'grid' }, cards.length ? cards : h('p', null, 'No prompt yet: ', h('code', null, 'ratchet prompt create NAME'))));
  });
}

// ---- a prompt ----

function diffView(d) {
  return h('div', { class: 'diff' }, d.messages.map((m) => h('div', null,
    h('p', { class: 'muted' }, `message ${m.index + 1} (${m.role}): ${m.status}`),
    h('pre', null, m.diff.map((l) => h('div', { class: l[0] === '+' ? 'add' : l[0] === '-' ? 'del' : '' }, l))))),
  d.model && d.model.changed ? h('p', null, 'model: ', JSON.stringify(d.model.from), ' → ', JSON.stringify(d.model.to)) : null);
}

async function promptPage(name) {
  const base = `/v1/prompts/${enc(name)}`;
  const [vs, hist, m] = await Promise.all([api(base + '/versions'), api(base + '/history'), api(base + '/metrics')]);
  const p = vs.prompt;
  const versions = vs.items;
  const mv = Object.fromEntries(m.versions.map((v) => [v.version, v]));
  const opt = (sel) => versions.map((v) => h('option', { value: v.version, selected: v.version === sel }, `v${v.version} (${v.status})`));
  const last = versions.length ? versions[versions.length - 1].version : 0;
  const fromSel = h('select', { id: 'diff-from', 'aria-label': 'diff from' }, opt(versions.length > 1 ? (versions[versions.length - 1].parent || versions[0].version) : last));
  const toSel = h('select', { id: 'diff-to', 'aria-label': 'diff to' }, opt(last));
  const diffBox = h('div', { id: 'diff' });
  const showDiff = async () => {
    try { diffBox.replaceChildren(diffView(await api(`${base}/diff?from=${fromSel.value}&to=${toSel.value}`))); } catch (e) { diffBox.replaceChildren(h('p', { class: 'error' }, e.message)); }
  };
  fromSel.addEventListener('change', showDiff);
  toSel.addEventListener('change', showDiff);
  const reload = () => promptPage(name);
  const verSel = h('select', { id: 'action-version', 'aria-label': 'version' }, opt(last));
  const actions = isAdmin() ? h('section', { class: 'card', id: 'actions' }, h('h2', null, 'Actions'), h('div', { class: 'actions' }, verSel,
    h('button', { type: 'button', onclick: (e) => action(e.target, base + '/promote', { version: Number(verSel.value), reason: 'from the console' }, reload) }, 'Promote'),
    h('button', { type: 'button', onclick: (e) => action(e.target, base + '/rollback', { reason: 'from the console' }, reload) }, 'Roll back'),
    p.pinned ? h('button', { type: 'button', onclick: (e) => action(e.target, base + '/unpin', {}, reload) }, 'Unpin')
      : h('button', { type: 'button', onclick: (e) => action(e.target, base + '/pin', { reason: 'from the console' }, reload) }, 'Pin'),
    h('button', { type: 'button', onclick: (e) => action(e.target, base + '/optimize', {}, () => { location.hash = '#/loop/' + enc(name); }) }, 'Start an optimization run'))) : null;
  render(
    h('h1', null, name, ' ', p.pinned ? badge('pinned') : ''),
    h('p', { class: 'muted' }, p.description || '', ' ', link('#/loop/' + enc(name), 'loop'), ' · ', link('#/traces?prompt=' + enc(name), 'traces')),
    actions,
    h('h2', null, 'Versions'),
    h('div', { class: 'scroll' }, h('table', { id: 'versions' }, h('tr', null, ['version', 'state', 'made by', 'parent', 'pass rate (24 h)', 'feedback', 'over time', 'note'].map((x) => h('th', null, x))),
      versions.map((v) => {
        const mm = mv[v.version];
        const by = String(v.author || '');
        return h('tr', { dataset: { version: v.version } }, h('td', null, 'v' + v.version), h('td', null, badge(v.status)),
          h('td', null, by.startsWith('loop:') ? link('#/loop/' + enc(name), 'loop cycle ' + by.slice(5, 13)) : by),
          h('td', null, v.parent ? 'v' + v.parent : '–'),
          h('td', null, mm ? [pct(mm.pass_rate), ' ', bar(mm.pass_rate), ` (${mm.evaluated})`] : '–'),
          h('td', null, mm ? `${mm.negative} negative, ${mm.retries} retries` : '–'),
          h('td', null, mm ? h('div', { class: 'spark' }, h('canvas', { class: 'version-spark', dataset: { version: v.version }, 'aria-label': `v${v.version}: pass rate and negative feedback over time` })) : ''),
          h('td', null, v.note || ''));
      }))),
    h('h2', null, 'Diff'),
    h('div', { class: 'filters' }, h('label', null, 'from ', fromSel), h('label', null, 'to ', toSel)),
    diffBox,
    h('h2', null, 'Audit log'),
    h('div', { class: 'scroll' }, h('table', { id: 'history' }, h('tr', null, ['when', 'version', 'move', 'who', 'why'].map((x) => h('th', null, x))),
      hist.items.slice().reverse().map((e) => h('tr', null, h('td', null, when(e.at)), h('td', null, e.version ? 'v' + e.version : ''),
        h('td', null, `${e.from || '–'} → ${e.to}`), h('td', null, e.actor), h('td', null, e.reason)))))
  );
  await showDiff();
  // the live versions' pass rate and negative feedback over time, drawn once they come
  const since = new Date(Math.max(Date.now() - 86400000, Math.min(Date.parse(p.created_at) || 0, Date.now() - 60000))).toISOString();
  for (const canvas of document.querySelectorAll('canvas.version-spark')) {
    api(`${base}/series?buckets=30&version=${canvas.dataset.version}&since=${enc(since)}`).then((sr) => chart(canvas, {
      type: 'line',
      data: {
        labels: sr.points.map((x) => new Date(x.t).toLocaleTimeString()),
        datasets: [
          { label: 'pass rate', data: sr.points.map((x) => x.pass_rate), borderColor: '#1f7a3f', backgroundColor: '#1f7a3f', pointRadius: 1, spanGaps: true },
          { label: 'negative feedback', data: sr.points.map((x) => (x.traces ? x.negative / x.traces : null)), borderColor: '#b3261e', backgroundColor: '#b3261e', pointRadius: 1, spanGaps: true },
        ],
      },
      options: { plugins: { legend: { display: false } }, scales: { x: { display: false }, y: { display: false, min: 0, max: 1 } } },
    })).catch(showError);
  }
}

// ---- a loop run: the timeline of a prompt's loop ----

function canaryChart(events, margin) {
  const steps = events.filter((e) => e.detail && e.detail.stats && ['advance', 'promote', 'rollback', 'hold'].includes(e.kind));
  if (!steps.length) return null;
  const canvas = h('canvas', { id: 'canary-chart', 'aria-label': 'canary statistic against its boundary' });
  const box = h('div', { class: 'chart-box' }, canvas);
  queueMicrotask(() => chart(canvas, {
    type: 'line',
    data: {
      labels: steps.map((e) => `${e.kind} (${e.detail.stats.canary_samples} samples)`),
      datasets: [
        { label: 'drop in pass rate (canary vs production)', data: steps.map((e) => e.detail.stats.drop), borderColor: '#2456b3', backgroundColor: '#2456b3' },
        { label: 'upper bound of the drop', data: steps.map((e) => e.detail.stats.drop_high), borderColor: '#9a5b00', backgroundColor: '#9a5b00', borderDash: [4, 3] },
        { label: 'boundary (margin)', data: steps.map(() => margin), borderColor: '#b3261e', backgroundColor: '#b3261e', pointRadius: 0 },
      ],
    },
    options: { scales: { y: { title: { display: true, text: 'drop (share of traffic)' } } } },
  }));
  return box;
}

function eventBody(ev, name) {
  const d = ev.detail || {};
  const out = [];
  if (ev.kind === 'candidates') {
    if (d.mined) out.push(h('p', { class: 'muted' }, `mined ${d.mined.failures} failures (${d.mined.shown} shown to the optimizer, ${d.mined.held} held out), ${d.mined.passing} passing, from ${d.mined.traces_read} traces`));
    if (d.groups && d.groups.length) out.push(h('table', { class: 'groups' }, h('tr', null, h('th', null, 'failure group'), h('th', null, 'failures')),
      d.groups.map((g) => h('tr', null, h('td', null, g.reason), h('td', null, g.failures)))));
    for (const v of d.versions || []) out.push(h('details', { class: 'candidate', dataset: { version: v } }, h('summary', null, `candidate v${v}: rationale and diff`),
      h('div', { class: 'cand-body' })));
    for (const i of d.invalid || []) out.push(h('p', { class: 'fail' }, `candidate ${i.index + 1} failed the pre-check: ${i.reason}`));
  }
  if (ev.kind === 'gate') {
    for (const v of d.verdicts || []) {
      out.push(h('div', { class: 'verdict' }, h('b', { class: v.verdict === 'improved' ? 'pass' : v.verdict === 'regressed' ? 'fail' : 'warn' }, `v${v.version} ${v.verdict}`),
        h('ul', null, (v.reasons || []).map((r) => h('li', null, r))),
        v.stats && v.stats.groups ? h('div', { class: 'scroll' }, h('table', { class: 'strata' }, h('tr', null, ['stratum', 'fixed', 'broken', 'interval', 'p'].map((x) => h('th', null, x))),
          v.stats.groups.map((g) => h('tr', null, h('td', null, g.name), h('td', null, g.fixed ?? '–'), h('td', null, g.broken ?? '–'),
            h('td', null, g.low !== undefined ? `[${pct(g.low)}, ${pct(g.high)}]` : '–'), h('td', null, g.p !== undefined ? Number(g.p).toPrecision(3) : '–'))))) : null));
    }
    if (d.run) out.push(h('p', null, link('#/run/' + enc(d.run), 'compare the versions case by case')));
  }
  if (ev.kind === 'gate_started' && d.run) out.push(h('p', null, link('#/run/' + enc(d.run), 'gate run ' + d.run)));
  return out;
}

async function loopPage(name) {
  await live(async () => {
    const l = await api(`/v1/loop/${enc(name)}?limit=500`);
    const runs = await api(`/v1/runs?prompt=${enc(name)}&limit=20`);
    const first = l.events.find((e) => e.cycle === l.cycle);
    const calls = first ? await api(`/v1/llm/calls?limit=1000&since=${enc(first.at)}`) : null;
    return { l, runs, calls };
  }, async ({ l, runs, calls }) => {
    const cycle = l.cycle;
    const events = l.events.filter((e) => !cycle || e.cycle === cycle);
    const margin = l.settings && l.settings.rollout_options ? l.settings.rollout_options.margin : null;
    const reload = () => { S.signature = ''; return route(); };
    const waiting = l.state === 'awaiting_approval' && l.run;
    const gateRuns = runs.items.filter((r) => r.kind === 'gate');
    const cost = gateRuns.reduce((a, r) => a + ((r.report && r.report.cost) || 0), 0);
    // the cycle's LLM calls: the optimizer's (run_id: the cycle) and its gate's
    const ids = new Set([cycle, ...events.map((e) => e.detail && e.detail.run).filter(Boolean)]);
    const mine = calls ? (calls.items || []).filter((c) => ids.has(c.run_id)) : [];
    const tokens = mine.reduce((a, c) => a + (c.input_tokens || 0) + (c.output_tokens || 0), 0);
    render(
      h('h1', null, 'Loop: ', link('#/prompt/' + enc(name), name)),
      h('section', { class: 'card' }, h('dl', { class: 'kv' },
        h('dt', null, 'state'), h('dd', { id: 'loop-state' }, badge(l.state)),
        h('dt', null, 'version'), h('dd', null, l.version ? 'v' + l.version : '–'),
        h('dt', null, 'canary'), h('dd', null, l.percent ? `${l.percent}% (step ${l.step})` : '–'),
        h('dt', null, 'last decision'), h('dd', null, l.decision || '–'),
        h('dt', null, 'LLM calls'), h('dd', { id: 'llm-calls' }, calls ? `${mine.length} calls (${mine.filter((c) => c.caller_kind === 'template').length} to the optimizer), ${tokens} tokens, cost ${mine.reduce((a, c) => a + (c.cost || 0), 0).toFixed(4)}` : '–'),
        h('dt', null, 'runs'), h('dd', null, gateRuns.length ? gateRuns.map((r) => [link('#/run/' + enc(r.id), `${r.kind} ${r.verdict || r.state}`), ' ']) : '–', cost ? ` (cost ${cost.toFixed(4)})` : '')),
      isAdmin() ? h('div', { class: 'actions', id: 'loop-actions' },
        waiting ? [h('button', { type: 'button', id: 'approve', onclick: (e) => action(e.target, `/v1/runs/${enc(l.run)}/approve`, { reason: 'approved in the console' }, reload) }, `Approve v${l.version}`),
          h('button', { type: 'button', class: 'secondary', id: 'reject', onclick: (e) => action(e.target, `/v1/runs/${enc(l.run)}/reject`, { reason: 'rejected in the console' }, reload) }, 'Reject')] : null,
        h('button', { type: 'button', class: 'secondary', onclick: (e) => action(e.target, `/v1/prompts/${enc(name)}/optimize`, {}, reload) }, 'Start an optimization run')) : null),
      h('h2', null, 'Canary'),
      canaryChart(events, margin) || h('p', { class: 'muted' }, 'No canary step in this cycle yet.'),
      h('h2', null, 'Timeline', cycle ? ` of cycle ${cycle.slice(0, 8)}` : ''),
      events.length ? h('ol', { class: 'timeline', id: 'timeline' }, events.map((ev) => h('li', { dataset: { kind: ev.kind } },
        h('span', { class: 'kind' }, ev.kind), ' ', h('span', { class: 'muted' }, when(ev.at)),
        h('p', null, ev.message), eventBody(ev, name)))) : h('p', { class: 'muted' }, 'No cycle yet.'));
    // a candidate's rationale (its note) and its diff against its parent, on opening
    for (const det of document.querySelectorAll('details.candidate')) {
      det.addEventListener('toggle', async () => {
        if (!det.open || det.dataset.loaded) return;
        det.dataset.loaded = '1';
        const v = det.dataset.version;
        const body = $('.cand-body', det);
        try {
          const ver = await api(`/v1/prompts/${enc(name)}/versions/${v}`);
          const d = await api(`/v1/prompts/${enc(name)}/diff?from=${ver.parent || v}&to=${v}`);
          body.replaceChildren(h('p', null, h('b', null, 'rationale: '), ver.note || '–'), h('p', null, 'state: ', badge(ver.status)), diffView(d));
        } catch (e) { body.replaceChildren(h('p', { class: 'error' }, e.message)); }
      });
    }
  });
}

// ---- eval run compare: cases × versions ----

function caseMatrix(run, results, cases) {
  const rep = run.report || {};
  const versions = (rep.versions || []).map((v) => v.version);
  const k = rep.k || 1;
  const byCase = new Map();
  for (const r of results) {
    if (!byCase.has(r.case)) byCase.set(r.case, { index: r.case, id: r.case_id, cells: {} });
    const row = byCase.get(r.case);
    (row.cells[r.version] ||= []).push(r);
  }
  const changedIds = new Set((rep.changed || []).map((c) => c.case));
  const evaluators = [...new Set(results.flatMap((r) => (r.verdicts || []).map((v) => v.evaluator)))].sort();
  const tags = [...new Set([...cases.values()].flatMap((c) => c.tags || []))].sort();
  const rows = [...byCase.values()].sort((a, b) => a.index - b.index);
  const f = { changed: false, failing: false, tag: '', evaluator: '' };
  const table = h('table', { id: 'matrix' });
  const passes = (rs) => rs.filter((r) => r.status === 'pass').length;
  const failsEval = (rs, ev) => rs.some((r) => (r.verdicts || []).some((v) => v.evaluator === ev && !v.pass));
  function cellDetails(row, v) {
    const c = cases.get(row.id) || cases.get(row.index) || {};
    openDrawer(h('h2', null, `case ${row.id || row.index} · v${v}`),
      c.variables || c.input ? [h('h3', null, 'input'), h('pre', null, JSON.stringify(c.variables || c.input, null, 2))] : null,
      c.expected !== undefined ? [h('h3', null, 'expected'), h('pre', null, JSON.stringify(c.expected, null, 2))] : null,
      (row.cells[v] || []).map((r) => h('section', { class: 'card sample' },
        h('p', null, h('b', { class: r.status === 'pass' ? 'pass' : 'fail' }, `sample ${r.sample + 1}: ${r.status}`),
          h('span', { class: 'muted' }, ` · ${r.latency_ms != null ? r.latency_ms.toFixed(1) + ' ms' : ''} · ${r.input_tokens ?? '–'}+${r.output_tokens ?? '–'} tokens · cost ${r.cost ?? 0}${r.cached ? ' · cached' : ''}`)),
        h('pre', { class: 'output' }, r.output ?? r.error ?? ''),
        h('ul', null, (r.verdicts || []).map((vd) => h('li', { class: vd.pass ? 'pass' : 'fail' }, `${vd.evaluator}: ${vd.pass ? 'pass' : 'fail'}${vd.score != null ? ' (' + vd.score + ')' : ''} — ${vd.reason || ''}`))))));
  }
  function draw() {
    const shown = rows.filter((row) => {
      const all = versions.map((v) => row.cells[v] || []);
      if (f.changed && !changedIds.has(row.index) && new Set(all.map(passes)).size < 2) return false;
      if (f.failing && all.every((rs) => passes(rs) === rs.length)) return false;
      if (f.tag && !((cases.get(row.id) || {}).tags || []).includes(f.tag)) return false;
      if (f.evaluator && !all.some((rs) => failsEval(rs, f.evaluator))) return false;
      return true;
    });
    const head = h('tr', null, h('th', null, 'case'), (rep.versions || []).map((v) => h('th', null, `v${v.version} (${v.role})`)));
    const summary = h('tr', { class: 'summary' }, h('td', null, h('b', null, 'pass rate')), (rep.versions || []).map((v) => h('td', null,
      h('b', null, pct(v.pass_rate)), ' ', bar(v.pass_rate), h('br'), h('small', { class: 'muted' }, v.ci95 ? `95% CI ${pct(v.ci95[0])} – ${pct(v.ci95[1])}` : ''))));
    table.replaceChildren(head, summary, ...shown.map((row, ri) => h('tr', { dataset: { case: row.id || row.index } }, h('td', null, row.id || `#${row.index}`),
      versions.map((v, ci) => {
        const rs = row.cells[v] || [];
        const p = passes(rs);
        const cls = p === rs.length ? 'pass' : p === 0 ? 'fail' : 'mixed';
        return h('td', { class: 'cell ' + cls, tabindex: 0, dataset: { row: ri, col: ci, version: v }, role: 'button',
          'aria-label': `case ${row.id || row.index}, v${v}: ${p} of ${rs.length || k} pass`,
          onclick: () => cellDetails(row, v), onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); cellDetails(row, v); } } },
        h('b', null, `${p}/${rs.length || k}`), h('pre', null, String((rs[0] && (rs[0].output ?? rs[0].error)) || '').slice(0, 120)));
      }))));
    sizeBars(table);
    $('#shown') && ($('#shown').textContent = `${shown.length} of ${rows.length} cases`);
  }
  // arrow keys move between cells
  table.addEventListener('keydown', (e) => {
    const c = e.target.closest && e.target.closest('td.cell');
    if (!c) return;
    const d = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] }[e.key];
    if (!d) return;
    const next = table.querySelector(`td.cell[data-row="${Number(c.dataset.row) + d[0]}"][data-col="${Number(c.dataset.col) + d[1]}"]`);
    if (next) { e.preventDefault(); next.focus(); }
  });
  const check = (key, label) => h('label', null, h('input', { type: 'checkbox', id: 'filter-' + key, onchange: (e) => { f[key] = e.target.checked; draw(); } }), ' ', label);
  const select = (key, label, values) => h('label', null, label, ' ', h('select', { id: 'filter-' + key, onchange: (e) => { f[key] = e.target.value; draw(); } },
    h('option', { value: '' }, 'any'), values.map((x) => h('option', { value: x }, x))));
  const filters = h('div', { class: 'filters' }, check('changed', 'changed only'), check('failing', 'failing only'),
    tags.length ? select('tag', 'tag', tags) : null, select('evaluator', 'failed by evaluator', evaluators), h('span', { id: 'shown', class: 'muted' }));
  return { filters, table, draw };
}

function compareView(run, results, cases, diffs) {
  const rep = run.report || {};
  const m = caseMatrix(run, results, cases);
  const nodes = [
    h('h1', null, `${run.kind === 'gate' ? 'Gate run' : 'Eval run'} of ${rep.prompt || run.prompt}: `, h('span', { id: 'verdict', class: run.verdict === 'improved' ? 'pass' : run.verdict === 'regressed' ? 'fail' : 'warn' }, run.verdict || run.state)),
    h('p', { class: 'muted' }, `run ${run.id} · ${rep.cases ?? '?'} cases · k = ${rep.k ?? '?'} · ${run.state}` + (rep.dataset ? ` · dataset ${rep.dataset.name} v${rep.dataset.version}` : '')),
    h('section', { class: 'card' }, h('h2', null, 'Verdicts'), (rep.verdicts || []).map((v) => h('div', null, h('b', null, `v${v.version}: ${v.verdict}`), h('ul', null, (v.reasons || []).map((r) => h('li', null, r)))))),
    h('section', { class: 'card' }, h('h2', null, 'Pass rate by tag'), h('div', { class: 'scroll' }, h('table', { id: 'by-tag' },
      h('tr', null, h('th', null, 'version'), h('th', null, 'tag'), h('th', null, 'pass rate'), h('th', null, '95% CI')),
      (rep.versions || []).flatMap((v) => Object.entries(v.by_tag || {}).map(([t, s]) => h('tr', null, h('td', null, `v${v.version}`), h('td', null, t),
        h('td', null, pct(s.pass_rate), ' ', bar(s.pass_rate)), h('td', null, s.ci95 ? `${pct(s.ci95[0])} – ${pct(s.ci95[1])}` : '–'))))))),
  ];
  for (const d of diffs || []) nodes.push(h('section', { class: 'card' }, h('h2', null, `Prompt diff v${d.from} → v${d.to}`), diffView(d)));
  nodes.push(h('h2', null, 'Cases × versions'), m.filters, h('div', { class: 'scroll' }, m.table));
  return { nodes, draw: m.draw };
}

async function runPage(id) {
  const run = await api(`/v1/runs/${enc(id)}`);
  const results = await allPages(`/v1/runs/${enc(id)}/results`);
  const cases = new Map();
  for (const c of (run.spec && run.spec.cases) || []) cases.set(c.id, c);
  const rep = run.report || {};
  if (rep.dataset && rep.dataset.name) {
    try {
      const r = await fetch(`/v1/datasets/${enc(rep.dataset.name)}/cases?version=${rep.dataset.version}`, { headers: S.token ? { Authorization: 'Bearer ' + S.token } : {} });
      if (r.ok) for (const line of (await r.text()).split('\n')) if (line.trim()) { const c = JSON.parse(line); cases.set(c.id, c); }
    } catch (e) { console.warn(e); }
  }
  const diffs = [];
  for (const v of rep.candidates || []) {
    try { diffs.push(await api(`/v1/prompts/${enc(rep.prompt || run.prompt)}/diff?from=${rep.baseline}&to=${v}`)); } catch (e) { console.warn(e); }
  }
  const view = compareView(run, results, cases, diffs);
  render(...view.nodes);
  view.draw();
}

// ---- traces ----

async function tracesPage(query) {
  const q = new URLSearchParams(query || '');
  const prompts = await api('/v1/prompts');
  const params = new URLSearchParams();
  for (const k of ['prompt', 'version', 'since', 'until', 'failed', 'evaluator', 'feedback', 'q', 'tag', 'cursor']) if (q.get(k)) params.set(k, q.get(k));
  params.set('limit', '50');
  const list = await api('/v1/traces?' + params.toString());
  const form = h('form', { class: 'filters', id: 'trace-filters' },
    h('label', null, 'prompt ', h('select', { name: 'prompt' }, h('option', { value: '' }, 'any'), prompts.items.map((p) => h('option', { value: p.name, selected: q.get('prompt') === p.name }, p.name)))),
    h('label', null, 'version ', h('input', { name: 'version', type: 'number', min: 1, size: 4, value: q.get('version') || '' })),
    h('label', null, 'since ', h('input', { name: 'since', type: 'datetime-local', value: q.get('since') ? q.get('since').slice(0, 16) : '' })),
    h('label', null, 'until ', h('input', { name: 'until', type: 'datetime-local', value: q.get('until') ? q.get('until').slice(0, 16) : '' })),
    h('label', null, 'result ', h('select', { name: 'failed' }, h('option', { value: '' }, 'any'), h('option', { value: 'true', selected: q.get('failed') === 'true' }, 'failed'), h('option', { value: 'false', selected: q.get('failed') === 'false' }, 'not failed'))),
    h('label', null, 'failed by ', h('input', { name: 'evaluator', size: 12, placeholder: 'evaluator', value: q.get('evaluator') || '' })),
    h('label', null, 'feedback ', h('select', { name: 'feedback' }, h('option', { value: '' }, 'any or none'), h('option', { value: 'negative', selected: q.get('feedback') === 'negative' }, 'negative'), h('option', { value: 'any', selected: q.get('feedback') === 'any' }, 'some'))),
    h('label', null, 'text ', h('input', { name: 'q', type: 'search', size: 16, placeholder: 'in input or output', value: q.get('q') || '' })),
    h('label', null, 'tag ', h('input', { name: 'tag', size: 12, maxlength: 64, placeholder: 'tag', value: q.get('tag') || '' })),
    h('button', { type: 'submit' }, 'Search'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const n = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) n.set(k, k === 'since' || k === 'until' ? new Date(v).toISOString() : v);
    location.hash = '#/traces?' + n.toString();
  });
  const next = new URLSearchParams(q);
  if (list.next_cursor) next.set('cursor', list.next_cursor);
  render(h('h1', null, 'Traces'), form,
    h('div', { class: 'scroll' }, h('table', { id: 'traces' }, h('tr', null, ['when', 'id', 'prompt', 'result', 'tags', 'output'].map((x) => h('th', null, x))),
      list.items.map((t) => h('tr', null, h('td', null, when(t.timestamp)), h('td', null, link('#/trace/' + enc(t.id), t.id)),
        h('td', null, t.prompt ? `${t.prompt.name} v${t.prompt.version ?? '?'}` : '–'),
        h('td', { class: t.verdict === 'pass' ? 'pass' : t.verdict === 'fail' ? 'fail' : 'muted' }, t.verdict || 'not evaluated'),
        h('td', { class: 'tags' }, (t.tags || []).join(' ')),
        h('td', null, h('pre', null, String(t.output ?? '').slice(0, 160))))))),
    h('p', null, q.get('cursor') ? [link('#/traces?' + new URLSearchParams([...q].filter(([k]) => k !== 'cursor')).toString(), 'first page'), ' · '] : '',
      list.next_cursor ? link('#/traces?' + next.toString(), 'next page', { id: 'next-page' }) : h('span', { class: 'muted' }, 'last page')));
}

async function tracePage(id) {
  const t = await api(`/v1/traces/${enc(id)}`);
  const datasets = isAdmin() ? await api('/v1/datasets') : { items: [] };
  const dsSel = h('select', { id: 'add-dataset', 'aria-label': 'dataset' }, datasets.items.map((d) => h('option', { value: d.name }, d.name)));
  const msgs = (t.input && t.input.messages) || [];
  render(h('h1', null, 'Trace ', id),
    h('dl', { class: 'kv card' }, h('dt', null, 'when'), h('dd', null, when(t.timestamp)),
      h('dt', null, 'prompt'), h('dd', null, t.prompt ? link('#/prompt/' + enc(t.prompt.name), `${t.prompt.name} v${t.prompt.version ?? '?'}`) : '–'),
      h('dt', null, 'result'), h('dd', { class: t.verdict === 'pass' ? 'pass' : 'fail' }, t.verdict || 'not evaluated'),
      h('dt', null, 'tags'), h('dd', null, (t.tags || []).length ? t.tags.join(' ') : '–'),
      h('dt', null, 'latency'), h('dd', null, t.latency_ms != null ? t.latency_ms.toFixed(1) + ' ms' : '–'),
      h('dt', null, 'tokens'), h('dd', null, t.usage ? `${t.usage.input_tokens ?? '–'} in, ${t.usage.output_tokens ?? '–'} out` : '–')),
    isAdmin() && datasets.items.length ? h('div', { class: 'actions' }, dsSel,
      h('button', { type: 'button', id: 'add-to-dataset', onclick: (e) => action(e.target, `/v1/datasets/${enc(dsSel.value)}/from-trace`, { trace_id: id }) }, 'Add to dataset')) : null,
    h('h2', null, 'Input'), msgs.length ? msgs.map((m) => h('div', { class: 'card' }, h('b', null, m.role), h('pre', null, typeof m.content === 'string' ? m.content : JSON.stringify(m.content, null, 2))))
      : h('pre', { class: 'card' }, JSON.stringify(t.input || {}, null, 2)),
    t.tool_calls ? [h('h2', null, 'Tool calls'), h('pre', { class: 'card' }, JSON.stringify(t.tool_calls, null, 2))] : null,
    h('h2', null, 'Output'), h('pre', { class: 'card', id: 'trace-output' }, typeof t.output === 'string' ? t.output : JSON.stringify(t.output, null, 2)),
    h('h2', null, 'Evaluator results'), h('table', null, h('tr', null, ['evaluator', 'result', 'score', 'reason'].map((x) => h('th', null, x))),
      (t.scores || []).map((s) => h('tr', null, h('td', null, s.evaluator), h('td', { class: s.pass ? 'pass' : 'fail' }, s.pass ? 'pass' : !s.status || s.status === 'ok' ? 'fail' : s.status), h('td', null, s.score ?? '–'), h('td', null, s.reason || '')))),
    h('h2', null, 'Feedback'), (t.feedback || []).length ? h('pre', { class: 'card' }, JSON.stringify(t.feedback, null, 2)) : h('p', { class: 'muted' }, 'none'));
}

// ---- datasets ----

async function datasetsPage() {
  const ds = await api('/v1/datasets');
  render(h('h1', null, 'Datasets'), h('table', { id: 'datasets' }, h('tr', null, ['name', 'version', 'cases', 'updated'].map((x) => h('th', null, x))),
    ds.items.map((d) => h('tr', null, h('td', null, link('#/dataset/' + enc(d.name), d.name)), h('td', null, 'v' + d.version), h('td', null, d.cases), h('td', null, when(d.updated_at))))));
}

async function datasetPage(name) {
  const [vs, casesText] = await Promise.all([api(`/v1/datasets/${enc(name)}/versions`),
    fetch(`/v1/datasets/${enc(name)}/cases`, { headers: S.token ? { Authorization: 'Bearer ' + S.token } : {} }).then((r) => r.text())]);
  const cases = casesText.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  const versions = vs.items || [];
  const opt = (sel) => versions.map((v) => h('option', { value: v.version, selected: v.version === sel }, 'v' + v.version));
  const last = versions.length ? versions[versions.length - 1].version : 1;
  const fromSel = h('select', { 'aria-label': 'diff from' }, opt(Math.max(1, last - 1))), toSel = h('select', { 'aria-label': 'diff to' }, opt(last));
  const diffBox = h('div', { id: 'dataset-diff' });
  const showDiff = async () => {
    try {
      const d = await api(`/v1/datasets/${enc(name)}/diff?from=${fromSel.value}&to=${toSel.value}`);
      diffBox.replaceChildren(h('pre', { class: 'card' }, JSON.stringify(d, null, 2)));
    } catch (e) { diffBox.replaceChildren(h('p', { class: 'error' }, e.message)); }
  };
  fromSel.addEventListener('change', showDiff);
  toSel.addEventListener('change', showDiff);
  render(h('h1', null, 'Dataset ', name),
    h('h2', null, 'Versions'), h('table', { id: 'dataset-versions' }, h('tr', null, ['version', 'cases', 'added', 'removed', 'changed', 'when'].map((x) => h('th', null, x))),
      versions.map((v) => h('tr', null, h('td', null, 'v' + v.version), h('td', null, v.cases ?? '–'), h('td', null, v.added ?? '–'), h('td', null, v.removed ?? '–'), h('td', null, v.changed ?? '–'), h('td', null, when(v.created_at))))),
    h('h2', null, 'Diff'), h('div', { class: 'filters' }, h('label', null, 'from ', fromSel), h('label', null, 'to ', toSel)), diffBox,
    h('h2', null, `Cases (${cases.length})`), h('div', { class: 'scroll' }, h('table', { id: 'cases' }, h('tr', null, ['id', 'tags', 'input', 'expected'].map((x) => h('th', null, x))),
      cases.map((c) => h('tr', null, h('td', null, c.id), h('td', null, (c.tags || []).join(', ')), h('td', null, h('pre', null, JSON.stringify(c.variables || c.input || {}))), h('td', null, h('pre', null, c.expected !== undefined ? JSON.stringify(c.expected) : '')))))));
  if (versions.length > 1) await showDiff();
}

// ---- start ----

$('#drawer-close').addEventListener('click', closeDrawer);
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') closeDrawer();
  if (e.target.matches && e.target.matches('input, select, textarea')) return;
  if (e.key === '/' && $('#trace-filters')) { e.preventDefault(); $('#trace-filters select').focus(); }
});

if (embedded) {
  // ratchet eval --html: the compare page of one run, from the embedded JSON
  $('header').hidden = true;
  const data = JSON.parse(embedded.textContent);
  const cases = new Map(((data.run.spec && data.run.spec.cases) || []).map((c) => [c.id, c]));
  for (const c of data.cases || []) cases.set(c.id, c);
  const rep = data.run.report || {};
  document.title = `ratchet eval: ${rep.prompt || data.run.prompt} — ${data.run.verdict || data.run.state}`;
  const view = compareView(data.run, data.results || [], cases, data.diffs || []);
  render(...view.nodes);
  view.draw();
} else {
  $('#login').addEventListener('submit', async (e) => {
    e.preventDefault();
    try { await signIn($('#token').value.trim()); route(); } catch (err) { if (!(err instanceof AuthError)) $('#login-error').textContent = err.message; }
  });
  $('#logout').addEventListener('click', () => {
    answers.clear();
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(SCOPE_KEY);
    S.token = '';
    S.scope = null;
    showLogin('');
  });
  window.addEventListener('hashchange', route);
  const cached = sessionStorage.getItem(SCOPE_KEY);
  const checked = (p) => p.catch((e) => { if (!(e instanceof AuthError)) showLogin(e.message); });
  if (S.token && cached) {
    // the scope this tab saw for its token: draw now, ask the engine meanwhile
    signedIn(cached);
    route();
    checked(signIn(S.token).then(() => { if (S.scope !== cached) route(); }));
  } else if (S.token) checked(signIn(S.token).then(route));
  else showLogin('');
}
