-- The cost of running Lua's pattern functions where the engine can stop
-- them (script_stall.c: a scratch state per call, arguments and results
-- copied): the same workloads timed in a plain Lua state (Lua's own
-- lstrlib, the baseline, same run) and through the engine's runtime (the
-- sandbox module: same VM as the engine). Per call, in microseconds.
--   lua5.4 bench/patterns.lua [N]     (make bench-patterns)
package.cpath = (os.getenv("RATCHET_LUA_CPATH") or "build/lua") .. "/?.so;" .. package.cpath
local sb = require "ratchet_sandbox"
local N = tonumber(arg[1]) or 200000

local workloads = {
  { "find plain (short)", "local s = 'the quick brown fox' return function() return s:find('fox', 1, true) end" },
  { "match captures (short)", "local s = 'key = value' return function() return s:match('^(%w+)%s*=%s*(%w+)$') end" },
  { "gsub string repl (200 B)", "local s = ('word '):rep(40) return function() return s:gsub('%s+', ' ') end" },
  { "gsub function repl (200 B)", "local s = ('word '):rep(40) return function() return s:gsub('%w+', string.upper) end" },
  { "gmatch 40 words (per word)", "local s = ('word '):rep(40) return function() local n = 0 for w in s:gmatch('%a+') do n = n + 1 end return n end", 40 },
  { "find in 64 KiB (cached subject)", "local s = ('x'):rep(65536) .. 'needle' return function() return s:find('needle', 1, true) end" },
}

local function compile(src)
  return assert(load(src, "=w", "t", _ENV))()
end

local results = {}
for _, w in ipairs(workloads) do
  local name, src, per = w[1], w[2], w[3] or 1
  local n = name:find("64 KiB") and math.floor(N / 20) or N
  -- baseline: plain Lua
  local f = compile(src)
  local t0 = os.clock()
  for _ = 1, n do f() end
  local plain = (os.clock() - t0) / n / per * 1e6
  -- the engine's runtime: an evaluator whose evaluate runs the workload n times
  local path = os.tmpname() .. ".lua"
  local fh = assert(io.open(path, "w"))
  fh:write("local make = function() " .. src .. " end\nlocal f = make()\n",
    "return { name = 'bench', description = 'bench', evaluate = function(case, opts)\n",
    "  for _ = 1, opts.n do f() end\n  return { pass = true }\nend }\n")
  fh:close()
  local ev = assert(sb.load_evaluator(path, { budget_ms = 600000 }))
  local opts = string.format('{"n":%d}', n)
  ev:evaluate('{"output":"x"}', '{"n":10}')
  t0 = os.clock()
  local r = ev:evaluate('{"output":"x"}', opts)
  local sandboxed = (os.clock() - t0) / n / per * 1e6
  assert(r.pass, r.reason)
  os.remove(path)
  results[#results + 1] = string.format("| %s | %.3f | %.3f | %.2f |", name, plain, sandboxed, sandboxed / plain)
end
print("| workload | Lua's own (µs/call) | engine's sandbox (µs/call) | ratio |")
print("| --- | --- | --- | --- |")
for _, l in ipairs(results) do print(l) end
