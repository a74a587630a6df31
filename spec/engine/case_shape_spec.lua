-- One shape of `case` everywhere (docs/evaluators.md#the-case): the same
-- evaluator, written to the documentation, judges a trace online, a dataset
-- case in `ratchet eval`, a held-out failure in a gate run and a canary's
-- trace, and sees the same fields each time. (Gate runs used to hand it the
-- bare variables as case.input, so an evaluator reading
-- case.input.variables judged held-out failures without their input.)
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"

local MODEL = engine.read_file("spec/fixtures/instructed_model.lua")

-- The evaluator describes what it was handed, by type, and passes only when
-- the documented input is there.
local SHAPE = [[
local function keys(t, skip)
  local out = {}
  for k in pairs(t) do if not skip[k] then out[#out + 1] = tostring(k) end end
  table.sort(out)
  return table.concat(out, ",")
end
return {
  name = "shape",
  description = "describes the case it is given",
  evaluate = function(case)
    local input, trace = case.input or {}, case.trace or {}
    local vars = type(input) == "table" and input.variables or nil
    local text = type(vars) == "table" and vars.text or nil
    -- expected and sample exist only where they mean something (dataset
    -- cases; run samples), group and stratum only on some run cases
    local d = string.format(
      "case{%s} input{%s} input.variables.text=%s input.messages=%s output=%s trace{%s} " ..
      "trace.input.variables=%s trace.latency_ms=%s trace.usage=%s trace.tool_calls=%s trace.metadata=%s " ..
      "trace.feedback=%s id=%s source=%s version=%s tags=%s",
      keys(case, { expected = true, sample = true, group = true, stratum = true }),
      type(input) == "table" and keys(input, {}) or type(input), type(text), type(input.messages), type(case.output),
      -- a trace's own bookkeeping: there when it was ingested (or the run
      -- case came from one), absent from a fresh sample of a dataset case
      keys(trace, { id = true, verdict = true, model = true, finish_reason = true, prompt = true,
        timestamp = true, error = true, retry_of = true }),
      type((trace.input or {}).variables), type(trace.latency_ms), type(trace.usage), type(trace.tool_calls),
      type(trace.metadata), type(trace.feedback), type(case.id), type(case.source), type(case.version),
      type(case.tags))
    return { pass = text ~= nil, reason = d }
  end,
}
]]

local function version(system)
  return { messages = { { role = "system", content = system }, { role = "user", content = "{{text}}" } },
           model = { provider = "fake", model = "m-1" } }
end

local function run(e, body)
  local r = e:post("/v1/runs", body)
  assert.equal(201, r.status, r.body)
  local done = engine.eventually(20, function()
    local g = e:get("/v1/runs/" .. r.json.id)
    if g.json.state ~= "running" then return g.json end
  end)
  assert(done, "the run did not finish")
  return done
end

-- the reasons the shape evaluator gave in a run, per source
local function run_reasons(e, id)
  local out = {}
  for _, x in ipairs(e:get("/v1/runs/" .. id .. "/results?limit=100").json.items) do
    out[#out + 1] = x.verdicts[1].reason
  end
  return out
end

local function trace_reason(e, id)
  local t = engine.eventually(10, function()
    local r = e:get("/v1/traces/" .. id).json
    if r.scores and #r.scores > 0 then return r end
  end)
  assert(t, "trace " .. id .. " was not evaluated")
  assert.is_true(t.scores[1].pass, t.scores[1].reason)
  return t.scores[1].reason
end

describe("the case an evaluator judges", function()
  local fake, e, dir

  before_each(function()
    fake = fake_llm.start { model = MODEL }
    dir = engine.tmpdir()
    os.execute("mkdir -p " .. engine.shell_quote(dir .. "/evaluators"))
    engine.write_file(dir .. "/evaluators/shape.lua", SHAPE)
    e = engine.start { config = string.format([[
scripts = { dirs = { %q, %q } }
provider "fake" { kind = "openai", base_url = %q, default_model = "m-1", max_retries = 1, timeout_ms = 3000 }
prompt "shape" { evaluators = { "shape" } }
]], dir, engine.root, "http://" .. fake.addr .. "/v1") }
    assert.equal(201, e:post("/v1/prompts", { name = "shape" }).status)
    assert.equal(201, e:post("/v1/prompts/shape/versions", version("Repeat the text.")).status)
    assert.equal(201, e:post("/v1/prompts/shape/versions", version("Answer in uppercase.")).status)
    assert.equal(200, e:post("/v1/prompts/shape/promote", { version = 1 }).status)
    local r = e:post("/v1/datasets/golden/cases", '{"id":"g1","variables":{"text":"hello"},"expected":"HELLO"}\n',
      { content_type = "application/x-ndjson" })
    assert.equal(200, r.status, r.body)
  end)

  after_each(function()
    e:stop()
    fake:stop()
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)

  it("has the same shape online, in ratchet eval, in a gate run and in a canary", function()
    local function trace(id, v)
      return { id = id, prompt = { name = "shape", version = v },
        input = { variables = { text = "hi" }, messages = { { role = "user", content = "hi" } } },
        output = "hi", latency_ms = 12, usage = { input_tokens = 3, output_tokens = 1 },
        tool_calls = { { name = "lookup", arguments = { q = "hi" } } },
        metadata = { segment = "a" } }
    end
    -- online
    assert.equal(200, e:post("/v1/traces", trace("online-1", 1)).status)
    local online = trace_reason(e, "online-1")
    assert.matches("input.variables.text=string", online, 1, true)
    -- ratchet eval (the CLI against the running engine), on the golden set
    local code, out, err = engine.run(string.format(
      "eval --url http://%s --prompt shape --baseline 1 --candidate 2 --dataset golden --json", e.addr))
    assert(code == 0 or code == 2, err .. out)
    local ran = engine.json.decode(out)
    for _, reason in ipairs(run_reasons(e, ran.id)) do assert.equal(online, reason) end
    -- a gate run, as the loop starts it: held-out failures from traces
    local g = run(e, { prompt = "shape", baseline = 1, candidates = { 2 }, kind = "gate",
      cases = { { id = "trace:online-1", trace_id = "online-1", variables = { text = "hi" }, tags = { "failed" },
        metadata = { segment = "a" } } } })
    local gate = run_reasons(e, g.id)
    assert.equal(2, #gate)
    for _, reason in ipairs(gate) do assert.equal(online, reason) end
    -- a canary's traces, judged online
    assert.equal(200, e:post("/v1/prompts/shape/canary", { version = 2, share = 0.5 }).status)
    assert.equal(200, e:post("/v1/traces", trace("canary-1", 2)).status)
    assert.equal(online, trace_reason(e, "canary-1"))
  end)
end)
