-- spec/helpers/fake_llm.lua — starts `ratchet fake-llm` (a real HTTP server
-- on loopback speaking OpenAI's and Anthropic's APIs) and drives its faults.
--
--   local fake = require("spec.helpers.fake_llm").start { model = "...lua text...", api_key = "sk-..." }
--   fake:faults { { status = 429, retry_after = 1 } }
--   fake:stats().requests
--   fake:stop()
local engine = require "spec.helpers.engine"
local socket = require "socket"

local M = {}
local Fake = {}
Fake.__index = Fake

-- servers a failed spec left running are killed when the test process ends
M.running = {}
M.reaper = setmetatable({}, { __gc = function()
  for f in pairs(M.running) do os.execute(string.format("kill -KILL %d 2>/dev/null", f.pid)) end
end })

-- The server runs from a background subshell, so once it exits it is PID 1's
-- child to reap: a zombie (state Z in /proc) has stopped, though `kill -0`
-- still finds it.
function M.alive(pid)
  local stat = engine.read_file(string.format("/proc/%d/stat", pid))
  if not stat then return false end
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

function M.start(opts)
  opts = opts or {}
  local f = setmetatable({ dir = engine.tmpdir() }, Fake)
  local args = "fake-llm --address-file " .. engine.shell_quote(f.dir .. "/addr")
  if opts.model then
    engine.write_file(f.dir .. "/model.lua", opts.model)
    args = args .. " --model " .. engine.shell_quote(f.dir .. "/model.lua")
  end
  if opts.latency_ms then args = args .. " --latency-ms " .. opts.latency_ms end
  local env = ""
  if opts.api_key then
    env = "FAKE_LLM_KEY=" .. engine.shell_quote(opts.api_key) .. " "
    args = args .. " --api-key-env FAKE_LLM_KEY"
  end
  assert(os.execute(string.format("( %s%s %s > %s/log 2>&1 & echo $! > %s/pid ) </dev/null >/dev/null 2>&1",
    env, engine.bin, args, f.dir, f.dir)))
  local deadline = socket.gettime() + 10 * engine.slow
  while socket.gettime() < deadline do
    local a = engine.read_file(f.dir .. "/addr")
    if a and a:match("\n$") then f.addr = a:gsub("%s+$", ""); break end
    socket.sleep(0.02)
  end
  f.pid = tonumber(engine.read_file(f.dir .. "/pid"))
  M.running[f] = true
  assert(f.addr, "the fake LLM server did not start: " .. (engine.read_file(f.dir .. "/log") or ""))
  return f
end

-- the engine helper's HTTP client, pointed at the fake
local function client(f)
  local c = { addr = f.addr }
  return setmetatable(c, { __index = function(_, k) return engine.Engine[k] end })
end

function Fake:url(path) return "http://" .. self.addr .. (path or "") end
function Fake:faults(list)
  local r = client(self):post("/_fake/faults", list)
  assert(r.status == 200, r.body)
end
function Fake:stats() return client(self):get("/_fake/stats").json end
function Fake:reset() client(self):post("/_fake/reset", {}) end
function Fake:log() return engine.read_file(self.dir .. "/log") or "" end

function Fake:stop()
  M.running[self] = nil
  os.execute(string.format("kill -TERM %d 2>/dev/null", self.pid))
  local deadline = socket.gettime() + 5 * engine.slow
  while socket.gettime() < deadline do
    if not M.alive(self.pid) then break end
    socket.sleep(0.02)
  end
  local log = self:log()
  assert(not log:find("AddressSanitizer", 1, true) and not log:find("runtime error:", 1, true),
    "sanitizer report in the fake server's log:\n" .. log)
  os.execute("rm -rf " .. engine.shell_quote(self.dir))
end

return M
