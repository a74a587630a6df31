-- The error rule of the Lua API (docs/lua-api.md#the-error-rule): a
-- programming error raises, with the caller's file:line and the usage; a
-- runtime failure returns nil, message, code. Each function's failure modes,
-- through the busted module (ratchet.testing: the runtime the engine runs),
-- and through the engine for what only the engine has: the request checks of
-- ratchet.llm.chat and ratchet.http.request, and a stop cutting a sleep short.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local testing = require "spec.helpers.sandbox"

-- Each function runs one call; `got` returns what it returned, as text.
local PROBE = [[
local rex = require "rex_pcre2"
local cjson = require "cjson"
local function got(...)
  local r = table.pack(...)
  return table.concat({ r.n, tostring(r[1]), tostring(r[2]), tostring(r[3]) }, " | ")
end
return {
  log_none = function() ratchet.log.info() end,
  log_table = function() return got(ratchet.log.debug({ 1 })) end,
  encode_none = function() return ratchet.json.encode() end,
  encode_function = function() return ratchet.json.encode({ f = tostring }) end,
  encode_nan = function() return ratchet.json.encode(0 / 0) end,
  encode_cycle = function() local t = {} t.t = t return ratchet.json.encode(t) end,
  encode_ok = function() return got(ratchet.json.encode({ a = ratchet.json.array() })) end,
  decode_bad = function() return got(ratchet.json.decode("{bad")) end,
  decode_deep = function() return got(ratchet.json.decode(string.rep("[", 1001) .. string.rep("]", 1001))) end,
  decode_huge = function() return got(ratchet.json.decode("[1e400]")) end,
  decode_table = function() return ratchet.json.decode({}) end,
  decode_none = function() return ratchet.json.decode() end,
  decode_number = function() return got(ratchet.json.decode(42)) end,
  array_number = function() return ratchet.json.array(5) end,
  array_metatable = function() return ratchet.json.array(setmetatable({}, {})) end,
  array_ok = function() return got(ratchet.json.encode(ratchet.json.array({}))) end,
  is_array_any = function() return got(ratchet.json.is_array(), ratchet.json.is_array(5),
    ratchet.json.is_array(ratchet.json.decode("[]"))) end,
  time_id = function() return got(math.type(ratchet.time()), #ratchet.id()) end,
  sleep_string = function() return ratchet.sleep("soon") end,
  sleep_negative = function() return ratchet.sleep(-1) end,
  sleep_too_long = function() return ratchet.sleep(3600001) end,
  sleep_wrapped = function() return coroutine.wrap(function() return ratchet.sleep(1) end)() end,
  sleep_ok = function() return got(ratchet.sleep(1)) end,
  llm_number = function() return ratchet.llm.chat(5) end,
  llm_function = function() return ratchet.llm.chat({ messages = { { role = "user", content = tostring } } }) end,
  llm_wrapped = function() return coroutine.wrap(function() return ratchet.llm.chat({}) end)() end,
  llm_call = function() return got(ratchet.llm.chat({ messages = { { role = "user", content = "hi" } } })) end,
  http_none = function() return ratchet.http.request() end,
  http_call = function() return got(ratchet.http.request({ url = "https://api.test/x" })) end,
  find_malformed = function() return ("x"):find("[") end,
  gsub_bad_replacement = function() return ("abc"):gsub("b", { b = {} }) end,
  rep_too_large = function() return ("x"):rep(1e10) end,
  sort_bad_order = function() local t = { 3, 1, 2 } table.sort(t, 5) end,
  rex_malformed = function() return rex.find("x", "(") end,
  rex_limit = function() return rex.find(("a"):rep(30) .. "!", "(?:a|aa)+$") end,
  cjson_bad = function() return cjson.decode("{bad") end,
}
]]

local dir = engine.tmpdir()
local path = dir .. "/probe.lua"
engine.write_file(path, PROBE)

local function policy(stubs)
  local p, err = testing.load_policy(path, stubs)
  assert(p, err)
  return p
end

-- the error a call raised, or a failed assertion when it returned
local function raised(p, fn)
  local ok, err = pcall(p.call, p, fn, 0)
  assert.is_false(ok, fn .. " returned instead of raising")
  return err
end

-- "probe.lua:LINE: USAGE: WHY", the shape every programming error has
local function usage_error(err, usage, why)
  assert.matches("probe%.lua:%d+: " .. usage:gsub("%p", "%%%0") .. ": " .. why, err)
end

describe("the Lua API's error rule, through the busted module", function()
  local p = policy()

  it("ratchet.log.*: a missing message raises; any value is logged", function()
    usage_error(raised(p, "log_none"), "ratchet.log.info(message)", "the message is missing")
    assert.equal("0 | nil | nil | nil", p:call("log_table", 0))
  end)

  it("ratchet.json.encode: a value JSON cannot hold raises, quoting the usage", function()
    usage_error(raised(p, "encode_none"), "ratchet.json.encode(value)", "the value is missing")
    usage_error(raised(p, "encode_function"), "ratchet.json.encode(value)", "")
    usage_error(raised(p, "encode_nan"), "ratchet.json.encode(value)", "cannot encode NaN or infinity")
    usage_error(raised(p, "encode_cycle"), "ratchet.json.encode(value)", "nested deeper than")
    assert.equal('1 | {"a":[]} | nil | nil', p:call("encode_ok", 0))
  end)

  it("ratchet.json.decode: text that is not JSON is nil, message, 'bad_json'; a wrong type raises", function()
    assert.matches("^3 | nil | not valid JSON: [^|]+ | bad_json$", p:call("decode_bad", 0))
    assert.matches("^3 | nil | not valid JSON: nested deeper than 1000 levels | bad_json$", p:call("decode_deep", 0))
    assert.matches("^3 | nil | not valid JSON: a number is too large for a double | bad_json$", p:call("decode_huge", 0))
    usage_error(raised(p, "decode_table"), "ratchet.json.decode(text)", "text must be a string %(got table%)")
    usage_error(raised(p, "decode_none"), "ratchet.json.decode(text)", "text must be a string %(got no value%)")
    assert.equal("1 | 42 | nil | nil", p:call("decode_number", 0))
  end)

  it("ratchet.json.array and is_array", function()
    usage_error(raised(p, "array_number"), "ratchet.json.array([t])", "t must be a table %(got number%)")
    usage_error(raised(p, "array_metatable"), "ratchet.json.array([t])", "t already has a metatable")
    assert.equal("1 | [] | nil | nil", p:call("array_ok", 0))
    assert.equal("3 | false | false | true", p:call("is_array_any", 0))
  end)

  it("ratchet.time and ratchet.id cannot fail", function()
    assert.equal("2 | integer | 36 | nil", p:call("time_id", 0))
  end)

  it("ratchet.sleep: a bad ms or a call where nothing can wait raises; a whole sleep returns true", function()
    usage_error(raised(p, "sleep_string"), "ratchet.sleep(ms)", "ms must be an integer number of milliseconds %(got string%)")
    usage_error(raised(p, "sleep_negative"), "ratchet.sleep(ms)", "ms must be from 0 to 3600000 %(got %-1%)")
    usage_error(raised(p, "sleep_too_long"), "ratchet.sleep(ms)", "ms must be from 0 to 3600000 %(got 3600001%)")
    usage_error(raised(p, "sleep_wrapped"), "ratchet.sleep(ms)", "only an invocation's own coroutine can wait")
    assert.equal("1 | true | nil | nil", p:call("sleep_ok", 0))
    -- at load time: the file does not load, and says why
    local f = dir .. "/sleepy.lua"
    engine.write_file(f, "ratchet.sleep(1)\nreturn {}\n")
    local q, err = testing.load_policy(f)
    assert.is_nil(q)
    assert.matches("sleepy%.lua:1: ratchet%.sleep%(ms%): only an invocation's own coroutine can wait %(not at load time", err)
  end)

  it("ratchet.llm.chat and ratchet.http.request: a request that is not a table raises; no engine is 'unavailable'", function()
    usage_error(raised(p, "llm_number"), "ratchet.llm.chat{...}", "the request must be a table %(got number%)")
    usage_error(raised(p, "llm_function"), "ratchet.llm.chat{...}", "the request cannot be sent as JSON")
    usage_error(raised(p, "llm_wrapped"), "ratchet.llm.chat{...}", "only an invocation's own coroutine can wait")
    usage_error(raised(p, "http_none"), "ratchet.http.request{...}", "the request must be a table %(got no value%)")
    assert.equal("3 | nil | ratchet.llm.chat{...} is not available here (no engine) | unavailable", p:call("llm_call", 0))
    assert.equal("3 | nil | ratchet.http.request{...} is not available here (no engine) | unavailable",
      p:call("http_call", 0))
  end)

  it("ratchet.llm.chat and ratchet.http.request under busted: a stub's failure passes through; a stub that raises is 'stub_error'", function()
    local q = policy {
      llm = function() return nil, "HTTP 429 from provider 'fake'", "rate_limited" end,
      http = function() error("the stub broke") end,
    }
    assert.equal("3 | nil | HTTP 429 from provider 'fake' | rate_limited", q:call("llm_call", 0))
    assert.matches("^3 | nil | [^|]*the stub broke | stub_error$", q:call("http_call", 0))
  end)

  it("the libraries keep their own contract: they raise as Lua's own do, with the caller's line", function()
    -- the stoppable pattern functions run in a scratch state; their errors name the script's line
    assert.matches("probe%.lua:%d+: malformed pattern %(missing ']'%)", raised(p, "find_malformed"))
    assert.matches("probe%.lua:%d+: invalid replacement value %(a table%)", raised(p, "gsub_bad_replacement"))
    assert.matches("probe%.lua:%d+: resulting string too large", raised(p, "rep_too_large"))
    assert.matches("probe%.lua:%d+: bad argument #2 to 'sort'", raised(p, "sort_bad_order"))
    assert.matches("probe%.lua:%d+: missing closing parenthesis", raised(p, "rex_malformed"))
    assert.matches("probe%.lua:%d+: error PCRE2_ERROR_MATCHLIMIT", raised(p, "rex_limit"))
    assert.matches("Expected object key string", raised(p, "cjson_bad"))
  end)
end)

-- Through the engine: an evaluator that runs one probe per trace, its
-- outcome as the score's reason.
local ENGINE_PROBE = [[
local function got(...)
  local r = table.pack(...)
  return table.concat({ r.n, tostring(r[1]), tostring(r[2]), tostring(r[3]) }, " | ")
end
local function caught(f, request)
  local ok, err = pcall(function() return f(request) end)
  return ok and "returned" or "raised: " .. tostring(err)
end
local probes = {
  llm_unknown_field = function() return caught(ratchet.llm.chat, { messages = { { role = "user", content = "x" } }, temprature = 0 }) end,
  llm_bad_role = function() return caught(ratchet.llm.chat, { messages = { { role = "robot", content = "x" } } }) end,
  llm_bad_temperature = function() return caught(ratchet.llm.chat, { messages = { { role = "user", content = "x" } }, temperature = 3 }) end,
  llm_empty_model = function() return caught(ratchet.llm.chat, { messages = { { role = "user", content = "x" } }, model = "" }) end,
  llm_no_provider = function() return got(ratchet.llm.chat { provider = "nope", messages = { { role = "user", content = "x" } } }) end,
  llm_ok = function() local r, err = ratchet.llm.chat { messages = { { role = "user", content = "x" } } } return r and r.text or err end,
  http_unknown_field = function() return caught(ratchet.http.request, { url = "http://x.test/", verb = "GET" }) end,
  http_bad_url = function() return caught(ratchet.http.request, { url = 5 }) end,
  http_bad_method = function() return caught(ratchet.http.request, { url = "http://x.test/", method = "BREW" }) end,
  http_bad_header = function() return caught(ratchet.http.request, { url = "http://x.test/", headers = { A = "1\r\nB: 2" } }) end,
  http_bad_timeout = function() return caught(ratchet.http.request, { url = "http://x.test/", timeout_ms = 5 }) end,
  http_not_allowed = function() return got(ratchet.http.request { url = "http://elsewhere.test/x" }) end,
  sleep_long = function() return got(ratchet.sleep(60000)) end,
}
return {
  name = "probe",
  description = "runs the API call the trace's output names",
  evaluate = function(case)
    return { pass = true, reason = probes[case.output]() }
  end,
}
]]

describe("the Lua API's error rule, through the engine", function()
  local fake, e, scripts
  setup(function()
    fake = fake_llm.start {}
    scripts = engine.tmpdir()
    os.execute("mkdir -p " .. engine.shell_quote(scripts .. "/evaluators"))
    engine.write_file(scripts .. "/evaluators/probe.lua", ENGINE_PROBE)
    e = engine.start { config = string.format([[
scripts = { dirs = { %q, %q } }
provider "fake" { kind = "openai", base_url = "http://%s/v1", default_model = "m", max_retries = 0 }
http = { allow = { "http://x.test/" } }
prompt "probe" { evaluators = { { "probe" } } }
]], scripts, engine.root, fake.addr) }
  end)
  teardown(function()
    if e then e:stop() end
    fake:stop()
    os.execute("rm -rf " .. engine.shell_quote(scripts))
  end)

  local n = 0
  local function probe(name)
    n = n + 1
    local id = "probe-" .. n
    assert.equal(200, e:post("/v1/traces", { id = id, prompt = { name = "probe" }, output = name }).status)
    local t = engine.eventually(5, function()
      local r = e:get("/v1/traces/" .. id)
      return r.status == 200 and r.json.verdict ~= "unevaluated" and r.json
    end)
    assert.truthy(t, name .. " was not evaluated")
    assert.equal("ok", t.scores[1].status, engine.json.encode(t.scores))
    return t.scores[1].reason
  end

  it("ratchet.llm.chat: a wrong request raises, naming the field, and nothing is sent", function()
    assert.matches("^raised: [^\n]*probe%.lua:%d+: ratchet%.llm%.chat{%.%.%.}: unknown field 'temprature'", probe("llm_unknown_field"))
    assert.matches("ratchet%.llm%.chat{%.%.%.}: messages%[1%]%.role: must be", probe("llm_bad_role"))
    assert.matches("ratchet%.llm%.chat{%.%.%.}: temperature: must be a number from 0 to 2", probe("llm_bad_temperature"))
    assert.matches("ratchet%.llm%.chat{%.%.%.}: model: must be a model name", probe("llm_empty_model"))
    assert.equal(0, fake:stats().requests)
  end)

  it("ratchet.llm.chat: a provider the config lacks is nil, message, 'bad_request'; a good call answers", function()
    assert.matches("^3 | nil | provider: no provider 'nope' in the config %(configured: fake%) | bad_request$", probe("llm_no_provider"))
    assert.equal(0, fake:stats().requests)
    assert.matches("echo", probe("llm_ok"))
  end)

  it("ratchet.http.request: a wrong request raises; a URL outside http.allow is nil, message, 'not_allowed'", function()
    assert.matches("ratchet%.http%.request{%.%.%.}: unknown field 'verb'", probe("http_unknown_field"))
    assert.matches("ratchet%.http%.request{%.%.%.}: url: must be a string", probe("http_bad_url"))
    assert.matches("ratchet%.http%.request{%.%.%.}: method: must be GET", probe("http_bad_method"))
    assert.matches("ratchet%.http%.request{%.%.%.}: headers%.A: must be a one%-line string", probe("http_bad_header"))
    assert.matches("ratchet%.http%.request{%.%.%.}: timeout_ms: must be an integer from 100 to 600000", probe("http_bad_timeout"))
    assert.matches("^3 | nil | url: 'http://elsewhere.test/x' is not under a prefix listed in the config's http.allow | not_allowed$",
      probe("http_not_allowed"))
  end)

  it("ratchet.sleep: a stop ends it at once with nil, message, 'cancelled' (it used to hold the stop for the whole sleep)", function()
    assert.equal(200, e:post("/v1/traces", { id = "sleeper", prompt = { name = "probe" }, output = "sleep_long" }).status)
    engine.sleep(0.3 * engine.slow) -- the evaluation starts and sleeps
    local t0 = require("socket").gettime()
    e:stop { keep = true }
    local took = require("socket").gettime() - t0
    assert.is_true(took < 5 * engine.slow, string.format("the stop took %.1f s", took))
    assert.equal("3 | nil | the engine is stopping | cancelled",
      e:sql("SELECT reason FROM scores WHERE trace_id = 'sleeper'"))
    os.execute("rm -rf " .. engine.shell_quote(e.dir))
    e = nil
  end)
end)
