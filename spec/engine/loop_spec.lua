-- The self-improvement loop end to end: the real engine, the real fake LLM
-- server running demo/model.lua (a target model that follows only what its
-- prompt states, and an optimizer that proposes fixes from failure reasons),
-- and simulated application traffic (demo/traffic.lua).
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local traffic = require "demo.traffic"

local MODEL = engine.read_file("demo/model.lua")
local V1 = "You turn support tickets into JSON. Answer with a JSON object with the fields category, priority and summary."

local function config(fake, loop)
  return string.format([[
scripts = { dirs = { %q } }
provider "fake" {
  kind = "openai", base_url = %q, default_model = "target",
  max_retries = 1, backoff_base_ms = 5, backoff_max_ms = 20, timeout_ms = 20000,
}
prompt "tickets" {
  evaluators = { { "json_schema", options = { schema = json(file(%q)) } } },
  loop = {
    dataset = "golden", optimizer = { provider = "fake", model = "optimizer" },
    check_interval_ms = 100, k = 1, concurrency = 4,
    trigger_options = { min_evaluated = 10, min_failures = 3, cooldown_ms = 3600000 },
    rollout_options = { steps = { 50 }, min_step_samples = 10, min_step_ms = 0, margin = 0.1, tau = 0.3 },
    %s
  },
}
]], engine.root, "http://" .. fake.addr .. "/v1", engine.root .. "/demo/ticket.schema.json", loop or "")
end

local function version(system)
  return { messages = { { role = "system", content = system }, { role = "user", content = "Ticket: {{ticket}}" } },
           model = { provider = "fake", model = "target" } }
end

local function setup(e, system)
  assert.equal(201, e:post("/v1/prompts", { name = "tickets" }).status)
  assert.equal(201, e:post("/v1/prompts/tickets/versions", version(system or V1)).status)
  assert.equal(200, e:post("/v1/prompts/tickets/promote", { version = 1 }).status)
  local r = e:post("/v1/datasets/golden/cases", engine.read_file("demo/golden.jsonl"),
    { content_type = "application/x-ndjson" })
  assert.equal(200, r.status, r.body)
end

local function base(e) return "http://" .. e.addr end

local function loop_view(e) return e:get("/v1/loop/tickets").json end

local function wait_state(e, pred, seconds)
  local v = engine.eventually(seconds or 30, function()
    local l = loop_view(e)
    if pred(l) then return l end
  end)
  assert(v, "the loop did not get there; now: " .. engine.json.encode(loop_view(e)) .. "\nlog:\n" .. e:log_text())
  return v
end

local function statuses(e)
  local out = {}
  for _, v in ipairs(e:get("/v1/prompts/tickets/versions").json.items) do out[v.version] = v.status end
  return out
end

local function kinds(events)
  local out = {}
  for _, ev in ipairs(events) do out[#out + 1] = ev.kind end
  return table.concat(out, ",")
end

-- sends app traffic until pred(statuses) holds or the budget of requests runs out
local function drive(e, from, pred, opts)
  local i = from
  local ok = engine.eventually(60, function()
    traffic.send(base(e), "tickets", i, 20, opts)
    i = i + 20
    return pred(statuses(e), loop_view(e))
  end)
  return ok, i
end

describe("the loop", function()
  local fake, e
  before_each(function() fake = fake_llm.start { model = MODEL } end)
  after_each(function()
    if e then e:stop() end
    e = nil
    fake:stop()
  end)

  it("finds failures, rejects a regressing candidate and a broken one, canaries the fix and promotes it", function()
    e = engine.start { config = config(fake) }
    setup(e)
    traffic.send(base(e), "tickets", 1, 40)
    local l = wait_state(e, function(v) return v.state == "canary" end)
    assert.equal(3, l.version)
    local st = statuses(e)
    assert.equal("production", st[1])
    assert.equal("rejected", st[2]) -- the fix plus "Use uppercase.": golden regressions
    assert.equal("canary", st[3])   -- the fix alone
    assert.is_nil(st[4])            -- the third candidate never became a version
    local events = l.events
    assert.matches("trigger,candidates,gate_started,gate,canary", kinds(events))
    local cand = events[2]
    assert.matches("candidate 3 rejected before the gate: it changes the user message", cand.message)
    local gate = events[4]
    assert.matches("v2 reject", gate.message)
    assert.matches("v3 accept", gate.message)
    -- the canary gets its share of traffic, is judged better, and is promoted
    local promoted = drive(e, 41, function(s) return s[3] == "production" end)
    assert(promoted, "not promoted: " .. engine.json.encode(loop_view(e)))
    st = statuses(e)
    assert.equal("retired", st[1])
    assert.equal("production", st[3])
    l = wait_state(e, function(v) return v.state == "idle" end)
    assert.matches("promote", kinds(l.events))
    -- the audit log names the loop and the gate for every move
    local h = e:get("/v1/prompts/tickets/history").json.items
    local saw = false
    for _, t in ipairs(h) do if t.version == 3 and t.to == "approved" then saw = t.actor == "loop" end end
    assert.is_true(saw)
    local s = e:get("/v1/loop").json
    assert.equal(1, s.counters.promotions)
    assert.equal(1, s.counters.cycles)
  end)
end)
