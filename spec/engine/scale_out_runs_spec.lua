-- Runs on several engines sharing one PostgreSQL database are done once (docs/scale-out.md,
-- "Runs"): a run belongs to the engine that executes it (runs.owner, the id of its heartbeat
-- in ratchet_engines); the leader resumes only the runs whose owner stopped beating, claiming
-- them with a compare-and-set. Counted on the fake LLM: every call of the run's jobs.
-- #heavy: it runs once, in `make test`, on PostgreSQL.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local tickets = require "spec.helpers.tickets"

local MODEL = tickets.MODEL
local NCASES = 7 -- demo/golden.jsonl
local JOBS = NCASES * 2 -- baseline and one candidate, k = 1

-- the prompt has no loop: the runs are the ones each test starts through the API
local function config(fake) return tickets.config(fake, false) end

-- "tickets" (version 1 in production, version 2 a candidate) and the dataset "golden"
local function setup(e) tickets.setup(e, nil, { tickets.V2 }) end

local function start_run(e)
  -- no output cache: a job done twice calls the model twice
  local r = e:post("/v1/runs", { prompt = "tickets", baseline = 1, candidates = { 2 }, dataset = "golden",
                                 concurrency = 1, cache = false })
  assert.equal(201, r.status, r.body)
  return r.json.id
end

local function results(e, id) return #e:get("/v1/runs/" .. id .. "/results?limit=1000").json.items end

local function finished(e, id, seconds)
  return engine.eventually(seconds, function()
    local g = e:get("/v1/runs/" .. id)
    if g.status == 200 and g.json.state ~= "running" and g.json.state ~= "preparing" then return g.json end
  end)
end

local function store_of(e) return e:get("/v1/status").json.store end

describe("runs on engines sharing a database #heavy", function()
  local fake, e1, e2
  before_each(function() fake = fake_llm.start { model = MODEL } end)
  after_each(function()
    if e1 and not e1.gone then e1:stop() end
    if e2 and not e2.gone then e2:stop() end
    e1, e2 = nil, nil
    fake:stop()
  end)

  it("are finished by the leader, once, when the follower running them is killed", function()
    local cfg = config(fake)
    e1 = engine.start { store = "postgres", config = cfg }
    e2 = engine.start { store = "postgres", dsn = e1.dsn, config = cfg }
    assert.equal("leader", store_of(e1).role)
    setup(e1)
    assert.truthy(engine.eventually(5, function() return e2:get("/v1/datasets/golden").status == 200 end))
    fake:faults { { delay_ms = 150, times = 1000 } }
    local before = fake:stats().requests
    local id = start_run(e2) -- on the follower, through the API
    assert.truthy(engine.eventually(20, function() return results(e2, id) >= 3 end))
    e2:kill9()
    e2.gone = true
    local done = finished(e1, id, 60)
    assert(done, "the leader did not finish the run of the killed follower:\n" .. e1:log_text())
    assert.equal("finished", done.state)
    assert.matches("run " .. id .. ": resumed", e1:log_text(), 1, true)
    assert.equal(JOBS, results(e1, id))
    -- each job's call made once; a call in flight when the follower died may be made again
    local calls = fake:stats().requests - before
    assert.is_true(calls >= JOBS and calls <= JOBS + 2, calls .. " calls for " .. JOBS .. " jobs")
  end)

  it("are not run again by a leader that restarts while their follower lives", function()
    local cfg = config(fake)
    e1 = engine.start { store = "postgres", config = cfg }
    e2 = engine.start { store = "postgres", dsn = e1.dsn, config = cfg }
    setup(e1)
    assert.truthy(engine.eventually(5, function() return e2:get("/v1/datasets/golden").status == 200 end))
    fake:faults { { delay_ms = 150, times = 1000 } }
    local before = fake:stats().requests
    local id = start_run(e2)
    assert.truthy(engine.eventually(20, function() return results(e2, id) >= 2 end))
    -- the follower pauses (a live engine: its heartbeat is seconds old, well inside the bound)
    -- so that the restarted engine starts as the leader, the case that used to resume every run
    e2:signal("STOP")
    local dsn = e1.dsn
    e1:stop()
    e1 = engine.start { store = "postgres", dsn = dsn, config = cfg }
    local role = store_of(e1).role
    e2:signal("CONT")
    assert.equal("leader", role)
    local done = finished(e2, id, 60)
    assert(done, "the run did not finish on its engine")
    assert.equal("finished", done.state)
    assert.equal(JOBS, results(e2, id))
    assert.equal(JOBS, fake:stats().requests - before)
    assert.is_nil(e1:log_text():find("run " .. id .. ": resumed", 1, true), e1:log_text())
  end)
end)

-- Leases (docs/scale-out.md, "Leases"): an engine alive whose heartbeats stop reaching the
-- database (a stalling network between it and the database, spec/helpers/stall_proxy.lua) stops
-- starting LLM calls for its run 10 s after its last committed heartbeat; the leader claims the
-- run only 15 s after it (the database's clock) and finishes it. Each engine has its own fake
-- LLM, so the calls of the stalled engine are counted apart.
describe("an engine whose database stalls #heavy", function()
  it("makes no more LLM calls for its run once its lease lapsed; the leader finishes the run once", function()
    local pg = require "spec.helpers.postgres"
    local socket = require "socket"
    local fake1 = fake_llm.start { model = MODEL }
    local fake2 = fake_llm.start { model = MODEL }
    local dir = engine.tmpdir()
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    local stall, stop = dir .. "/stall", dir .. "/stop"
    os.execute(string.format("lua5.4 spec/helpers/stall_proxy.lua %d %d %s %s 180 >/dev/null 2>&1 &", port,
      pg.port(), engine.shell_quote(stall), engine.shell_quote(stop)))
    local e1, e2
    finally(function()
      os.remove(stall)
      engine.write_file(stop, "")
      if e2 then e2:stop() end
      if e1 then e1:stop() end
      fake1:stop()
      fake2:stop()
      os.execute("rm -rf " .. engine.shell_quote(dir))
    end)
    e1 = engine.start { store = "postgres", config = config(fake1) }
    local db = e1.dsn:match("dbname=(%S+)")
    local dsn2 = string.format("host=127.0.0.1 port=%d dbname=%s user=postgres", tonumber(port), db)
    e2 = assert(engine.eventually(5, function()
      local ok, started = pcall(engine.start, { store = "postgres", dsn = dsn2, config = config(fake2) })
      return ok and started
    end))
    assert.equal("leader", store_of(e1).role)
    setup(e1)
    assert.truthy(engine.eventually(5, function() return e2:get("/v1/datasets/golden").status == 200 end))
    -- the stalled engine's calls are slow: its run is far from done when its lease lapses
    fake2:faults { { delay_ms = 1500, times = 1000 } }
    local id = start_run(e2)
    assert.truthy(engine.eventually(30, function() return results(e1, id) >= 2 end))
    engine.write_file(stall, "")
    local stalled = socket.gettime()
    local lapsed = engine.eventually(30, function()
      return e2:log_text():find("lease on the store lapsed", 1, true) ~= nil
    end)
    assert(lapsed, "the stalled engine did not see its lease lapse:\n" .. e2:log_text())
    local t_lapse = socket.gettime() - stalled
    local calls2 = fake2:stats().requests
    assert.truthy(engine.eventually(40, function()
      return e1:log_text():find("run " .. id .. ": resumed", 1, true) ~= nil
    end), e1:log_text())
    print(string.format("# lease: the stalled engine held its run %.1f s after the stall began (its last job's call "
      .. "of 1.5 s included), the leader resumed it %.1f s after", t_lapse, socket.gettime() - stalled))
    local done = finished(e1, id, 60)
    assert(done, "the leader did not finish the run of the stalled engine:\n" .. e1:log_text())
    assert.equal("finished", done.state)
    assert.matches("run " .. id .. ": resumed", e1:log_text(), 1, true)
    -- while stalled past its lease, the engine made no further call for its run
    assert.equal(calls2, fake2:stats().requests)
    assert.is_true(fake1:stats().requests > 0)
    -- the network moves again: the engine's stalled writes commit (results keyed: stored once),
    -- it beats again, finds the run is no longer its own and leaves it alone
    os.remove(stall)
    assert.truthy(engine.eventually(30, function()
      return e2:log_text():find("run " .. id .. ": no longer this engine's", 1, true) ~= nil
    end), e2:log_text())
    assert.equal(JOBS, results(e1, id))
    assert.equal(calls2, fake2:stats().requests)
    assert.is_nil(e2:log_text():find("run " .. id .. ": finished", 1, true), e2:log_text())
    assert.equal("finished", e1:get("/v1/runs/" .. id).json.state)
  end)
end)

-- Online evaluation of the traces left unevaluated: with several engines the leader claims
-- those whose ingesting engine is gone (traces.engine), each once; no engine re-queues the
-- whole backlog at its start. Counted on the fake LLM: one llm_judge call per trace.
local JUDGE = [[
return function(req, api)
  return '{"pass": true, "score": 0.9, "reason": "fine"}'
end
]]

local function judged_config(fake, judged)
  return string.format([[
scripts = { dirs = { %q } }
provider "fake" { kind = "openai", base_url = "http://%s/v1", default_model = "judge", max_retries = 0, timeout_ms = 20000 }
prompt "support" { evaluators = { %s } }
]], engine.root, fake.addr, judged and '{ "llm_judge", options = { rubric = "the reply is polite" } }' or "")
end

describe("online evaluation on engines sharing a database #heavy", function()
  it("evaluates the backlog an engine gone left once, with two engines starting together", function()
    local fake = fake_llm.start { model = JUDGE }
    -- an engine without the evaluator takes 10 traces and is killed: a backlog of 10
    local a = engine.start { store = "postgres", config = judged_config(fake, false) }
    local dsn = a.dsn
    local batch = {}
    for i = 1, 10 do
      batch[i] = { id = "b-" .. i, prompt = { name = "support" }, input = { variables = { q = "hi" } }, output = "ok " .. i }
    end
    assert.equal(200, a:post("/v1/traces", batch).status)
    a:kill9()
    -- two engines with the judge start together; the judge is slow, so a second evaluation
    -- of a trace would start while the first is under way
    fake:faults { { delay_ms = 300, times = 1000 } }
    local cfg = judged_config(fake, true)
    local e1 = engine.start { store = "postgres", dsn = dsn, config = cfg }
    local e2 = engine.start { store = "postgres", dsn = dsn, config = cfg }
    local all = engine.eventually(60, function()
      for i = 1, 10 do
        local r = e2:get("/v1/traces/b-" .. i)
        if r.status ~= 200 or r.json.verdict == "unevaluated" then return false end
      end
      return true
    end)
    assert(all, "the backlog was not evaluated:\n" .. e1:log_text())
    -- both engines idle: an evaluation queued a second time would have made its call by now
    assert.truthy(engine.eventually(20, function()
      for _, e in ipairs { e1, e2 } do
        local o = e:get("/v1/status").json.evaluation
        if o.backlog ~= 0 or o.running ~= 0 then return false end
      end
      return true
    end))
    local evaluated = e1:get("/v1/status").json.evaluation.evaluated + e2:get("/v1/status").json.evaluation.evaluated
    assert.equal(10, evaluated)
    local calls = e1:get("/v1/llm/calls?caller_kind=evaluator&limit=100").json.items
    assert.equal(10, #calls)
    assert.equal(10, fake:stats().requests)
    e1:stop()
    e2:stop()
    fake:stop()
  end)

  it("hold their online evaluations on an engine whose lease lapsed; the leader evaluates what it left", function()
    local pg = require "spec.helpers.postgres"
    local socket = require "socket"
    local fake1 = fake_llm.start { model = JUDGE }
    local fake2 = fake_llm.start { model = JUDGE }
    local dir = engine.tmpdir()
    local sk = assert(socket.bind("127.0.0.1", 0))
    local _, port = sk:getsockname()
    sk:close()
    local stall, stop = dir .. "/stall", dir .. "/stop"
    os.execute(string.format("lua5.4 spec/helpers/stall_proxy.lua %d %d %s %s 180 >/dev/null 2>&1 &", port,
      pg.port(), engine.shell_quote(stall), engine.shell_quote(stop)))
    local e1, e2
    finally(function()
      os.remove(stall)
      engine.write_file(stop, "")
      if e2 then e2:stop() end
      if e1 then e1:stop() end
      fake1:stop()
      fake2:stop()
      os.execute("rm -rf " .. engine.shell_quote(dir))
    end)
    local one = "\nevaluation = { concurrency = 1 }\n"
    e1 = engine.start { store = "postgres", config = judged_config(fake1, true) .. one }
    local db = e1.dsn:match("dbname=(%S+)")
    local dsn2 = string.format("host=127.0.0.1 port=%d dbname=%s user=postgres", tonumber(port), db)
    e2 = assert(engine.eventually(5, function()
      local ok, started = pcall(engine.start, { store = "postgres", dsn = dsn2, config = judged_config(fake2, true) .. one })
      return ok and started
    end))
    -- the stalled engine's judge is slow and evaluates one read-back batch (32) at a time: most
    -- of its traces still wait when its lease lapses
    local N = 100
    fake2:faults { { delay_ms = 1000, times = 1000 } }
    local batch = {}
    for i = 1, N do
      batch[i] = { id = "h-" .. i, prompt = { name = "support" }, input = { variables = { q = "hi" } }, output = "ok " .. i }
    end
    assert.equal(200, e2:post("/v1/traces", batch).status)
    assert.truthy(engine.eventually(10, function() return fake2:stats().requests >= 1 end))
    engine.write_file(stall, "")
    -- (its status is read from memory: it answers during the stall)
    assert(engine.eventually(30, function() return store_of(e2).lease_fresh == false end),
      "the stalled engine's lease did not lapse:\n" .. e2:log_text())
    local calls2 = fake2:stats().requests
    assert.is_true(calls2 < N, calls2 .. " judge calls before the lapse")
    -- the leader claims the traces the stalled engine left after its lease and evaluates them
    local all = engine.eventually(60, function()
      for i = 1, N do
        local r = e1:get("/v1/traces/h-" .. i)
        if r.status ~= 200 or r.json.verdict == "unevaluated" then return false end
      end
      return true
    end)
    assert(all, "the leader did not evaluate the traces left:\n" .. e1:log_text())
    assert.equal(calls2, fake2:stats().requests)
    -- the network moves again: the held traces are another engine's now, and stay so
    os.remove(stall)
    assert.truthy(engine.eventually(30, function()
      return e2:log_text():find("held while the lease lapsed are another engine's now", 1, true) ~= nil
    end), e2:log_text())
    engine.sleep(1)
    assert.equal(calls2, fake2:stats().requests, e2:log_text())
    -- each trace judged once by the leader, or by the stalled engine before its lease lapsed
    assert.is_true(fake1:stats().requests >= N - calls2,
      "judge calls: " .. fake1:stats().requests .. " + " .. calls2)
  end)
end)
