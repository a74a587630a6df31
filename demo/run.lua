-- demo/run.lua — the application side of `make demo`: registers the
-- ticket-triage prompt and its golden dataset, sends simulated traffic, and
-- prints each step of the loop as the engine takes it.
--   lua5.4 demo/run.lua http://127.0.0.1:PORT SIMULATED(0|1) [gateway]
-- With "gateway" the application's traffic goes through the gateway
-- (POST /v1/chat/completions, model "ratchet:ticket-triage"): one call per
-- request, the trace captured by the engine.
local socket = require "socket"
local traffic = require "demo.traffic"

local base, simulated, gateway = arg[1], arg[2] == "1", arg[3] == "gateway"
local PROMPT = "ticket-triage"
local V1 = "You turn support tickets into JSON. Answer with a JSON object with the fields category, priority and summary."

local function req(method, path, body, content_type)
  local st, r = traffic.request(base, method, path, body, content_type)
  if st >= 300 then error(method .. " " .. path .. ": " .. st .. " " .. (type(r) == "table" and require("cjson").encode(r) or tostring(r))) end
  return r
end

local function say(fmt, ...) io.write(string.format(fmt, ...), "\n"); io.flush() end

-- the pass rate of a version's traces (evaluated ones) from the trace list
local function pass_rate(version, since)
  local r = req("GET", string.format("/v1/traces?prompt=%s&version=%d&limit=1000%s", PROMPT, version,
    since and ("&since=" .. since) or ""))
  local n, ok = 0, 0
  for _, t in ipairs(r.items) do
    if t.verdict == "pass" or t.verdict == "fail" then
      n = n + 1
      if t.verdict == "pass" then ok = ok + 1 end
    end
  end
  return n > 0 and ok / n or 0, n
end

say("ratchet demo: support tickets -> JSON, the whole loop end to end")
if simulated then
  say("SIMULATION: both \"models\" are scripts of the fake LLM server (demo/model.lua), not real LLMs.")
  say("  the target follows only the instructions its prompt states; the optimizer proposes fixes from")
  say("  the failure reasons it is shown. Set RATCHET_DEMO_API_KEY to run against a real provider.")
end
if gateway then
  say("GATEWAY: the application calls POST /v1/chat/completions with model \"ratchet:%s\"; the engine", PROMPT)
  say("  picks the version (canary included), calls the model and captures every trace.")
end
say("")

req("POST", "/v1/prompts", { name = PROMPT, description = "support tickets to JSON" })
req("POST", "/v1/prompts/" .. PROMPT .. "/versions", {
  messages = { { role = "system", content = V1 }, { role = "user", content = "Ticket: {{ticket}}" } },
  model = { provider = "demo" }, note = "the first version, written by hand" })
req("POST", "/v1/prompts/" .. PROMPT .. "/promote", { version = 1, reason = "initial release" })
local f = assert(io.open("demo/golden.jsonl"))
local golden = f:read("a")
f:close()
local ds = req("POST", "/v1/datasets/ticket-golden/cases", golden, "application/x-ndjson")
say("[setup]       prompt %s v1 in production; golden dataset of %d cases", PROMPT, ds.cases or 0)

local sent, seen, started = 0, 0, socket.gettime()
local before_rate, after_version
local function send(n)
  traffic.send(base, PROMPT, sent + 1, n, { id_prefix = "demo", gateway = gateway })
  sent = sent + n
end

local function show_events()
  local l = req("GET", string.format("/v1/loop/%s?cursor=%d", PROMPT, seen))
  for _, ev in ipairs(l.events) do
    seen = ev.seq
    local msg = ev.message
    if ev.kind == "candidates" then msg = msg:gsub("; candidate", "\n              candidate") end
    if ev.kind == "gate" then msg = msg:gsub("; v", "\n              v") end
    say("%-13s %s", "[" .. ev.kind .. "]", msg)
    if ev.kind == "promote" or ev.kind == "rollback" then return ev.kind, l end
  end
  return nil, l
end

send(60)
socket.sleep(0.5)
local rate, n = pass_rate(1)
before_rate = rate
say("[traffic]     %d requests on v1: pass rate %.0f%% (%d evaluated)", sent, 100 * rate, n)

local outcome
while socket.gettime() - started < 240 do
  local kind, l = show_events()
  if kind then outcome = kind; after_version = l.events[#l.events].detail.version; break end
  if l.state == "canary" or l.state == "idle" then
    local used = traffic.send(base, PROMPT, sent + 1, 20, { id_prefix = "demo", gateway = gateway })
    sent = sent + 20
    if l.state == "canary" then
      say("[traffic]     20 requests: %d on v%d (production), %d on the canary v%d", used[1] or 0, 1,
        used[l.version] or 0, l.version)
    end
  end
  socket.sleep(0.3)
end
say("")
if outcome == "promote" then
  local t0 = os.time()
  send(60)
  socket.sleep(0.5)
  local after = pass_rate(after_version, os.date("!%Y-%m-%dT%H:%M:%SZ", t0 - 1))
  say("[result]      pass rate before: %.0f%% (v1)   after: %.0f%% (v%d, now in production)", 100 * before_rate, 100 * after,
    after_version)
  say("              %d requests in %.0f s; `ratchet prompt history %s` shows every move", sent, socket.gettime() - started, PROMPT)
  os.exit(0)
end
say("[result]      the loop did not promote a version (%s); see `ratchet loop %s`", outcome or "timed out", PROMPT)
os.exit(1)
