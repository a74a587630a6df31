-- Hostile scripts (issue 21): whatever an evaluator does, the engine keeps
-- answering other clients (p99 of their requests at most 20 ms, no stall
-- over 150 ms), every other evaluator's verdicts stay what they were, and
-- the attacker is stopped with a message that says why and where.
--
-- Each attack runs in its own evaluator on its own prompt, beside a victim
-- prompt judged by shipped evaluators. Loop responsiveness is measured from
-- outside: /healthz polled on one keep-alive connection while the engine
-- works through the attack; a stall shows as a slow answer.
local engine = require "spec.helpers.engine"
local socket = require "socket"

local attacks = {
  -- an error handler that never returns (the kill used to run inside the
  -- hook, where hooks are off: the handler spun forever)
  xpcall = [[
    while true do xpcall(function() error("x") end, function(e) while true do end end) end]],
  -- Lua's matcher never calls the hook: one call ran for seconds
  pattern = [[
    return string.find(("a"):rep(1500), ".-.-b")]],
  pattern_long = [[
    local s = ("a"):rep(30000)
    return s:find(".-.-.-b")]],
  gmatch = [[
    for w in (("a"):rep(3000)):gmatch(".-.-b") do end]],
  gsub_callback = [[
    return (("x"):rep(20000)):gsub(".", function(c) while true do end end)]],
  sort = [[
    local t = {} for i = 1, 200000 do t[i] = (i * 7919) % 200000 end
    table.sort(t, function(a, b) return a < b end)
    table.sort(t, function(a, b) while true do end end)]],
  rep = [[
    local s = ("x"):rep(40 * 1024 * 1024)
    return #s]],
  coroutine = [[
    local co = coroutine.wrap(function() while true do end end)
    co()]],
  gc = [[
    setmetatable({}, { __gc = function() while true do end end })]],
  pcall_loop = [[
    while true do pcall(function() while true do end end) end]],
}

local function evaluator_file(name, body)
  return string.format([[
return { name = %q, description = "hostile", evaluate = function(case, opts)
  do
%s
  end
  return { pass = true }
end }
]], name, body)
end

-- The poisoner changes what it can reach, through every door the sandbox has.
local poison = [[
return { name = "poison", description = "hostile", evaluate = function(case)
  local function try(f) pcall(f) end
  local evil = function() return "refund refund" end
  try(function() rawset(string, "find", function() return 1, 1 end) end)
  try(function() rawset(string, "lower", evil) end)
  try(function() string.find = function() return 1, 1 end end)
  try(function() local _, real = pairs(string); real.find = function() return 1, 1 end end)
  try(function() local _, real = pairs(table); real.concat = evil end)
  try(function() getmetatable("").__index.find = function() return 1, 1 end end)
  try(function() rawset(require("lib.text"), "output_text", evil) end)
  try(function() require("lib.text").output_text = evil end)
  try(function() require("lib.text").fail = require("lib.text").pass end)
  try(function() rawset(require("cjson"), "decode", function() return {} end) end)
  try(function() require("cjson").decode_max_depth(1) end)
  try(function() local _, real = pairs(require("cjson")); real.decode = function() return {} end end)
  try(function() local mt = getmetatable(require("rex_pcre2").new("x")); mt.__index.exec = function() return 1, 1 end end)
  try(function() local _, r = pairs(ratchet); r.json.decode = function() return {} end end)
  try(function() local _, r = pairs(ratchet.json); r.decode = function() return {} end end)
  try(function() local mt = getmetatable(ratchet.json.decode("[]")); mt.__index = function() return "refund" end end)
  try(function() rawset(coroutine, "wrap", evil) end)
  try(function() rawset(math, "floor", evil) end)
  try(function() rawset(utf8, "len", evil) end)
  try(function() rawset(os, "time", evil) end)
  return { pass = true, reason = "poisoned what it could" }
end }
]]

local function victim_traces(prefix)
  return {
    { id = prefix .. "-refund", prompt = { name = "victim" }, output = '{"category":"refund"}' },
    { id = prefix .. "-other", prompt = { name = "victim" }, output = '{"category":"other"}' },
    { id = prefix .. "-text", prompt = { name = "victim" }, output = "not json, no refund word" },
    { id = prefix .. "-long", prompt = { name = "victim" }, output = '{"category":"billing","note":"' ..
      string.rep("n", 80) .. '"}' },
  }
end

-- the scores of a trace, once evaluated: { evaluator = {pass, status} }
local function verdicts(e, id)
  local t = engine.eventually(20, function()
    local r = e:get("/v1/traces/" .. id)
    if r.status == 200 and r.json.verdict ~= "unevaluated" then return r.json end
  end)
  assert(t, "trace " .. id .. " was never evaluated")
  local out = { verdict = t.verdict }
  for _, s in ipairs(t.scores) do out[s.evaluator] = s.status .. ":" .. tostring(s.pass) end
  return out
end

local function all_verdicts(e, prefix)
  local out = {}
  for _, t in ipairs(victim_traces(prefix)) do out[t.id:sub(#prefix + 2)] = verdicts(e, t.id) end
  return out
end

-- Polls /healthz on one connection for `seconds`; returns p99 and max
-- latency in ms and the number of answers.
local function responsiveness(e, seconds)
  local c = e:connect()
  local lat = {}
  local stop = socket.gettime() + seconds
  while socket.gettime() < stop do
    local t0 = socket.gettime()
    c:send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    local res = engine.read_response(c)
    assert(res and res.status == 200, "healthz did not answer")
    lat[#lat + 1] = (socket.gettime() - t0) * 1000
  end
  c:close()
  table.sort(lat)
  return lat[math.ceil(#lat * 0.99)], lat[#lat], #lat
end

local function config(root)
  return string.format([[
-- load_budget_ms above the default 1000: the memory bomb must meet the memory
-- cap, not the time budget, even on a loaded machine (it reached the budget
-- first once, at load 5)
scripts = { dirs = { "extra", %q }, load_budget_ms = 3000 }
evaluation = { concurrency = 64 }
prompt "victim" {
  evaluators = {
    { "contains", options = { value = "refund" } },
    { "json_valid", required = false },
    { "regex", options = { pattern = "^\\{" }, required = false },
    { "json_schema", options = { schema = { type = "object", required = { "category" } } }, required = false },
    { "max_length", options = { max_chars = 60 }, required = false },
  },
}
prompt "poison" { evaluators = { "poison" } }
%s
]], root, (function()
    local out = {}
    for name in pairs(attacks) do
      out[#out + 1] = string.format('prompt "attack_%s" { evaluators = { "attack_%s" } }', name, name)
    end
    table.sort(out)
    return table.concat(out, "\n")
  end)())
end

describe("hostile scripts", function()
  local e, dir, baseline
  -- each test gets an engine of its own, so one attack that got through
  -- cannot fail the others
  before_each(function()
    dir = engine.tmpdir()
    os.execute("mkdir -p " .. dir .. "/extra/evaluators")
    for name, body in pairs(attacks) do
      engine.write_file(dir .. "/extra/evaluators/attack_" .. name .. ".lua", evaluator_file("attack_" .. name, body))
    end
    engine.write_file(dir .. "/extra/evaluators/poison.lua", poison)
    e = engine.start { dir = dir, config = config(engine.root) }
    assert.equal(200, e:post("/v1/traces", victim_traces("base")).status)
    baseline = all_verdicts(e, "base")
    -- the baseline is what the shipped evaluators say
    assert.equal("pass", baseline.refund.verdict)
    assert.equal("fail", baseline.other.verdict)
    assert.equal("ok:false", baseline.long.max_length)
  end)
  after_each(function()
    if e then e:stop() end
    e = nil
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)

  it("one evaluator cannot change what another sees, and a reload starts from pristine libraries", function()
    local batch = {}
    for i = 1, 3 do batch[i] = { id = "poison-" .. i, prompt = { name = "poison" }, output = "x" } end
    assert.equal(200, e:post("/v1/traces", batch).status)
    for i = 1, 3 do assert.equal("pass", verdicts(e, "poison-" .. i).verdict) end
    assert.equal(200, e:post("/v1/traces", victim_traces("after-poison")).status)
    assert.same(baseline, all_verdicts(e, "after-poison"))
    -- and after a reload
    e:signal("HUP")
    assert(engine.eventually(10, function() return e:log_text():find("reloaded (SIGHUP)", 1, true) end))
    assert.equal(200, e:post("/v1/traces", victim_traces("after-reload")).status)
    assert.same(baseline, all_verdicts(e, "after-reload"))
  end)

  it("reloads scripts with load-time loops and memory bombs without stalling, naming file:line #heavy", function()
    local ev = dir .. "/extra/evaluators/"
    engine.write_file(ev .. "load_loop.lua", "local x = 0\nwhile true do x = x + 1 end\nreturn {}\n")
    engine.write_file(ev .. "load_bomb.lua", "local t = {}\nfor i = 1, 1e9 do t[i] = ('x'):rep(64) .. i end\nreturn {}\n")
    engine.write_file(ev .. "load_require.lua", "local m = require 'lib.spin'\nreturn m\n")
    os.execute("mkdir -p " .. ev .. "lib")
    engine.write_file(ev .. "lib/spin.lua", "while true do end\nreturn {}\n")
    -- a legitimately slow top level (a few hundred ms of Lua) still loads
    engine.write_file(ev .. "load_slow.lua", [[
local x = 0
for i = 1, 2e7 do x = x + i end
return { name = "load_slow", description = "slow to load", evaluate = function() return { pass = x > 0 } end }
]])
    assert.equal(200, e:post("/v1/traces", victim_traces("reload")).status)
    e:signal("HUP")
    local p99, worst, n = responsiveness(e, 3)
    print(string.format("# reload: p99 %.2f ms, worst %.2f ms over %d answers", p99, worst, n))
    assert.is_true(p99 <= 20, string.format("reload: p99 %.1f ms (worst %.1f ms)", p99, worst))
    assert.is_true(worst <= 150, string.format("reload: a %.1f ms stall", worst))
    local st = assert(engine.eventually(20, function()
      local r = e:get("/v1/status").json
      if r.scripts and #r.scripts.errors >= 3 then return r end
    end), "the reload never reported its errors")
    local errors = table.concat(st.scripts.errors, "\n")
    print("# " .. errors:gsub("\n", "\n# "))
    assert.matches("load_loop%.lua:2: killed", errors)
    assert.matches("load_bomb%.lua:2: .*memory", errors)
    assert.matches("lib/spin%.lua:1: killed", errors)
    local names = {}
    for _, x in ipairs(st.scripts.evaluators) do names[x.name] = true end
    assert.is_true(names.load_slow, "the slow but legitimate script did not load")
    assert.is_nil(names.load_loop)
    assert.same(baseline, all_verdicts(e, "reload"))
  end)

  -- how each attack ends: killed at its budget or stall bound, or refused
  local expect = { xpcall = "killed", pattern = "killed", pattern_long = "killed", gmatch = "killed",
    gsub_callback = "killed", sort = "killed", rep = "killed", coroutine = "killed", gc = "error",
    pcall_loop = "killed" }
  for _, name in ipairs { "xpcall", "pattern", "pattern_long", "gmatch", "gsub_callback", "sort", "rep",
                          "coroutine", "gc", "pcall_loop" } do
    it("stops attack_" .. name .. " with a message, and serves others meanwhile #heavy", function()
      local batch = {}
      for i = 1, 12 do batch[#batch + 1] = { id = name .. "-" .. i, prompt = { name = "attack_" .. name }, output = "x" } end
      for _, t in ipairs(victim_traces("during-" .. name)) do batch[#batch + 1] = t end
      assert.equal(200, e:post("/v1/traces", batch).status)
      local p99, worst, n = responsiveness(e, 2)
      assert.is_true(p99 <= 20, string.format("%s: p99 %.1f ms over %d answers (worst %.1f ms)", name, p99, n, worst))
      assert.is_true(worst <= 150, string.format("%s: a %.1f ms stall (p99 %.1f ms)", name, worst, p99))
      assert.same(baseline, all_verdicts(e, "during-" .. name))
      local v = verdicts(e, name .. "-1")
      local t = e:get("/v1/traces/" .. name .. "-1").json
      print(string.format("# %s: p99 %.2f ms, worst %.2f ms over %d answers; %s: %s", name, p99, worst, n,
        v["attack_" .. name], t.scores[1].reason))
      assert.equal(expect[name], v["attack_" .. name]:match("^%a+"), name .. ": " .. t.scores[1].reason)
    end)
  end
end)
