-- Online evaluation through the real engine: scores and verdicts after the
-- ack, ?failed=, re-evaluation, the backlog in /v1/status, script errors and
-- kills as results, and configuration errors that stop the start.
local engine = require "spec.helpers.engine"

local function config(extra)
  return string.format([[
scripts = { dirs = { "evaluators_extra", %q } }
prompt "support" {
  evaluators = {
    "json_valid",
    { "contains", name = "mentions_refund", options = { value = "refund" }, required = false },
    { "max_latency", options = { max_ms = 1000 } },
  },
}
%s
]], engine.root, extra or "")
end

local function trace(id, output, latency, extra)
  local t = { id = id, prompt = { name = "support" }, output = output, latency_ms = latency or 10 }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

-- waits until the trace has a verdict other than "unevaluated"; returns it
local function evaluated(e, id)
  return engine.eventually(5, function()
    local r = e:get("/v1/traces/" .. id)
    if r.status == 200 and r.json.verdict ~= "unevaluated" then return r.json end
  end)
end

local function scores_by_name(t)
  local by = {}
  for _, s in ipairs(t.scores) do by[s.evaluator] = s end
  return by
end

describe("online evaluation", function()
  local e, dir
  before_each(function()
    dir = engine.tmpdir()
    os.execute("mkdir -p " .. dir .. "/evaluators_extra/evaluators")
  end)
  after_each(function()
    if e then e:stop() end
    e = nil
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)

  local function start(extra)
    e = engine.start { dir = dir, config = config(extra) }
    return e
  end

  it("scores every trace of a prompt with evaluators and stores a verdict", function()
    start()
    local r = e:post("/v1/traces", {
      trace("good", '{"answer":"we will refund you"}', 20),
      trace("bad-json", "not json at all", 20),
      trace("slow", '{"a":1}', 5000),
      { id = "other", prompt = { name = "unconfigured" }, output = "x" },
    })
    assert.equal(200, r.status)
    local good = evaluated(e, "good")
    assert.equal("pass", good.verdict)
    local s = scores_by_name(good)
    assert.is_true(s.json_valid.pass)
    assert.equal("ok", s.json_valid.status)
    assert.matches("^%x+$", s.json_valid.version)
    assert.equal(16, #s.json_valid.version)
    assert.is_false(s.mentions_refund.required)
    assert.equal("contains", s.mentions_refund.script)

    local bad = evaluated(e, "bad-json")
    assert.equal("fail", bad.verdict)
    assert.is_false(scores_by_name(bad).json_valid.pass)
    assert.matches("not valid JSON", scores_by_name(bad).json_valid.reason)
    -- a required evaluator (max_latency) failing fails the trace
    local slow = evaluated(e, "slow")
    assert.equal("fail", slow.verdict)
    assert.matches("5000 ms", scores_by_name(slow).max_latency.reason)

    -- the prompt is found however the client wrote the object (order, spaces)
    r = e:post("/v1/traces", '{"id":"spaced", "prompt": { "version": 3, "name": "support" }, "output": "nope"}',
      { content_type = "application/json" })
    assert.equal(200, r.status)
    assert.equal("fail", assert(evaluated(e, "spaced"), "never evaluated").verdict)

    -- a prompt without evaluators is never evaluated
    engine.sleep(0.2)
    local other = e:get("/v1/traces/other").json
    assert.equal("unevaluated", other.verdict)
    assert.same({}, other.scores)
  end)

  it("advisory failures do not fail a trace; negative feedback does", function()
    start()
    e:post("/v1/traces", { trace("t1", '{"ok":true}'), trace("t2", '{"ok":true}') })
    local t1 = evaluated(e, "t1")
    assert.equal("pass", t1.verdict)
    assert.is_false(scores_by_name(t1).mentions_refund.pass)
    evaluated(e, "t2")
    assert.equal(200, e:post("/v1/feedback", { trace_id = "t2", thumbs = "down" }).status)
    assert.equal("fail", e:get("/v1/traces/t2").json.verdict)
    -- a retry marks the earlier trace as failed too
    e:post("/v1/traces", trace("t3", '{"ok":true}', 10, { retry_of = "t1" }))
    assert.equal("fail", e:get("/v1/traces/t1").json.verdict)
  end)

  it("lists failed and passing traces with ?failed=", function()
    start()
    e:post("/v1/traces", { trace("p1", '{"a":1}'), trace("f1", "nope"), trace("f2", "nope either") })
    for _, id in ipairs { "p1", "f1", "f2" } do evaluated(e, id) end
    local failed = e:get("/v1/traces?failed=true").json.items
    local ids = {}
    for _, t in ipairs(failed) do
      ids[#ids + 1] = t.id
      assert.equal("fail", t.verdict)
    end
    table.sort(ids)
    assert.same({ "f1", "f2" }, ids)
    local passing = e:get("/v1/traces?failed=false&prompt=support").json.items
    assert.equal(1, #passing)
    assert.equal("p1", passing[1].id)
    local r = e:get("/v1/traces?failed=maybe")
    assert.equal(400, r.status)
    assert.equal("failed", r.json.error.field)
  end)

  it("turns script errors and budget kills into results, and keeps serving", function()
    engine.write_file(dir .. "/evaluators_extra/evaluators/broken.lua", [[
return { name = "broken", description = "raises", evaluate = function(case)
  local t = nil
  return t.field
end }
]])
    engine.write_file(dir .. "/evaluators_extra/evaluators/spin.lua", [[
return { name = "spin", description = "never ends", evaluate = function(case)
  while true do pcall(function() while true do end end) end
end }
]])
    e = engine.start { dir = dir, config = string.format([[
scripts = { dirs = { "evaluators_extra", %q }, evaluator_budget_ms = 50 }
prompt "support" { evaluators = { "broken", { "spin", required = false }, "json_valid" } }
]], engine.root) }
    e:post("/v1/traces", trace("x", '{"a":1}'))
    local t = evaluated(e, "x")
    local s = scores_by_name(t)
    assert.equal("error", s.broken.status)
    assert.matches("broken%.lua:3:", s.broken.reason)
    assert.equal("killed", s.spin.status)
    assert.matches("budget of 50 ms", s.spin.reason)
    assert.is_true(s.json_valid.pass)
    -- a required evaluator that could not judge: verdict "error", not "fail"
    assert.equal("error", t.verdict)
    assert.equal(200, e:get("/healthz").status)
    local st = e:get("/v1/status").json.evaluation
    assert.equal(1, st.killed)
    assert.is_true(st.evaluator_errors >= 2)
  end)

  it("stores a reason with NUL and invalid bytes as U+FFFD, not cut short", function()
    engine.write_file(dir .. "/evaluators_extra/evaluators/odd_reason.lua", [[
return { name = "odd_reason", description = "odd bytes", evaluate = function(case)
  return { pass = false, reason = case.output == "nul" and "a\0b" or case.output == "only" and "\0" or "x\255y" }
end }
]])
    e = engine.start { dir = dir, config = string.format([[
scripts = { dirs = { "evaluators_extra", %q } }
prompt "support" { evaluators = { "odd_reason" } }
]], engine.root) }
    e:post("/v1/traces", { trace("nul", "nul"), trace("only", "only"), trace("inv", "inv") })
    local want = { nul = "a\239\191\189b", only = "\239\191\189", inv = "x\239\191\189y" }
    for id, reason in pairs(want) do
      assert.equal(reason, scores_by_name(evaluated(e, id)).odd_reason.reason, id)
    end
  end)

  it("re-evaluates a window of traces after an evaluator changed", function()
    local file = dir .. "/evaluators_extra/evaluators/strict.lua"
    engine.write_file(file, [[
return { name = "strict", description = "v1 passes all", evaluate = function() return { pass = true } end }
]])
    e = engine.start { dir = dir, config = string.format([[
scripts = { dirs = { "evaluators_extra", %q }, watch = false }
prompt "support" { evaluators = { "strict" } }
]], engine.root) }
    local batch = {}
    for i = 1, 20 do batch[i] = trace("r" .. i, "out " .. i, 10, { timestamp = 1700000000000 + i }) end
    e:post("/v1/traces", batch)
    for i = 1, 20 do assert.equal("pass", evaluated(e, "r" .. i).verdict) end
    local v1 = e:get("/v1/traces/r1").json.scores[1].version

    engine.write_file(file, [[
return { name = "strict", description = "v2 fails all", evaluate = function() return { pass = false, reason = "v2" } end }
]])
    e:signal("HUP")
    assert.truthy(engine.eventually(5, function()
      for _, ev in ipairs(e:get("/v1/status").json.scripts.evaluators) do
        if ev.name == "strict" and ev.version ~= v1 then return true end
      end
    end))
    -- only the window [r6, r15] is re-evaluated
    local r = e:post("/v1/evaluations", { prompt = "support", since = 1700000000006, ["until"] = 1700000000016 })
    assert.equal(202, r.status)
    assert.is_number(r.json.job)
    assert.truthy(engine.eventually(5, function() return e:get("/v1/traces/r15").json.verdict == "fail" end))
    assert.equal("fail", e:get("/v1/traces/r6").json.verdict)
    assert.equal("v2", e:get("/v1/traces/r6").json.scores[1].reason)
    assert.equal("pass", e:get("/v1/traces/r5").json.verdict)
    assert.equal("pass", e:get("/v1/traces/r16").json.verdict)
    assert.equal(v1, e:get("/v1/traces/r16").json.scores[1].version)

    -- the CLI asks the same of the running engine
    local code, out, err = engine.run(string.format("evaluate --url http://%s --prompt support --since 1700000000001",
      e.addr))
    assert.equal(0, code, err)
    assert.matches('"job":', out)
    assert.truthy(engine.eventually(5, function() return e:get("/v1/traces/r1").json.verdict == "fail" end))
    local jobs = e:get("/v1/status").json.evaluation.reevaluations
    assert.is_true(#jobs >= 2)
  end)

  it("answers bad re-evaluation requests with the field at fault", function()
    start()
    local cases = {
      { body = "not json", status = 400 },
      { body = { prompt = 7 }, status = 400, field = "prompt" },
      { body = { prompt = "support", since = "yesterday" }, status = 400, field = "since" },
      { body = { prompt = "support", since = 10, ["until"] = 5 }, status = 400, field = "until" },
      { body = { prompt = "support", only_unevaluated = "yes" }, status = 400, field = "only_unevaluated" },
      { body = { prompt = "support", extra = 1 }, status = 400, field = "extra" },
      { body = { prompt = "nobody-configured-this" }, status = 409, field = "prompt" },
    }
    for _, c in ipairs(cases) do
      local r = e:post("/v1/evaluations", c.body, { content_type = "application/json" })
      assert.equal(c.status, r.status, r.body)
      if c.field then assert.equal(c.field, r.json.error.field, r.body) end
    end
    assert.equal(405, e:get("/v1/evaluations").status)
    local code, _, err = engine.run(string.format("evaluate --url http://%s --prompt nobody", e.addr))
    assert.equal(3, code)
    assert.matches("409", err)
    code, _, err = engine.run("evaluate")
    assert.equal(3, code)
    assert.matches("%-%-prompt is required", err)
    code, _, err = engine.run("evaluate --prompt support --until yesterday")
    assert.equal(3, code)
    assert.matches("%-%-until 'yesterday' is not an RFC 3339 time", err)
    -- RFC 3339 times and --unevaluated reach the engine as a job
    code, _, err = engine.run(string.format("evaluate --url http://%s --prompt support --unevaluated "
      .. "--since 2026-01-01T00:00:00Z --until 2100-01-01T00:00:00Z", e.addr))
    assert.equal(0, code, err)
    local jobs = e:get("/v1/status").json.evaluation.reevaluations
    assert.is_true(jobs[#jobs].only_unevaluated)
  end)

  it("shows the backlog in /v1/status and evaluates traces left over at the last stop", function()
    start("evaluation = { max_backlog = 5 }")
    local st = e:get("/v1/status")
    assert.equal(200, st.status)
    assert.equal(5, st.json.evaluation.max_backlog)
    assert.is_number(st.json.evaluation.backlog)
    -- pacing: the default share, and not held back on an idle engine
    assert.equal(10, st.json.evaluation.busy_share)
    assert.is_false(st.json.evaluation.limited)
    assert.equal(0, st.json.evaluation.held_back)
    -- 40 traces at once: the backlog takes 5, the rest stay unevaluated
    local batch = {}
    for i = 1, 40 do batch[i] = trace("b" .. i, '{"a":1}') end
    assert.equal(200, e:post("/v1/traces", batch).status)
    engine.eventually(5, function() return e:get("/v1/status").json.evaluation.running == 0 end)
    st = e:get("/v1/status").json.evaluation
    assert.is_true(st.dropped > 0, "nothing was dropped")
    assert.equal(40, st.enqueued + st.dropped)
    local unevaluated = tonumber(e:sql("SELECT count(*) FROM traces WHERE verdict IS NULL"))
    assert.is_true(unevaluated > 0)
    e:stop { keep = true }
    -- at the next start they are picked up
    e = engine.start { dir = dir, config = config("evaluation = { max_backlog = 1000 }") }
    assert.truthy(engine.eventually(10, function()
      return e:sql("SELECT count(*) FROM traces WHERE verdict IS NULL") == "0"
    end))
  end)

  it("refuses to start when a prompt names an evaluator that does not exist", function()
    local code, log = engine.start { dir = dir, expect_fail = true, config = string.format([[
scripts = { dirs = { %q } }
prompt "support" {
  evaluators = { "json_valid", "no_such_thing" },
}
]], engine.root) }
    assert.equal(3, code)
    assert.matches("ratchet%.conf:%d+: prompt 'support': no evaluator 'no_such_thing'", log)
  end)

  it("rejects malformed prompt declarations and evaluation settings with the line", function()
    local bad = {
      { 'prompt "x" { evaluators = { { "json_valid", bogus = 1 } } }', "unknown key 'bogus'" },
      { 'prompt "x" { evaluators = { { "json_valid", required = "yes" } } }', "'required' must be true or false" },
      { 'prompt "x" { evaluators = { { "json_valid", options = { 1, 2 } } } }', "'options' must be a table of named options" },
      { 'prompt "x" { evaluators = { "a", "a" } }', "two evaluators are named 'a'" },
      { 'prompt "x" { evaluators = { "../etc" } }', "not an evaluator name" },
      { 'prompt "x" { evaluaters = {} }', "unknown key 'evaluaters'" },
      { 'prompt "x" {}\nprompt "x" {}', "declared twice" },
      { 'prompt "bad name!" {}', "not a prompt name" },
      { 'prompt "x" { evaluators = { { "regex", options = { pattern = function() end } } } }', "a function cannot be an option" },
      { 'prompt "x" { evaluators = { { "json_valid", options = { s = json("{oops") } } } }', "json%(%): not valid JSON" },
      { 'evaluation = { busy_share = 0 }', "'evaluation%.busy_share' must be between 1 and 100 %(got 0%)" },
      { 'evaluation = { busy_share = "half" }', "'evaluation%.busy_share' must be an integer" },
    }
    for i, c in ipairs(bad) do
      local conf = dir .. "/bad" .. i .. ".conf"
      engine.write_file(conf, "\n" .. c[1] .. "\n")
      local code, _, err = engine.run("check -c " .. engine.shell_quote(conf))
      assert.equal(3, code, c[1])
      assert.matches("bad" .. i .. "%.conf:%d+: .*" .. c[2], err)
    end
  end)
end)

describe("ratchet check", function()
  local dir
  before_each(function()
    dir = engine.tmpdir()
    os.execute("mkdir -p " .. dir .. "/evaluators " .. dir .. "/policies " .. dir .. "/scripts")
  end)
  after_each(function() os.execute("rm -rf " .. engine.shell_quote(dir)) end)

  it("passes the shipped scripts and the example config", function()
    local code, out, err = engine.run("check -s " .. engine.shell_quote(engine.root))
    assert.equal(0, code, err)
    assert.matches("^ok: built%-in defaults, %d+ evaluators", out)
    code, out, err = engine.run("check -c etc/ratchet.conf -s " .. engine.shell_quote(engine.root))
    assert.equal(0, code, err)
  end)

  it("reports every broken script with file:line and exits 3", function()
    engine.write_file(dir .. "/evaluators/syntax.lua", "return {\n  name = 'syntax',\n  evaluate = function( end\n}\n")
    engine.write_file(dir .. "/evaluators/contract.lua", "return { name = 'contract', description = 'no evaluate' }\n")
    engine.write_file(dir .. "/evaluators/misnamed.lua",
      "return { name = 'other', description = '', evaluate = function() end }\n")
    engine.write_file(dir .. "/evaluators/global.lua", "x = 1\nreturn {}\n")
    engine.write_file(dir .. "/policies/broken.lua", "return function(\n")
    engine.write_file(dir .. "/scripts/fine.lua", "return {}\n")
    engine.write_file(dir .. "/ratchet.conf", 'prompt "p" { evaluators = { "syntax", "json_valid" } }\n')
    local code, out, err = engine.run("check -q -c " .. engine.shell_quote(dir .. "/ratchet.conf") .. " -s "
      .. engine.shell_quote(engine.root))
    assert.equal(3, code)
    assert.equal("", out)
    assert.matches("evaluators/syntax%.lua:3: ", err)
    assert.matches("evaluators/contract%.lua: not an evaluator: 'evaluate' must be a function", err)
    assert.matches("misnamed%.lua: the evaluator is named 'other' but its file is misnamed%.lua", err)
    assert.matches("global%.lua:1: assignment to undeclared global 'x'", err)
    assert.matches("policies/broken%.lua:2: ", err)
    -- the prompt names an evaluator that failed to load
    assert.matches("ratchet%.conf:1: prompt 'p': no evaluator 'syntax'", err)
    assert.matches("6 errors", err)
  end)

  it("a script folder earlier in the list overrides a shipped evaluator by name", function()
    engine.write_file(dir .. "/evaluators/json_valid.lua",
      "return { name = 'json_valid', description = 'mine', evaluate = function() return { pass = true } end }\n")
    local code, _, err = engine.run("check -s " .. engine.shell_quote(dir))
    assert.equal(0, code, err)
    local e = engine.start { config = string.format('scripts = { dirs = { %q, %q } }', dir, engine.root) }
    local st = e:get("/v1/status").json.scripts
    local path
    for _, ev in ipairs(st.evaluators) do if ev.name == "json_valid" then path = ev.path end end
    assert.equal(dir .. "/evaluators/json_valid.lua", path)
    e:stop()
  end)

  it("answers usage errors with exit 3", function()
    local code, _, err = engine.run("check --bogus")
    assert.equal(3, code)
    assert.matches("usage: ratchet check", err)
    code = engine.run("check -c /nonexistent/ratchet.conf")
    assert.equal(3, code)
  end)
end)

describe("window statistics", function()
  -- The totals and the per-evaluator figures of GET /v1/prompts/{name}/metrics
  -- (what the trigger and rollout policies get) come from one snapshot: with
  -- one required evaluator and no feedback, a trace fails exactly when its
  -- json_valid score fails. Read in two transactions while traces kept
  -- arriving, they disagreed ("319 of 2659 traces failed; json_schema 325").
  it("are read in one transaction, so totals and per-evaluator counts agree under ingest", function()
    local e = engine.start { config = string.format([[
scripts = { dirs = { %q } }
prompt "support" { evaluators = { "json_valid" } }
]], engine.root) }
    assert.equal(201, e:post("/v1/prompts", { name = "support" }).status)
    assert.equal(201, e:post("/v1/prompts/support/versions",
      { messages = { { role = "user", content = "{{q}}" } } }).status)
    -- a background writer: NDJSON batches of half valid, half broken JSON outputs
    local dir = engine.tmpdir()
    local lines = {}
    for i = 1, 200 do
      lines[#lines + 1] = engine.json.encode { prompt = { name = "support", version = 1 },
        output = i % 2 == 0 and '{"ok":true}' or "{broken" }
    end
    engine.write_file(dir .. "/batch.ndjson", table.concat(lines, "\n") .. "\n")
    local load = io.popen(string.format(
      "for i in $(seq 1 60); do curl -s -o /dev/null -H 'Content-Type: application/x-ndjson' --data-binary @%s " ..
      "http://%s/v1/traces; done; echo done", engine.shell_quote(dir .. "/batch.ndjson"), e.addr))
    local reads, bad, tries = 0, {}, 0
    -- until 150 reads saw scores: on a loaded machine the first scores may come after 400 reads
    while reads < 150 and tries < 20000 do
      tries = tries + 1
      local r = e:get("/v1/prompts/support/metrics?version=1")
      assert.equal(200, r.status, r.body)
      local v = r.json.versions[1]
      local jv = v.evaluators.json_valid
      if jv then
        reads = reads + 1
        if v.failures ~= jv.failures or v.evaluated ~= jv.n then
          bad[#bad + 1] = string.format("%d of %d failed; json_valid %d of %d", v.failures, v.evaluated, jv.failures, jv.n)
        end
      end
    end
    assert.equal("done", (load:read("a"):gsub("%s+$", "")))
    load:close()
    assert.is_true(reads > 100, "only " .. reads .. " reads saw scores")
    assert.same({}, bad)
    e:stop()
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)
end)
