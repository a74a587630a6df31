-- The prompt registry, datasets and the regression gate end to end: the real
-- engine runs prompt versions against the real fake LLM server, whose model
-- (spec/fixtures/instructed_model.lua) follows only what the system prompt says.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"

local MODEL = engine.read_file("spec/fixtures/instructed_model.lua")

local function config(fake, extra)
  return string.format([[
scripts = { dirs = { %q } }
provider "fake" {
  kind = "openai", base_url = %q, default_model = "m-1",
  max_retries = 2, backoff_base_ms = 5, backoff_max_ms = 20, timeout_ms = 3000,
  models = { ["m-1"] = { input_per_mtok = 1, output_per_mtok = 2 } },
}
prompt "upper" { evaluators = { { "equals" } } }
%s
]], engine.root, "http://" .. fake.addr .. "/v1", extra or "")
end

local function version(system)
  return { messages = { { role = "system", content = system }, { role = "user", content = "{{text}}" } },
           model = { provider = "fake", model = "m-1" } }
end

-- v1 repeats (fails lowercase cases), v2 uppercases (fixes them),
-- v3 uppercases but turns ZEBRA into HORSE (breaks the critical case)
local function setup(e)
  assert.equal(201, e:post("/v1/prompts", { name = "upper" }).status)
  assert.equal(201, e:post("/v1/prompts/upper/versions", version("Repeat the text.")).status)
  assert.equal(201, e:post("/v1/prompts/upper/versions", version("Repeat the text. Answer in uppercase.")).status)
  assert.equal(201, e:post("/v1/prompts/upper/versions",
    version("Answer in uppercase. Replace ZEBRA with HORSE.")).status)
  local lines = {
    '{"id":"lower-1","variables":{"text":"hello"},"expected":"HELLO","tags":["golden"]}',
    '{"id":"lower-2","variables":{"text":"refund please"},"expected":"REFUND PLEASE","tags":["golden"]}',
    '{"id":"zebra","variables":{"text":"ZEBRA"},"expected":"ZEBRA","tags":["critical"]}',
    '{"id":"done","variables":{"text":"DONE"},"expected":"DONE","tags":["golden"]}',
  }
  local r = e:post("/v1/datasets/golden/cases", table.concat(lines, "\n") .. "\n", { content_type = "application/x-ndjson" })
  assert.equal(200, r.status, r.body)
  -- "wide": six lowercase cases, enough fixes to show an improvement (exact sign test: 0.5^6 < 0.05)
  local wide = {}
  for i = 1, 6 do
    wide[i] = string.format('{"id":"lower-%d","variables":{"text":"word %s"},"expected":"WORD %s","tags":["golden"]}',
      i, string.rep("x", i), string.rep("X", i))
  end
  wide[7], wide[8] = lines[3], lines[4]
  r = e:post("/v1/datasets/wide/cases", table.concat(wide, "\n") .. "\n", { content_type = "application/x-ndjson" })
  assert.equal(200, r.status, r.body)
end

local function run(e, body)
  local r = e:post("/v1/runs", body)
  assert.equal(201, r.status, r.body)
  local id = r.json.id
  local done = engine.eventually(20, function()
    local g = e:get("/v1/runs/" .. id)
    if g.json.state ~= "running" then return g.json end
  end)
  assert(done, "the run did not finish")
  return done
end

-- Each test of the enclosing describe gets its own fake LLM server (fake_opts)
-- and engine with setup() done, as env.fake and env.e (env being what this
-- returns); a test that stops the engine itself sets env.e = nil.
local function each_with_engine(fake_opts)
  local t = {}
  before_each(function()
    t.fake = fake_llm.start(fake_opts)
    t.e = engine.start { config = config(t.fake) }
    setup(t.e)
  end)
  after_each(function()
    if t.e then t.e:stop() end
    t.fake:stop()
  end)
  return t
end

describe("regression gate", function()
  local env = each_with_engine { model = MODEL }

  it("says improved for a candidate that fixes failures and breaks nothing, and stores every result", function()
    local r = run(env.e, { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "wide" })
    assert.equal("finished", r.state)
    assert.equal("improved", r.verdict)
    assert.equal(2, r.report.winner)
    assert.matches("fixes 6 of 6, breaks 0", r.report.verdicts[1].reasons[1], 1, true)
    assert.equal(0.25, r.report.versions[1].pass_rate)
    assert.equal(1, r.report.versions[2].pass_rate)
    assert.equal(1, r.report.dataset.version)
    assert.equal(6, r.report.changed_cases)
    -- per tag: v1 fails the six lowercase golden cases, v2 passes all
    local t1, t2 = r.report.versions[1].by_tag, r.report.versions[2].by_tag
    assert.same({ 7, 1, 1, 1 }, { t1.golden.cases, t1.golden.cases_passed, t1.critical.cases, t1.critical.cases_passed })
    assert.same({ 7, 7, 1, 1 }, { t2.golden.cases, t2.golden.cases_passed, t2.critical.cases, t2.critical.cases_passed })
    local res = env.e:get("/v1/runs/" .. r.id .. "/results?limit=100").json.items
    assert.equal(16, #res)
    for _, x in ipairs(res) do
      assert.is_string(x.output)
      assert.equal("equals", x.verdicts[1].evaluator)
      assert.is_true(x.input_tokens > 0)
    end
    assert.equal(16, env.fake:stats().requests)
    local st = env.e:get("/v1/status").json
    assert.equal(1, st.runs.finished)
    assert.equal(16, st.runs.results)
    assert.equal("accept", st.scripts.policies[1].name)
  end)

  it("says regressed for a candidate that breaks a critical golden case, naming it", function()
    local r = run(env.e, { prompt = "upper", baseline = 1, candidates = { 2, 3 }, dataset = "wide" })
    assert.equal("improved", r.verdict) -- v2 passes the gate
    assert.equal(2, r.report.winner)
    assert.equal("v2 is the only improved candidate", r.report.winner_reason)
    local v3 = r.report.verdicts[2]
    assert.equal(3, v3.version)
    assert.equal("regressed", v3.verdict)
    assert.matches("critical case%(s%), whose pass rate may never drop: zebra", v3.reasons[1])
    local only3 = run(env.e, { prompt = "upper", baseline = 1, candidates = { 3 }, dataset = "wide" })
    assert.equal("regressed", only3.verdict)
  end)

  it("says no regression when the fixes are too few to show an improvement, inconclusive in a gate run", function()
    local r = run(env.e, { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "golden" })
    assert.equal("no_regression", r.verdict)
    assert.matches("too few cases to fix %(2", r.report.verdicts[1].reasons[1])
    r = run(env.e, { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "golden", kind = "gate" })
    assert.equal("inconclusive", r.verdict)
    assert.is_nil(r.report.winner ~= engine.json.null and r.report.winner or nil)
  end)

  it("is inconclusive when calls fail beyond the retries", function()
    env.fake:faults { { status = 500, times = 3 } } -- one call's three attempts
    local r = run(env.e, { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "golden", concurrency = 1,
                       cache = false })
    assert.equal("finished", r.state)
    assert.equal("inconclusive", r.verdict)
    assert.matches("errored results", table.concat(r.report.verdicts[1].reasons, " "))
    local errs = 0
    for _, x in ipairs(env.e:get("/v1/runs/" .. r.id .. "/results").json.items) do
      if x.status == "error" then errs = errs + 1; assert.matches("server_error", x.error) end
    end
    assert.equal(1, errs)
  end)

  it("pays for an unchanged baseline once: the cache serves it the second time (the ledger shows it)", function()
    local first = run(env.e, { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "golden" })
    assert.equal(8, first.report.usage.calls)
    local second = run(env.e, { prompt = "upper", baseline = 1, candidates = { 3 }, dataset = "golden" })
    assert.equal(4, second.report.usage.calls)   -- only the new candidate's
    assert.equal(4, second.report.usage.cached)
    local calls = env.e:get("/v1/llm/calls?caller_kind=run&limit=1000").json.items
    local per_run = {}
    for _, c in ipairs(calls) do per_run[c.run_id] = (per_run[c.run_id] or 0) + 1 end
    assert.equal(8, per_run[first.id])
    assert.equal(4, per_run[second.id])
    assert.equal(12, env.fake:stats().requests)
  end)

  it("stops cleanly as incomplete when the run's budget runs out", function()
    local r = run(env.e, { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "golden", concurrency = 1,
                       budget = { calls = 3 } })
    assert.equal("incomplete", r.state)
    assert.equal("inconclusive", r.verdict)
    assert.matches("budget", r.error)
    assert.equal(3, env.fake:stats().requests)
    assert.equal(3, #env.e:get("/v1/runs/" .. r.id .. "/results").json.items)
  end)

  it("runs the failed traces of a window as cases", function()
    for i, t in ipairs({ "sorry", "thanks" }) do
      local tr = engine.trace { id = "t" .. i, prompt = { name = "upper", version = 1 }, input = { variables = { text = t } },
                                output = t, feedback = { thumbs = "down" } }
      assert.equal(200, env.e:post("/v1/traces", tr).status)
    end
    local r = run(env.e, { prompt = "upper", baseline = 1, candidates = { 2 }, failed = { limit = 10 } })
    assert.equal(2, r.report.cases)
    -- no expected output: equals cannot pass them, so nothing is fixed
    assert.equal("no_regression", r.verdict)
    assert.matches("too few cases to fix (2", r.report.verdicts[1].reasons[1], 1, true)
  end)

  it("refuses bad runs with the field named", function()
    local bad = {
      { { prompt = "nope", baseline = 1, candidates = { 2 }, dataset = "golden" }, 404, "prompt" },
      { { prompt = "upper", baseline = 1, candidates = { 9 }, dataset = "golden" }, 404, "candidates[0]" },
      { { prompt = "upper", baseline = 1, candidates = { 1 }, dataset = "golden" }, 400, "candidates[0]" },
      { { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "nope" }, 404, "dataset" },
      { { prompt = "upper", baseline = 1, candidates = { 2 } }, 400, "dataset" },
      { { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "golden", k = 0 }, 400, "k" },
      { { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "golden", colour = 1 }, 400, "colour" },
      { { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "golden", budget = { usd = 1 } }, 400, "budget.usd" },
    }
    for _, b in ipairs(bad) do
      local r = env.e:post("/v1/runs", b[1])
      assert.equal(b[2], r.status, r.body)
      assert.equal(b[3], r.json.error.field, r.body)
    end
  end)

  it("refuses a template that uses a variable a case lacks, naming both", function()
    assert.equal(201, env.e:post("/v1/prompts/upper/versions", {
      messages = { { role = "user", content = "{{text}} for {{customer}}" } }, model = { provider = "fake" } }).status)
    local r = env.e:post("/v1/runs", { prompt = "upper", baseline = 1, candidates = { 4 }, dataset = "golden" })
    assert.equal(400, r.status, r.body)
    assert.equal("missing_variable", r.json.error.code)
    assert.matches("{{customer}}", r.json.error.message)
    assert.matches("cases%[done%]%.variables%.customer", r.json.error.field)
  end)
end)

describe("a run across a restart", function()
  it("resumes after a kill and ends with every result recorded once", function()
    local fake = fake_llm.start { model = MODEL, latency_ms = 150 }
    local e = engine.start { config = config(fake) }
    setup(e)
    local r = e:post("/v1/runs", { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "golden", concurrency = 1 })
    assert.equal(201, r.status, r.body)
    local id = r.json.id
    assert(engine.eventually(10, function()
      return ((e:get("/v1/runs/" .. id).json.progress or {}).done or 0) >= 2
    end))
    e:kill9()
    local e2 = engine.start { config = config(fake), dir = e.dir }
    local done = engine.eventually(20, function()
      local g = e2:get("/v1/runs/" .. id)
      if g.json.state ~= "running" then return g.json end
    end)
    assert(done, "the resumed run did not finish")
    assert.equal("finished", done.state)
    assert.equal("no_regression", done.verdict)
    assert.equal(3, done.report.versions[2].by_tag.golden.cases_passed) -- the tags came back with the cases
    assert.equal("8", e2:sql("SELECT count(*) FROM run_results WHERE run_id = '" .. id .. "'"))
    e2:stop()
    fake:stop()
  end)
end)

describe("a verdict's reason", function()
  it("is stored as valid UTF-8 when an evaluator's is not, or is cut inside a character", function()
    local fake = fake_llm.start { model = MODEL }
    local dir = engine.tmpdir()
    assert(os.execute("mkdir " .. engine.shell_quote(dir .. "/evaluators")))
    -- a stray byte, and 400 two-byte characters after one ASCII byte: the 600-byte cut falls inside one
    engine.write_file(dir .. "/evaluators/mangled.lua", [[
return { name = "mangled", description = "answers with bytes that are not UTF-8",
  evaluate = function(case)
    if case.id == "zebra" then return { pass = true, reason = "x" .. string.rep("\u{e9}", 400) } end
    return { pass = false, reason = "bad \xff byte" }
  end }
]])
    local e = engine.start { config = config(fake, 'prompt "mangled" { evaluators = { "mangled" } }')
                               :gsub("dirs = { ", "dirs = { " .. string.format("%q", dir) .. ", ") }
    setup(e)
    assert.equal(201, e:post("/v1/prompts", { name = "mangled" }).status)
    assert.equal(201, e:post("/v1/prompts/mangled/versions", version("Repeat the text.")).status)
    assert.equal(201, e:post("/v1/prompts/mangled/versions", version("Repeat the text. Answer in uppercase.")).status)
    local r = run(e, { prompt = "mangled", baseline = 1, candidates = { 2 }, dataset = "golden", cache = false })
    assert.equal("finished", r.state)
    local res = e:get("/v1/runs/" .. r.id .. "/results").json.items
    assert.equal(8, #res) -- every result came back with its verdict: none was lost to its reason
    local cut, stray = 0, 0
    for _, x in ipairs(res) do
      local why = x.verdicts[1].reason
      assert.truthy(utf8.len(why), why)
      if why:sub(1, 1) == "x" then
        cut = cut + 1
        assert.is_true(#why < 600)
        assert.equal(why, "x" .. string.rep("\u{e9}", (#why - 1) // 2)) -- whole characters only
      else
        stray = stray + 1
        assert.equal("bad \u{fffd} byte", why)
      end
    end
    assert.same({ 2, 6 }, { cut, stray })
    e:stop()
    fake:stop()
  end)
end)

describe("waiting for a run (GET /v1/runs/{id}?wait=ms)", function()
  local env = each_with_engine { model = MODEL, latency_ms = 200 }

  local function start(e_)
    -- 8 calls of 200 ms one at a time: the run lasts at least 1.6 s
    local r = e_:post("/v1/runs", { prompt = "upper", baseline = 1, candidates = { 2 }, dataset = "golden",
                                    concurrency = 1, cache = false })
    assert.equal(201, r.status, r.body)
    return r.json.id
  end

  it("answers when the wait is over while the run goes on, and as soon as it ends", function()
    local id = start(env.e)
    local g = env.e:get("/v1/runs/" .. id .. "?wait=50")
    assert.equal(200, g.status, g.body)
    assert.equal("running", g.json.state)
    assert.is_table(g.json.progress)
    g = env.e:get("/v1/runs/" .. id .. "?wait=60000")
    assert.equal(200, g.status, g.body)
    assert.equal("finished", g.json.state) -- it did not answer before the end was stored
    assert.equal("no_regression", g.json.verdict)
    assert.is_nil(g.json.progress)
    -- an ended run: at once, the same answer
    local again = env.e:get("/v1/runs/" .. id .. "?wait=60000")
    assert.equal("finished", again.json.state)
  end)

  it("refuses a bad wait, naming it", function()
    local id = start(env.e)
    for _, q in ipairs { "wait=-1", "wait=60001", "wait=soon", "wait=" } do
      local g = env.e:get("/v1/runs/" .. id .. "?" .. q)
      assert.equal(400, g.status, q .. " " .. g.body)
      assert.equal("wait", g.json.error.field, g.body)
    end
    local g = env.e:get("/v1/runs/" .. id .. "?colour=red")
    assert.equal(400, g.status, g.body)
    assert.equal("colour", g.json.error.field)
    assert.equal(404, env.e:get("/v1/runs/no-such-run?wait=1000").status)
  end)

  it("answers a waiting request when the engine stops, and the stop is not held up", function()
    local id = start(env.e)
    local c = env.e:connect()
    assert(c:send("GET /v1/runs/" .. id .. "?wait=60000 HTTP/1.1\r\nHost: x\r\n\r\n"))
    engine.sleep(0.2) -- the request is waiting
    env.e:signal("TERM")
    local r = assert(engine.read_response(c))
    c:close()
    assert.equal(200, r.status, r.body)
    assert.equal("running", r.json.state) -- stays running in the store: the next start resumes it
    assert.equal(0, env.e:wait_exit(5 * engine.slow))
    env.e = nil
  end)
end)
