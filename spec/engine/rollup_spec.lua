-- The per-minute rollups behind GET /v1/prompts/{name}/metrics and /series:
-- over windows whose edges fall inside minutes, on minute boundaries and
-- inside one minute, every figure the API gives equals the scan of the
-- traces and scores (the SQL the engine ran before the rollups, run here by
-- the sqlite3 CLI on the stopped engine's store, or psql on its PostgreSQL
-- database), with traces spread over hours and versions, evaluations and
-- feedback arriving after the trace, a retry; and again after the migration
-- rebuilds the rollups from the rows. Runs on both backends.
local engine = require "spec.helpers.engine"

local ADMIN = "admin-token-rollup-0123456789"
local MIN, HOUR = 60000, 3600000

local function config()
  return string.format([[
admin_token = %q
scripts = { dirs = { %q } }
prompt "roll" {
  evaluators = { "json_valid", { "contains", options = { value = "ok" }, required = false } },
}
]], ADMIN, engine.root)
end

local function auth() return { headers = { authorization = "Bearer " .. ADMIN } } end

local PG = engine.store == "postgres"

-- a number of the body, NULL when it holds none (PostgreSQL)
local function num(path)
  return string.format("(CASE WHEN json_typeof(body #> '%s') = 'number' THEN (body #>> '%s')::float8 END)", path, path)
end

-- the scan: the SQL of engine/store/sqlite_loop.c before migration 7 (pg_loop.c before
-- PostgreSQL's migration 8)
local function scan(e, version, since, till)
  local w = string.format("prompt = 'roll' AND (%d = 0 OR version = %d) AND ts >= %d AND ts < %d",
    version, version, since, till)
  local row = PG and e:sql("SELECT count(*), count(*) FILTER (WHERE verdict IS NOT NULL), "
    .. "count(*) FILTER (WHERE verdict = 0 AND negative = 0), count(*) FILTER (WHERE verdict = 1 OR negative = 1), "
    .. "count(*) FILTER (WHERE verdict = 2), coalesce(sum(negative), 0), count(retry_of), "
    .. "coalesce(avg(" .. num("{latency_ms}") .. "), 0), coalesce(avg(" .. num("{usage,cost_usd}") .. "), 0), "
    .. "coalesce(avg(" .. num("{usage,input_tokens}") .. " + " .. num("{usage,output_tokens}") .. "), 0) "
    .. "FROM traces WHERE " .. w) or e:sql("SELECT count(*), total(verdict IS NOT NULL), total(verdict = 0 AND negative = 0), "
    .. "total(verdict = 1 OR negative = 1), total(verdict = 2), total(negative), total(retry_of IS NOT NULL), "
    .. "coalesce(avg(json_extract(body, '$.latency_ms')), 0), coalesce(avg(json_extract(body, '$.usage.cost_usd')), 0), "
    .. "coalesce(avg(json_extract(body, '$.usage.input_tokens') + json_extract(body, '$.usage.output_tokens')), 0) "
    .. "FROM traces WHERE " .. w)
  local f = {}
  for x in row:gmatch("[^|]+") do f[#f + 1] = tonumber(x) end
  local m = { traces = f[1], evaluated = f[2], passed = f[3], failures = f[4], errors = f[5], negative = f[6],
    retries = f[7], latency_ms = f[8], cost = f[9], tokens = f[10], evaluators = {} }
  local evs = e:sql((PG and "SELECT s.evaluator, count(*), count(*) FILTER (WHERE s.status = 'ok' AND s.pass = 1), "
    .. "count(*) FILTER (WHERE s.status = 'ok' AND s.pass = 0), count(*) FILTER (WHERE s.status <> 'ok'), "
    .. "max(s.required) "
    or "SELECT s.evaluator, count(*), total(s.status = 'ok' AND s.pass = 1), "
    .. "total(s.status = 'ok' AND s.pass = 0), total(s.status <> 'ok'), max(s.required) ")
    .. "FROM scores s JOIN traces t ON t.id = s.trace_id WHERE "
    .. w:gsub("prompt", "t.prompt"):gsub("version", "t.version"):gsub("ts ", "t.ts ")
    .. " GROUP BY s.evaluator")
  for line in evs:gmatch("[^\n]+") do
    local name, n, ok, fail, errs, req = line:match("^([^|]+)|([^|]+)|([^|]+)|([^|]+)|([^|]+)|([^|]+)$")
    m.evaluators[name] = { n = tonumber(n), passed = tonumber(ok), failures = tonumber(fail),
      errors = tonumber(errs), required = tonumber(req) == 1 }
  end
  return m
end

local function close(a, b, what)
  assert(math.abs(a - b) <= 1e-9 * math.max(1, math.abs(a), math.abs(b)), string.format("%s: %.17g vs %.17g", what, a, b))
end

local function same(want, got, what, counts_only)
  for _, k in ipairs { "traces", "evaluated", "passed", "failures", "errors", "negative", "retries" } do
    if got[k] ~= nil or not counts_only then assert.equal(want[k], got[k], what .. " " .. k) end
  end
  if not counts_only then
    for _, k in ipairs { "latency_ms", "cost", "tokens" } do close(want[k], got[k], what .. " " .. k) end
  end
  local n = 0
  for name, we in pairs(want.evaluators) do
    n = n + 1
    local ge = got.evaluators[name]
    assert.is_table(ge, what .. ": evaluator " .. name .. " missing")
    assert.equal(we.n, ge.n, what .. " " .. name .. ".n")
    local rate = (we.passed + we.failures) > 0 and we.passed / (we.passed + we.failures) or 0
    close(rate, ge.pass_rate, what .. " " .. name .. ".pass_rate")
    if not counts_only then
      assert.equal(we.passed, ge.passed, what .. " " .. name .. ".passed")
      assert.equal(we.failures, ge.failures, what .. " " .. name .. ".failures")
      assert.equal(we.errors, ge.errors, what .. " " .. name .. ".errors")
      assert.equal(we.required, ge.required, what .. " " .. name .. ".required")
    end
  end
  local gn = 0
  for _ in pairs(got.evaluators) do gn = gn + 1 end
  assert.equal(n, gn, what .. ": evaluators")
end

describe("metrics from the per-minute rollups", function()
  local e, dir
  local now = math.floor(os.time() / 60) * 60 * 1000 - 7 * MIN + 12345 -- inside a minute, in the past
  local t0 = now - 5 * HOUR

  setup(function()
    dir = engine.tmpdir()
    e = engine.start { dir = dir, config = config() }
    assert.equal(201, e:post("/v1/prompts", '{"name":"roll"}', auth()).status)
    for v = 1, 2 do
      local r = e:post("/v1/prompts/roll/versions",
        '{"messages":[{"role":"user","content":"v' .. v .. ' {{q}}"}]}', auth())
      assert.equal(201, r.status, r.body)
    end
    -- 400 traces over 5 hours, 3 versions (1, 2, none), some on minute
    -- boundaries, outputs valid or not, some with "ok", figures missing on some
    local items = {}
    local seed = 7
    local function rnd(n) seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n end
    for i = 1, 400 do
      local ts = (i % 25 == 0) and (t0 + rnd(300) * MIN) or (t0 + rnd(5 * HOUR))
      local t = { id = "r-" .. i, timestamp = ts, input = { variables = { q = tostring(i) } },
        output = (i % 3 == 0) and "not json" or ((i % 4 == 0) and '{"a":"ok"}' or '{"a":1}') }
      if i % 5 ~= 0 then t.prompt = { name = "roll", version = 1 + i % 2 } else t.prompt = { name = "roll" } end
      if i % 7 ~= 0 then t.latency_ms = 100 + rnd(900) + rnd(1000) / 1000 end
      if i % 11 ~= 0 then
        t.usage = { input_tokens = rnd(500), output_tokens = rnd(80), cost_usd = rnd(1000) / 1e6 }
      end
      if i % 50 == 0 then t.retry_of = "r-" .. (i - 1) end
      items[#items + 1] = engine.json.encode(t)
    end
    local r = e:post("/v1/traces", "[" .. table.concat(items, ",") .. "]",
      { headers = { authorization = "Bearer " .. ADMIN, ["content-type"] = "application/json" } })
    assert.equal(200, r.status, r.body)
    -- sent again (a client's retry): duplicates, counted once
    r = e:post("/v1/traces", "[" .. table.concat(items, ",", 1, 20) .. "]",
      { headers = { authorization = "Bearer " .. ADMIN, ["content-type"] = "application/json" } })
    assert.equal(200, r.status, r.body)
    assert.equal(20, r.json.duplicate)
    -- every trace evaluated (after it was stored), then feedback on some
    engine.eventually(30 * engine.slow, function()
      local m = e:get("/v1/prompts/roll/metrics?version=1&since=" .. (t0 - HOUR) .. "&until=" .. (now + HOUR), auth())
      local all = e:get("/v1/prompts/roll/series?buckets=1&since=" .. (t0 - HOUR) .. "&until=" .. (now + HOUR), auth())
      return m.status == 200 and all.json.points[1].evaluated == 400
    end)
    local fb = {}
    for i = 2, 400, 9 do
      fb[#fb + 1] = engine.json.encode { id = "fb-" .. i, trace_id = "r-" .. i, thumbs = (i % 2 == 0) and "down" or "up" }
    end
    r = e:post("/v1/feedback", "[" .. table.concat(fb, ",") .. "]",
      { headers = { authorization = "Bearer " .. ADMIN, ["content-type"] = "application/json" } })
    assert.equal(200, r.status, r.body)
    -- two hours re-evaluated: their scores replaced (the old ones taken away, the new ones added)
    local before = e:get("/v1/status", auth()).json.evaluation.evaluated
    local n = 0
    for _, item in ipairs(items) do
      local ts = engine.json.decode(item).timestamp
      if ts >= t0 + HOUR and ts < t0 + 3 * HOUR then n = n + 1 end
    end
    r = e:post("/v1/evaluations", engine.json.encode { prompt = "roll", since = t0 + HOUR, ["until"] = t0 + 3 * HOUR },
      { headers = { authorization = "Bearer " .. ADMIN, ["content-type"] = "application/json" } })
    assert.equal(202, r.status, r.body)
    engine.eventually(30 * engine.slow, function()
      local ev = e:get("/v1/status", auth()).json.evaluation
      return ev.evaluated >= before + n and ev.backlog == 0
    end)
    assert.is_true(n > 100)
  end)
  teardown(function() if e then e:stop() end end)

  local windows = {
    { t0 - HOUR, now + HOUR, "all" },
    { t0 + 17 * MIN + 4321, now - 33 * MIN - 999, "edges inside minutes" },
    { t0 + 60 * MIN - (t0 % MIN), t0 + 200 * MIN - (t0 % MIN), "whole minutes" },
    { t0 + 90 * MIN + 10, t0 + 90 * MIN + 50000, "inside one minute" },
    { t0 + 2 * HOUR + 59999, t0 + 2 * HOUR + 60001, "across one minute boundary" },
  }

  local function check_all(label)
    -- the scan, on the stopped engine's store
    e:stop { keep = true }
    local want = {}
    for wi, w in ipairs(windows) do
      for _, v in ipairs { 0, 1, 2 } do want[wi .. ":" .. v] = scan(e, v, w[1], w[2]) end
    end
    -- a series of 17 buckets over 5 hours: the window starts on its minute
    -- and the buckets are whole minutes (the API says so); and one of 7
    -- buckets over 5 minutes, cut exactly as asked
    local series, short = {}, {}
    local s0, s1, nb = t0 + 1234, now + 5678, 17
    local a0 = s0 - s0 % MIN
    local step = math.ceil(math.ceil((s1 - a0) / nb) / MIN) * MIN
    for from = a0, s1 - 1, step do series[#series + 1] = scan(e, 0, from, math.min(from + step, s1)) end
    local q0, q1 = t0 + 100 * MIN + 777, t0 + 105 * MIN + 4321
    local qstep = math.ceil((q1 - q0) / 7)
    for from = q0, q1 - 1, qstep do short[#short + 1] = scan(e, 1, from, math.min(from + qstep, q1)) end
    e = engine.start { dir = dir, config = config() }
    for wi, w in ipairs(windows) do
      for _, v in ipairs { 1, 2 } do
        local r = e:get(string.format("/v1/prompts/roll/metrics?version=%d&since=%d&until=%d", v, w[1], w[2]), auth())
        assert.equal(200, r.status, r.body)
        same(want[wi .. ":" .. v], r.json.versions[1], label .. ", " .. w[3] .. ", version " .. v)
      end
    end
    local r = e:get(string.format("/v1/prompts/roll/series?since=%d&until=%d&buckets=%d", s0, s1, nb), auth())
    assert.equal(200, r.status, r.body)
    assert.equal(step, r.json.bucket_ms)
    assert.equal(#series, #r.json.points)
    assert.is_true(#series <= nb and #series >= nb - 1)
    local total = 0
    for i, p in ipairs(r.json.points) do
      same(series[i], p, label .. ", series bucket " .. i, true)
      total = total + p.traces
    end
    assert.equal(400, total)
    r = e:get(string.format("/v1/prompts/roll/series?since=%d&until=%d&buckets=7&version=1", q0, q1), auth())
    assert.equal(200, r.status, r.body)
    assert.equal(qstep, r.json.bucket_ms)
    assert.equal(7, #r.json.points)
    for i, p in ipairs(r.json.points) do same(short[i], p, label .. ", short series bucket " .. i, true) end
    return want
  end

  it("equal the scan of the traces, feedback after evaluation and a retry included", function()
    local want = check_all("rollup")
    -- not an empty comparison: the windows hold traces, failures, negative feedback
    assert.equal(400, want["1:0"].traces)
    assert.is_true(want["1:0"].failures > 0 and want["1:0"].negative > 0 and want["1:0"].retries > 0)
    assert.is_true(want["2:1"].evaluators.contains.n > 0)
    assert.is_true(want["4:0"].traces > 0 or want["5:0"].traces > 0)
    if PG then -- the figures came from the rollups: they hold every trace and score once
      assert.equal("400", e:sql("SELECT sum(traces) FROM trace_minutes WHERE prompt = 'roll'"))
      assert.equal(e:sql("SELECT count(*) FROM scores"), e:sql("SELECT sum(n) FROM score_minutes WHERE prompt = 'roll'"))
      assert.equal("0", e:sql("SELECT count(*) FROM trace_minute_changes"))
    end
  end)

  it("ratchet series NAME prints the same buckets, of every version or one", function()
    local url = engine.shell_quote("http://" .. e.addr)
    local s0 = t0 - HOUR - t0 % MIN
    local s1 = s0 + 7 * HOUR -- 7 buckets of 60 min
    local range = string.format(" --since %d --until %d --buckets 7", s0, s1)
    local api = e:get(string.format("/v1/prompts/roll/series?since=%d&until=%d&buckets=7", s0, s1), auth()).json
    local code, out, err = engine.run("series roll --url " .. url .. range, { RATCHET_ADMIN_TOKEN = ADMIN })
    assert.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.matches("^roll, every version: .* 7 buckets of 60 min$", lines[1])
    assert.matches("^bucket%s+traces%s+evaluated%s+pass%s+negative%s+contains%s+json_valid$", lines[2])
    assert.equal(9, #lines, out)
    for i, p in ipairs(api.points) do
      local t, traces, evaluated, rate, neg = lines[i + 2]:match("^(%S+)%s+(%d+)%s+(%d+)%s+(%S+) ?%%?%s+(%d+)")
      assert.equal(p.t, t)
      assert.equal(p.traces, tonumber(traces))
      assert.equal(p.evaluated, tonumber(evaluated))
      assert.equal(p.negative, tonumber(neg))
      if p.pass_rate == engine.json.null then assert.equal("-", rate)
      else assert.equal(string.format("%.1f", p.pass_rate * 100), rate) end
      if p.evaluators.json_valid then
        assert.matches(string.format("%.1f %%%% of %d$", p.evaluators.json_valid.pass_rate * 100, p.evaluators.json_valid.n),
          lines[i + 2])
      end
    end
    -- one version, as JSON: the API's answer
    code, out = engine.run("series roll --version 2 --json --url " .. url .. range, { RATCHET_ADMIN_TOKEN = ADMIN })
    assert.equal(0, code)
    local j = engine.json.decode(out)
    assert.equal(2, j.version)
    assert.equal(7, #j.points)
    -- the errors name what is wrong
    code, out, err = engine.run("series nope --url " .. url, { RATCHET_ADMIN_TOKEN = ADMIN })
    assert.equal(3, code)
    assert.matches("no prompt named 'nope'", err)
    code, out, err = engine.run("series roll --buckets 97 --url " .. url, { RATCHET_ADMIN_TOKEN = ADMIN })
    assert.equal(3, code)
    assert.matches("%-%-buckets", err)
    code, out, err = engine.run("series --url " .. url, { RATCHET_ADMIN_TOKEN = ADMIN })
    assert.equal(3, code)
    assert.matches("name a prompt", err)
  end)

  it("are rebuilt from the rows by the migration (a store from before the rollups)", function()
    e:stop { keep = true }
    local migrated = "migrated schema to version 7"
    if PG then
      -- back to the schema before the last two migrations (the rollups, the tags): their
      -- tables, triggers and functions gone
      local v = tonumber(e:sql("SELECT version FROM ratchet_schema"))
      migrated = "migrated the PostgreSQL schema to version " .. (v - 1) .. "\n.*to version " .. v
      e:sql("DROP TABLE trace_minutes, score_minutes, trace_minute_changes, score_minute_changes, trace_tags; "
        .. "DROP TRIGGER traces_rollups ON traces; DROP TRIGGER scores_rollups ON scores; "
        .. "DROP FUNCTION ratchet_trace_minute, ratchet_trace_scores, ratchet_traces_changed, ratchet_score_minute, "
        .. "ratchet_scores_changed, ratchet_rollups_pending, ratchet_rollups_fold; "
        .. "DROP TRIGGER traces_tags_delete ON traces; DROP FUNCTION ratchet_trace_tags_delete; "
        .. "UPDATE ratchet_schema SET version = " .. (v - 2))
      assert.equal("0", e:sql("SELECT count(*) FROM pg_class WHERE relname LIKE '%minute%'"))
    else
      local db = engine.shell_quote(e.data .. "/ratchet.db")
      local drop = "DROP TABLE trace_minutes; DROP TABLE score_minutes; DROP TABLE trace_tags; PRAGMA user_version = 6;"
      for _, t in ipairs { "trace_minutes_counts", "trace_minutes_moved", "trace_minutes_delete", "score_minutes_update",
        "score_minutes_delete", "score_minutes_trace_moved", "score_minutes_trace_delete", "trace_tags_delete" } do
        drop = "DROP TRIGGER " .. t .. "; " .. drop
      end
      assert.is_true(os.execute("sqlite3 " .. db .. " " .. engine.shell_quote(drop)))
      assert.equal("0", e:sql("SELECT count(*) FROM sqlite_master WHERE name LIKE '%minutes%'"))
    end
    e = engine.start { dir = dir, config = config() }
    assert.matches(migrated, e:log_text())
    check_all("after the migration")
  end)
end)

-- Two engines on one database add to the same minute rows at once (ingest on both, each
-- evaluating what it took): every count arrives, no transaction fails (a deadlock would
-- fail a batch: 503), and the API's figures equal the scan.
describe("rollups written by two engines at once (PostgreSQL)", function()
  if not PG then return end
  local e1, e2
  teardown(function()
    if e2 then e2:stop() end
    if e1 then e1:stop() end
  end)

  it("count every trace and verdict once", function()
    e1 = engine.start { store = "postgres", config = config() }
    assert.equal(201, e1:post("/v1/prompts", '{"name":"roll"}', auth()).status)
    e2 = engine.start { store = "postgres", dsn = e1.dsn, config = config() }
    local base = math.floor(os.time() / 60) * 60 * 1000 - 10 * MIN
    local dir = engine.tmpdir()
    local cmds = {}
    for b = 1, 16 do
      local items = {}
      for i = 1, 40 do
        -- every batch spans the same three minutes, in a different order
        local k = (i + b) % 3
        items[#items + 1] = engine.json.encode { id = string.format("c-%d-%d", b, i), prompt = { name = "roll" },
          timestamp = base + k * MIN + i, input = { variables = { q = "x" } },
          output = (i % 2 == 0) and '{"a":"ok"}' or "no", latency_ms = i }
      end
      local f = dir .. "/batch" .. b .. ".json"
      local h = assert(io.open(f, "w"))
      h:write("[" .. table.concat(items, ",") .. "]")
      h:close()
      local addr = (b % 2 == 0) and e1.addr or e2.addr
      cmds[#cmds + 1] = string.format("curl -s -o /dev/null -w '%%{http_code}\\n' -H 'content-type: application/json' "
        .. "-H %s --data-binary @%s http://%s/v1/traces &", engine.shell_quote("authorization: Bearer " .. ADMIN),
        engine.shell_quote(f), addr)
    end
    local p = io.popen("(" .. table.concat(cmds, " ") .. " wait)")
    local codes = p:read("a")
    p:close()
    local n200 = select(2, codes:gsub("200", ""))
    assert.equal(16, n200, codes)
    engine.eventually(30 * engine.slow, function()
      return e1:sql("SELECT count(*) FROM traces WHERE verdict IS NULL") == "0"
    end)
    local since, till = base - MIN, base + 4 * MIN
    local want = scan(e1, 0, since, till)
    assert.equal(640, want.traces)
    assert.equal(640, want.evaluated)
    assert.equal(320, want.passed)
    for _, e in ipairs { e1, e2 } do
      local r = e:get(string.format("/v1/prompts/roll/series?since=%d&until=%d&buckets=1", since, till), auth())
      assert.equal(200, r.status, r.body)
      same(want, r.json.points[1], "two engines", true)
    end
    assert.equal("640", e1:sql("SELECT sum(traces) FROM trace_minutes"))
    assert.equal("640", e1:sql("SELECT sum(evaluated) FROM trace_minutes"))
    assert.is_nil(e1:log_text():find("deadlock"))
    assert.is_nil(e2:log_text():find("deadlock"))
  end)
end)
