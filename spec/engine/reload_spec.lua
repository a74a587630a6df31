-- Hot reload on a running engine: a file edit or SIGHUP swaps in the new
-- version; a broken file keeps the old one running and shows the error;
-- reloading many times does not grow memory.
local engine = require "spec.helpers.engine"

local function evaluator(verdict_pass, reason)
  return string.format([[
return { name = "gate", description = "test evaluator", evaluate = function(case)
  return { pass = %s, reason = %q }
end }
]], tostring(verdict_pass), reason)
end

describe("hot reload", function()
  local e, dir, file
  before_each(function()
    dir = engine.tmpdir()
    os.execute("mkdir -p " .. dir .. "/mine/evaluators")
    file = dir .. "/mine/evaluators/gate.lua"
    engine.write_file(file, evaluator(true, "v1"))
  end)
  after_each(function()
    if e then e:stop() end
    e = nil
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)

  local function start(extra)
    e = engine.start { dir = dir, config = string.format([[
scripts = { dirs = { "mine", %q }, reload_debounce_ms = 20 }
prompt "p" { evaluators = { "gate" } }
%s
]], engine.root, extra or "") }
  end

  local function status() return e:get("/v1/status").json.scripts end

  -- atomically, as editors and deploy tools do
  local function replace(path, text)
    engine.write_file(path .. ".tmp", text)
    assert(os.rename(path .. ".tmp", path))
  end

  it("picks up an edited evaluator while ingest runs: new verdicts within 1 s, no failed request", function()
    start()
    local failures, sent = 0, 0
    local function send(n)
      local batch = {}
      for i = 1, 10 do
        batch[i] = { id = "t" .. n .. "-" .. i, prompt = { name = "p" }, output = "x" }
      end
      local r = e:post("/v1/traces", batch)
      sent = sent + 1
      if r.status ~= 200 or r.json.accepted ~= 10 then failures = failures + 1 end
    end
    for n = 1, 20 do send(n) end
    local edited_at = require("socket").gettime()
    replace(file, evaluator(false, "v2"))
    local n, new_seen_at = 20, nil
    repeat
      n = n + 1
      send(n)
      local r = e:get("/v1/traces/t" .. n .. "-1")
      local deadline = require("socket").gettime() + 2
      while r.json.verdict == "unevaluated" and require("socket").gettime() < deadline do
        engine.sleep(0.005)
        r = e:get("/v1/traces/t" .. n .. "-1")
      end
      if r.json.verdict == "fail" and r.json.scores[1].reason == "v2" then
        new_seen_at = require("socket").gettime()
      end
    until new_seen_at or n > 400
    assert.truthy(new_seen_at, "the new version never judged a trace")
    assert.is_true(new_seen_at - edited_at < 1.0 * engine.slow,
      string.format("new verdicts after %.3f s", new_seen_at - edited_at))
    assert.equal(0, failures, failures .. " of " .. sent .. " requests failed")
    -- earlier traces keep the verdicts of the version that judged them
    assert.equal("pass", e:get("/v1/traces/t1-1").json.verdict)
  end)

  it("keeps the old version running when the new one does not load, and says why", function()
    start()
    local v1 = status().evaluators
    replace(file, "return { name = 'gate', evaluate = function(case) return {pass = true end }\n")
    local st = engine.eventually(3, function()
      local s = status()
      return #s.errors > 0 and s
    end)
    assert.truthy(st, "no error in /v1/status")
    assert.matches("gate%.lua:1: ", st.errors[1])
    assert.is_true(st.reload_errors >= 1)
    assert.is_true(st.failed_reloads >= 1)
    assert.same(v1, st.evaluators)
    -- still judged by v1
    e:post("/v1/traces", { id = "after-bad-edit", prompt = { name = "p" }, output = "x" })
    local t = engine.eventually(3, function()
      local r = e:get("/v1/traces/after-bad-edit").json
      return r.verdict ~= "unevaluated" and r
    end)
    assert.equal("pass", t.verdict)
    assert.equal("v1", t.scores[1].reason)
    -- a contract error is refused the same way
    replace(file, "return { name = 'gate', description = 'x' }\n")
    assert.truthy(engine.eventually(3, function()
      local s = status()
      return s.errors[1] and s.errors[1]:find("'evaluate' must be a function", 1, true)
    end))
    -- fixing the file clears the error
    replace(file, evaluator(false, "v3"))
    assert.truthy(engine.eventually(3, function() return #status().errors == 0 end))
    assert.matches("error%s+scripts: [^\n]*gate%.lua:1: ", e:log_text())
  end)

  it("reloads on SIGHUP, and reloads the config: prompts change, a broken config keeps the running one", function()
    start()
    -- a module the evaluator requires is reloaded too
    os.execute("mkdir -p " .. dir .. "/mine/evaluators/lib")
    engine.write_file(dir .. "/mine/evaluators/lib/word.lua", "return { word = 'one' }\n")
    engine.write_file(file, [[
local w = require "lib.word"
return { name = "gate", description = "", evaluate = function() return { pass = true, reason = w.word } end }
]])
    e:signal("HUP")
    local function judged(id)
      e:post("/v1/traces", { id = id, prompt = { name = "p" }, output = "x" })
      return engine.eventually(3, function()
        local r = e:get("/v1/traces/" .. id).json
        return r.verdict ~= "unevaluated" and r
      end)
    end
    assert.truthy(engine.eventually(3, function() return judged("m" .. math.random(1e9)).scores[1].reason == "one" end))
    engine.write_file(dir .. "/mine/evaluators/lib/word.lua", "return { word = 'two' }\n")
    e:signal("HUP")
    assert.truthy(engine.eventually(3, function() return judged("m" .. math.random(1e9)).scores[1].reason == "two" end))

    -- the config: attach a second evaluator to the prompt
    local conf = dir .. "/ratchet.conf"
    replace(conf, string.format([[
scripts = { dirs = { "mine", %q }, reload_debounce_ms = 20 }
prompt "p" { evaluators = { "gate", { "json_valid", required = true } } }
]], engine.root))
    e:signal("HUP")
    assert.truthy(engine.eventually(3, function()
      local t = judged("c" .. math.random(1e9))
      return #t.scores == 2 and t.verdict == "fail"
    end))
    -- a broken config: the error shows, the running one stays
    replace(conf, 'prompt "p" { evaluators = { "gate" }\n')
    e:signal("HUP")
    local st = engine.eventually(3, function()
      local s = status()
      return s.config_error ~= engine.json.null and s
    end)
    assert.truthy(st, "no config_error in /v1/status")
    assert.matches("ratchet%.conf:", st.config_error)
    assert.equal(2, #judged("k" .. math.random(1e9)).scores)
    -- a config naming a missing evaluator is refused as a whole
    replace(conf, string.format([[
scripts = { dirs = { "mine", %q } }
prompt "p" { evaluators = { "gate", "nope" } }
]], engine.root))
    e:signal("HUP")
    assert.truthy(engine.eventually(3, function()
      local s = status()
      return s.config_error ~= engine.json.null and s.config_error:find("no evaluator 'nope'", 1, true)
    end))
    assert.equal(2, #judged("n" .. math.random(1e9)).scores)
  end)

  it("reloads 1,000 times with flat memory #heavy", function()
    start("scripts = { dirs = { 'mine', '" .. engine.root .. "' }, watch = false }")
    local function reload_and_wait(i)
      local before = status().reloads
      engine.write_file(file, evaluator(i % 2 == 0, "round " .. i))
      e:signal("HUP")
      assert.truthy(engine.eventually(5, function() return status().reloads > before end), "reload " .. i)
    end
    local function rss()
      local f = io.open("/proc/" .. e.pid .. "/status")
      local kb = f and f:read("a"):match("VmRSS:%s*(%d+)")
      if f then f:close() end
      return tonumber(kb)
    end
    for i = 1, 100 do reload_and_wait(i) end
    local lua_100, rss_100 = status().memory_bytes, rss()
    for i = 101, 1000 do reload_and_wait(i) end
    local lua_1000, rss_1000 = status().memory_bytes, rss()
    assert.is_true(lua_1000 < lua_100 * 1.1 + 64 * 1024,
      string.format("script memory grew from %d to %d bytes", lua_100, lua_1000))
    if not engine.sanitized then -- ASan's quarantine holds freed memory back
      assert.is_true(rss_1000 < rss_100 + 2048, string.format("RSS grew from %d to %d kB", rss_100, rss_1000))
    end
  end)
end)
