-- Reload latency: an evaluator file is rewritten (atomically, as editors and
-- deploy tools do) and /v1/status polled until the new version is active.
-- Baseline in the same run: the same status request without a reload (the
-- cost of observing). Run from the repository root:
--   lua5.4 bench/reload.lua [ROUNDS]
package.path = "./?.lua;" .. package.path
local engine = require "spec.helpers.engine"
local socket = require "socket"
local rounds = tonumber(arg[1]) or 50

local dir = engine.tmpdir()
os.execute("mkdir -p " .. dir .. "/mine/evaluators")
local file = dir .. "/mine/evaluators/gate.lua"
local function write(i)
  engine.write_file(file .. ".tmp", string.format(
    'return { name = "gate", description = "round %d", evaluate = function() return { pass = true } end }\n', i))
  os.rename(file .. ".tmp", file)
end
write(0)
local e = engine.start { dir = dir, config = string.format(
  'scripts = { dirs = { "mine", %q } }\nprompt "p" { evaluators = { "gate" } }', engine.root) }
local function version()
  for _, ev in ipairs(e:get("/v1/status").json.scripts.evaluators) do
    if ev.name == "gate" then return ev.version end
  end
end

local base = {}
for i = 1, rounds do
  local t0 = socket.gettime()
  version()
  base[i] = (socket.gettime() - t0) * 1000
end
local lat = {}
for i = 1, rounds do
  local before = version()
  local t0 = socket.gettime()
  write(i)
  while version() == before do end
  lat[i] = (socket.gettime() - t0) * 1000
  socket.sleep(0.1) -- let the debounce settle between rounds
end
e:stop()
table.sort(base)
table.sort(lat)
local function pct(t, p) return t[math.max(1, math.ceil(#t * p))] end
print(string.format("%d rounds; status poll alone: median %.2f ms", rounds, pct(base, 0.5)))
print(string.format("file written -> new version active: median %.1f ms, p90 %.1f ms, max %.1f ms (target <= 100 ms)",
  pct(lat, 0.5), pct(lat, 0.9), lat[#lat]))
print(string.format("ratio to the status poll alone: %.0fx (includes the 50 ms debounce)", pct(lat, 0.5) / pct(base, 0.5)))
