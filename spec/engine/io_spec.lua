-- Scripts calling out: llm_judge (ratchet.llm.chat) and http_check
-- (ratchet.http.request) attached to a prompt in the real engine, against
-- the real fake LLM server.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"

local MODEL = [[
return function(req, api)
  local user = req.messages[#req.messages].content
  local out = user:match("Output to grade:\n<<<DATA%-%w+\n(.-)\nDATA")
  if out and out:find("polite", 1, true) then return '{"pass": true, "score": 0.9, "reason": "polite"}' end
  return '{"pass": false, "score": 0.1, "reason": "rude"}'
end
]]

local function config(fake, allow)
  return string.format([[
scripts = { dirs = { %q } }
provider "fake" { kind = "openai", base_url = "http://%s/v1", default_model = "judge", max_retries = 1, backoff_base_ms = 10 }
http = { allow = { %s } }
prompt "support" { evaluators = {
  { "llm_judge", options = { rubric = "the reply is polite" } },
} }
prompt "api" { evaluators = {
  { "http_check", options = { base_url = "http://%s/_fake", body_contains = "requests" } },
} }
]], engine.root, fake.addr, allow and string.format("%q", "http://" .. fake.addr .. "/_fake/") or "", fake.addr)
end

local function trace(id, prompt, output)
  return { id = id, prompt = { name = prompt }, input = { variables = { q = "hi" } }, output = output }
end

local function verdict(e, id)
  return engine.eventually(5, function()
    local r = e:get("/v1/traces/" .. id)
    return r.status == 200 and r.json.verdict ~= "unevaluated" and r.json
  end)
end

describe("scripts calling out", function()
  local fake, e
  setup(function()
    fake = fake_llm.start { model = MODEL }
    e = engine.start { config = config(fake, true) }
  end)
  teardown(function()
    e:stop()
    fake:stop()
  end)

  it("llm_judge grades traces through the configured provider", function()
    assert.equal(200, e:post("/v1/traces", { trace("j1", "support", "a polite reply"), trace("j2", "support", "go away") }).status)
    local t1, t2 = verdict(e, "j1"), verdict(e, "j2")
    assert.equal("pass", t1.verdict, engine.json.encode(t1.scores))
    assert.equal("judge: polite", t1.scores[1].reason)
    assert.equal("fail", t2.verdict)
    assert.equal(0.1, t2.scores[1].score)
    local calls = e:get("/v1/llm/calls?caller_kind=evaluator").json.items
    assert.equal(2, #calls)
    assert.equal("llm_judge", calls[1].caller)
  end)

  it("http_check performs the described call under http.allow", function()
    assert.equal(200, e:post("/v1/traces", { trace("h1", "api", '{"method": "GET", "path": "/stats"}'),
                                             trace("h2", "api", '{"method": "GET", "path": "/nowhere"}') }).status)
    local h1, h2 = verdict(e, "h1"), verdict(e, "h2")
    assert.equal("pass", h1.verdict, engine.json.encode(h1.scores))
    assert.equal("GET /stats -> 200", h1.scores[1].reason)
    assert.equal("fail", h2.verdict)
    assert.matches("404", h2.scores[1].reason)
  end)
end)

describe("scripts calling out, refused", function()
  it("a URL outside http.allow is an evaluator error naming the setting", function()
    local fake = fake_llm.start {}
    local e = engine.start { config = config(fake, false) }
    e:post("/v1/traces", { trace("h3", "api", '{"path": "/stats"}') })
    local t = verdict(e, "h3")
    assert.equal("error", t.verdict)
    assert.matches("http.allow", t.scores[1].reason)
    assert.equal(0, fake:stats().requests)
    e:stop()
    fake:stop()
  end)

  it("a stop cancels judge calls that hang, and the engine exits promptly", function()
    local fake = fake_llm.start { model = MODEL }
    local e = engine.start { config = config(fake, true) }
    fake:faults { { stall = true, times = 5 } }
    e:post("/v1/traces", { trace("s1", "support", "polite") })
    assert.truthy(engine.eventually(5, function() return fake:stats().requests >= 1 end))
    local t0 = require("socket").gettime()
    assert.equal(0, e:stop { keep = true })
    assert.truthy(require("socket").gettime() - t0 < 3 * engine.slow)
    assert.matches("cancelled", e:sql("select status from llm_calls"))
    os.execute("rm -rf " .. e.dir)
    fake:stop()
  end)
end)
