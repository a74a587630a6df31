-- `ratchet status` finds what needs a look beyond errors — a run stuck, a
-- run that ended incomplete, a daily LLM budget used up — exits 3, and
-- prints with each problem the command that shows more.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"

local function status(e, args)
  return engine.run("status --url http://" .. e.addr .. " " .. (args or ""))
end

describe("ratchet status finds", function()
  local fake, e
  before_each(function()
    fake = fake_llm.start {}
    e = engine.start { config = string.format([[
scripts = { dirs = { %q } }
provider "fake" { kind = "openai", base_url = %q, default_model = "m", max_retries = 0, timeout_ms = 60000 }
prompt "p" { evaluators = { "json_valid" } }
]], engine.root, "http://" .. fake.addr .. "/v1") }
    assert.equal(201, e:post("/v1/prompts", { name = "p" }).status)
    for _, text in ipairs({ "One.", "Two." }) do
      assert.equal(201, e:post("/v1/prompts/p/versions", { messages = { { role = "system", content = text },
        { role = "user", content = "{{q}}" } }, model = { provider = "fake" } }).status)
    end
    local lines = {}
    for i = 1, 3 do lines[i] = string.format('{"id":"c%d","variables":{"q":"question %d"}}', i, i) end
    assert.equal(200, e:post("/v1/datasets/d/cases", table.concat(lines, "\n") .. "\n",
                             { content_type = "application/x-ndjson" }).status)
  end)
  after_each(function()
    e:stop()
    fake:stop()
  end)

  it("a run that records no result for --stuck-after seconds, with the command to look at it", function()
    fake:faults { { stall = true }, { stall = true }, { stall = true }, { stall = true } }
    local r = e:post("/v1/runs", { prompt = "p", baseline = 1, candidates = { 2 }, dataset = "d", concurrency = 1 })
    assert.equal(201, r.status, r.body)
    local id = r.json.id
    local pid = id:gsub("%p", "%%%0")
    -- idle_s grows while the model stalls: wait until it shows, then ask
    assert.truthy(engine.eventually(10, function()
      local active = e:get("/v1/status").json.runs.active
      return active[1] and active[1].idle_s >= 1
    end))
    local code, out = status(e, "--stuck-after 1")
    assert.equal(3, code, out)
    assert.matches("run " .. pid .. " %(prompt p%) is stuck: no result recorded for %d+s %(0 of 6 done, 1 in flight%)", out)
    assert.matches("more: curl %-s 'http://" .. e.addr:gsub("%p", "%%%0") .. "/v1/runs/" .. pid .. "'", out)
    -- the default is 15 minutes: not stuck yet
    code, out = status(e)
    assert.equal(0, code, out)
    local v = engine.json.decode((select(2, status(e, "--stuck-after 1 --json"))))
    assert.equal(1, #v.problems)
    assert.matches("is stuck", v.problems[1].problem)
    assert.matches("/v1/runs/" .. pid, v.problems[1].more)
  end)

  it("a run that ended incomplete in the last day (its budget ran out), with its full id", function()
    local r = e:post("/v1/runs", { prompt = "p", baseline = 1, candidates = { 2 }, dataset = "d", budget = { calls = 2 } })
    assert.equal(201, r.status, r.body)
    local id = r.json.id
    local pid = id:gsub("%p", "%%%0")
    assert.truthy(engine.eventually(20, function() return e:get("/v1/runs/" .. id).json.state == "incomplete" end))
    local code, out = status(e)
    assert.equal(3, code, out)
    assert.matches("run " .. pid .. " %(eval of prompt p%) ended incomplete %d+s ago: the run's call budget %(2%) would be "
      .. "exceeded", out)
    assert.matches("more: curl %-s '[^']*/v1/runs/" .. pid .. "'", out)
  end)

  it("not a run a human cancelled", function()
    fake:stop()
    fake = fake_llm.start { latency_ms = 300 }
    e:stop()
    e = engine.start { config = string.format([[
scripts = { dirs = { %q } }
provider "fake" { kind = "openai", base_url = %q, default_model = "m", max_retries = 0 }
prompt "p" { evaluators = { "json_valid" } }
]], engine.root, "http://" .. fake.addr .. "/v1") }
    assert.equal(201, e:post("/v1/prompts", { name = "p" }).status)
    for _, text in ipairs({ "One.", "Two." }) do
      assert.equal(201, e:post("/v1/prompts/p/versions", { messages = { { role = "system", content = text } },
        model = { provider = "fake" } }).status)
    end
    assert.equal(200, e:post("/v1/datasets/d/cases", '{"id":"c1","variables":{}}\n{"id":"c2","variables":{}}\n',
                             { content_type = "application/x-ndjson" }).status)
    local r = e:post("/v1/runs", { prompt = "p", baseline = 1, candidates = { 2 }, dataset = "d", concurrency = 1, k = 3 })
    assert.equal(201, r.status, r.body)
    assert.equal(202, e:post("/v1/runs/" .. r.json.id .. "/cancel", {}).status)
    assert.truthy(engine.eventually(20, function() return e:get("/v1/runs/" .. r.json.id).json.state == "incomplete" end))
    assert.equal("cancelled", e:get("/v1/runs?limit=1").json.items[1].error)
    local code, out = status(e)
    assert.equal(0, code, out)
  end)

  it("a daily LLM budget used up, with the refusal", function()
    e:stop()
    e = engine.start { config = string.format([[
provider "fake" { kind = "openai", base_url = %q, default_model = "m", max_retries = 0 }
llm = { daily_calls = 1 }
]], "http://" .. fake.addr .. "/v1") }
    local chat = { provider = "fake", messages = { { role = "user", content = "hi" } } }
    assert.equal(200, e:post("/v1/llm/chat", chat).status)
    assert.is_true(e:post("/v1/llm/chat", chat).status >= 400)
    local code, out = status(e)
    assert.equal(3, code, out)
    assert.matches("LLM daily budget used up %(calls 1 of 1%); 1 call refused today, the last: the daily call budget "
      .. "%(1%) would be exceeded", out)
    assert.matches("more: curl %-s '[^']*/v1/llm/calls%?limit=20'; raise llm%.daily_%* in the config, or wait for "
      .. "00:00 UTC", out)
    assert.matches("daily budget: 1 calls%)", out)
  end)
end)
