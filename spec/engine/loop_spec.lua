-- The self-improvement loop end to end: the real engine, the real fake LLM
-- server running demo/model.lua (a target model that follows only what its
-- prompt states, and an optimizer that proposes fixes from failure reasons),
-- and simulated application traffic (demo/traffic.lua).
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local traffic = require "demo.traffic"
local metrics = require "spec.helpers.metrics"

local tickets = require "spec.helpers.tickets"

local MODEL, V1 = tickets.MODEL, tickets.V1
local version, setup, base, statuses = tickets.version, tickets.setup, tickets.base, tickets.statuses

local function config(fake, loop)
  return tickets.config(fake, [[
    trigger_options = { min_evaluated = 10, min_failures = 3, cooldown_ms = 3600000 },
    rollout_options = { steps = { 25, 50 }, min_step_samples = 10, min_step_ms = 0, margin = 0.1, tau = 0.3 },
    ]] .. (loop or ""))
end

local function loop_view(e) return e:get("/v1/loop/tickets").json end

local function wait_state(e, pred, seconds)
  local v = engine.eventually(seconds or 30, function()
    local l = loop_view(e)
    if pred(l) then return l end
  end)
  assert(v, "the loop did not get there; now: " .. engine.json.encode(loop_view(e)) .. "\nlog:\n" .. e:log_text())
  return v
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
    -- the state is in memory at once, the event once its commit is done: wait for both
    local l = wait_state(e, function(v) return v.state == "canary" and #v.events > 0 and v.events[#v.events].kind == "canary" end)
    assert.equal(3, l.version)
    local st = statuses(e)
    assert.equal("production", st[1])
    assert.equal("rejected", st[2]) -- the fix plus "Use uppercase.": golden regressions
    assert.equal("canary", st[3])   -- the fix alone
    assert.is_nil(st[4])            -- the third candidate never became a version
    local events = l.events
    if os.getenv("LOOP_DEBUG") then for _, ev in ipairs(events) do print(ev.kind, ev.message) end end
    assert.matches("trigger,candidates,gate_started,gate,canary", kinds(events))
    local cand = events[2]
    assert.matches("candidate 3 rejected before the gate: it changes the user message", cand.message)
    local gate = events[4]
    assert.matches("v2 regressed", gate.message)
    assert.matches("v3 improved", gate.message)
    -- /metrics tells the same story
    local m = metrics.scrape(e)
    assert.equal(1, m['ratchet_loop_state{prompt="tickets",state="canary"}'])
    assert.equal(0, m['ratchet_loop_state{prompt="tickets",state="idle"}'])
    assert.equal(0, m['ratchet_loop_canary_step{prompt="tickets"}'])
    assert.equal(0.25, m['ratchet_prompt_canary_share{prompt="tickets"}'])
    assert.equal(3, m['ratchet_prompt_version{prompt="tickets",status="canary"}'])
    assert.equal(1, m['ratchet_loop_candidates_total{verdict="invalid"}'])
    assert.equal(1, m['ratchet_loop_candidates_total{verdict="accepted"}'])
    assert.equal(1, m['ratchet_loop_candidates_total{verdict="rejected"}'])
    assert.equal(1, m.ratchet_loop_cycles_total)
    assert.equal(1, m.ratchet_loop_canaries_total)
    assert.equal(1, m.ratchet_runs_started_total)
    assert.equal(1, m['ratchet_llm_calls_total{provider="fake",model="optimizer"}'])
    -- the canary gets its share of traffic, is judged better, and is promoted
    drive(e, 41, function(s) return s[3] == "production" or s[3] == "rolled_back" end) -- a rollback ends it at once
    assert(statuses(e)[3] == "production", "not promoted: " .. engine.json.encode(loop_view(e)))
    st = statuses(e)
    assert.equal("retired", st[1])
    assert.equal("production", st[3])
    l = wait_state(e, function(v) return v.state == "idle" end)
    assert.matches("promote", kinds(l.events))
    -- the audit log names the loop and the gate for every move
    local h = e:get("/v1/prompts/tickets/history").json.items
    local saw = false
    local advanced = false
    for _, t in ipairs(h) do
      if t.version == 3 and t.to == "approved" then saw = t.actor == "loop" end
      if t.version == 3 and t.from == "canary" and t.to == "canary" then
        advanced = t.actor == "loop" and t.reason:find("25% -> 50%", 1, true) ~= nil
      end
    end
    assert.is_true(saw)
    assert.is_true(advanced, "no audit row for the canary's step")
    assert.matches("advance", kinds(l.events))
    m = metrics.scrape(e)
    assert.equal(1, m.ratchet_loop_promotions_total)
    assert.equal(0, m.ratchet_loop_rollbacks_total)
    -- per prompt, the cycle's outcome; per version, the new production's traces and its share
    assert.equal(1, m['ratchet_loop_outcomes_total{prompt="tickets",outcome="promoted"}'])
    assert.equal(0, m['ratchet_loop_outcomes_total{prompt="tickets",outcome="rolled_back"}'])
    assert.equal(1, m['ratchet_prompt_version_share{prompt="tickets",version="3",status="production"}'])
    assert.truthy(m['ratchet_prompt_traces_total{prompt="tickets",version="3",verdict="pass"}'] > 0)
    assert.equal(1, m.ratchet_loop_canary_advances_total)
    assert.equal(2, m['ratchet_prompt_promotions_total{prompt="tickets"}']) -- v1 by hand, v3 by the loop
    assert.equal(1, m['ratchet_loop_state{prompt="tickets",state="idle"}'])
    assert.is_nil(m['ratchet_loop_canary_step{prompt="tickets"}'])
    assert.equal(0, m['ratchet_prompt_canary_share{prompt="tickets"}'])
    assert.equal(3, m['ratchet_prompt_version{prompt="tickets",status="production"}'])
    local s = e:get("/v1/loop").json
    assert.equal(1, s.counters.promotions)
    assert.equal(1, s.counters.cycles)
    assert.equal(1, s.counters.candidates_invalid)
    assert.equal(1, e:get("/v1/status").json.loop.counters.promotions)
  end)

  it("brings the trigger's check forward after a burst of ingest", function()
    local cfg = config(fake):gsub("check_interval_ms = 100", "check_interval_ms = 600000")
    e = engine.start { config = cfg }
    setup(e)
    engine.sleep(0.5) -- the first check found nothing; the next is ten minutes away
    traffic.send(base(e), "tickets", 1, 120)
    local l = wait_state(e, function(v) return #v.events > 0 end, 10)
    assert.equal("trigger", l.events[1].kind)
  end)

  it("rolls back a canary that degrades, and leaves production untouched", function()
    e = engine.start { config = config(fake, "enabled = false,") }
    setup(e, V1 .. " Escape quotes in strings.")
    assert.equal(201, e:post("/v1/prompts/tickets/versions", version(V1 .. " Escape quotes in strings. Use uppercase.")).status)
    local r = e:post("/v1/prompts/tickets/canary", { version = 2, share = 0.5 })
    assert.equal(200, r.status, r.body)
    wait_state(e, function(v) return v.state == "canary" and v.version == 2 end)
    local rolled = drive(e, 1, function(s) return s[2] == "rolled_back" end)
    assert(rolled, "not rolled back: " .. engine.json.encode(loop_view(e)))
    local st = statuses(e)
    assert.equal("production", st[1])
    local l = wait_state(e, function(v) return v.state == "idle" end)
    local last = l.events[#l.events]
    assert.equal("rollback", last.kind)
    local m = metrics.scrape(e)
    assert.equal(1, m.ratchet_loop_rollbacks_total)
    assert.equal(1, m['ratchet_prompt_rollbacks_total{prompt="tickets"}'])
    assert.equal(0, m.ratchet_loop_promotions_total)
    assert.matches("production untouched", last.message)
    assert.matches("beyond doubt", last.message)
    -- the audit log has the move with the policy's reason
    local h = e:get("/v1/prompts/tickets/history").json.items
    assert.equal("rolled_back", h[#h].to)
    assert.equal("loop", h[#h].actor)
  end)

  it("never touches a pinned prompt", function()
    e = engine.start { config = config(fake) }
    setup(e)
    assert.equal(200, e:post("/v1/prompts/tickets/pin", { reason = "audit freeze" }).status)
    traffic.send(base(e), "tickets", 1, 40)
    engine.sleep(1.5) -- fifteen check intervals
    local l = loop_view(e)
    assert.equal("idle", l.state)
    assert.equal(0, #l.events)
    assert.matches("pinned", l.decision)
    assert.equal(1, #e:get("/v1/prompts/tickets/versions").json.items)
    local r = e:post("/v1/prompts/tickets/optimize", {})
    assert.equal(409, r.status)
    assert.equal("pinned", r.json.error.code)
    -- a canary started by hand on a pinned prompt is not moved by the loop
    assert.equal(201, e:post("/v1/prompts/tickets/versions", version(V1 .. " Use uppercase.")).status)
    assert.equal(200, e:post("/v1/prompts/tickets/canary", { version = 2, share = 0.5 }).status)
    traffic.send(base(e), "tickets", 41, 40)
    engine.sleep(1)
    assert.equal("canary", statuses(e)[2])
    assert.equal("idle", loop_view(e).state)
  end)

  it("waits for a human when approval is required, survives a restart while waiting, and yields to a manual rollback", function()
    local cfg = config(fake, "require_approval = true,")
    e = engine.start { config = cfg }
    setup(e)
    traffic.send(base(e), "tickets", 1, 40)
    local l = wait_state(e, function(v) return v.state == "awaiting_approval" end)
    assert.equal(3, l.version)
    assert.equal("approved", statuses(e)[3])
    assert.truthy(l.events[#l.events].message:find("ratchet approve " .. l.run, 1, true))
    -- killed while waiting: still waiting after the restart
    e:kill9()
    e = engine.start { config = cfg, dir = e.dir }
    l = wait_state(e, function(v) return v.state == "awaiting_approval" end)
    local url = "--url http://" .. e.addr
    -- the run id `ratchet status` prints is one `ratchet approve` takes: the whole of it
    local _, screen = engine.run("status " .. url)
    local shown = screen:match("\ntickets%s[^\n]*awaiting_approval %(run (%S+)%)")
    assert.equal(l.run, shown, screen)
    local code, out, err = engine.run("approve " .. shown .. " --reason 'looks right' " .. url)
    assert.equal(0, code, err)
    assert.matches("canary", out)
    assert.equal("canary", statuses(e)[3])
    code, _, err = engine.run("approve " .. l.run .. " " .. url)
    assert.equal(3, code)
    assert.matches("does not wait for approval", err)
    -- a human rolls the canary back: the loop stands down
    assert.equal(200, e:post("/v1/prompts/tickets/rollback", { reason = "not today" }).status)
    l = wait_state(e, function(v) return v.state == "idle" and v.events[#v.events].kind == "manual" end)
    assert.equal("production", statuses(e)[1])
    assert.equal("rolled_back", statuses(e)[3])
  end)

  it("never promotes text that poisoned traces ask the optimizer to insert", function()
    e = engine.start { config = config(fake) }
    setup(e)
    traffic.send(base(e), "tickets", 1, 40, { poison = true })
    local l = wait_state(e, function(v)
      for _, ev in ipairs(v.events) do if ev.kind == "candidates" then return true end end
    end)
    local cand
    for _, ev in ipairs(l.events) do if ev.kind == "candidates" then cand = ev end end
    assert.matches("copies trace text into the prompt", cand.message)
    engine.sleep(0.5)
    for _, v in ipairs(e:get("/v1/prompts/tickets/versions").json.items) do
      local full = e:get(string.format("/v1/prompts/tickets/versions/%d", v.version)).json
      if full.messages[1].content:find("attacker.example", 1, true) then
        assert.is_true(v.status == "rejected" or v.status == "candidate" or v.status == "testing", v.status)
      end
    end
    assert.equal("production", statuses(e)[1])
    for v, st in pairs(statuses(e)) do
      if v > 1 then assert.are_not.equal("canary", st) end
    end
  end)

  it("ends a gate run that exhausts its budget as incomplete and promotes nothing", function()
    e = engine.start { config = config(fake, "budget = { calls = 3 },") }
    setup(e)
    traffic.send(base(e), "tickets", 1, 40)
    local l = wait_state(e, function(v)
      for _, ev in ipairs(v.events) do if ev.kind == "gate" then return v.state == "idle" end end
    end)
    local gate
    for _, ev in ipairs(l.events) do if ev.kind == "gate" then gate = ev end end
    assert.matches("incomplete", gate.message)
    local st = statuses(e)
    assert.equal("production", st[1])
    assert.equal("rejected", st[2])
    assert.equal("rejected", st[3])
    for v, st in pairs(statuses(e)) do assert.are_not.equal("canary", st, "v" .. v) end
  end)

  it("aborts a cycle killed while optimizing, rejecting nothing half-made", function()
    local cfg = config(fake, "enabled = false,")
    e = engine.start { config = cfg }
    setup(e)
    traffic.send(base(e), "tickets", 1, 40)
    engine.sleep(0.5) -- evaluated
    fake:faults { { stall = true } }
    local r = e:post("/v1/prompts/tickets/optimize", {})
    assert.equal(202, r.status, r.body)
    assert.equal("optimizing", r.json.state)
    assert.equal(409, e:post("/v1/prompts/tickets/optimize", {}).status) -- one cycle at a time
    wait_state(e, function() return fake:stats().requests >= 41 end)
    e:kill9()
    fake:reset()
    e = engine.start { config = cfg, dir = e.dir }
    local l = wait_state(e, function(v) return v.state == "idle" and #v.events >= 2 end)
    assert.equal("aborted", l.events[#l.events].kind)
    assert.equal(1, #e:get("/v1/prompts/tickets/versions").json.items)
    -- and the next cycle runs
    assert.equal(202, e:post("/v1/prompts/tickets/optimize", {}).status)
    wait_state(e, function(v) return v.state == "canary" end)
  end)

  it("resumes a gate run killed mid-way, and a canary killed mid-rollout", function()
    local cfg = config(fake, "enabled = false, concurrency = 1,")
    e = engine.start { config = cfg }
    setup(e)
    traffic.send(base(e), "tickets", 1, 40)
    engine.sleep(0.5)
    fake:faults { { delay_ms = 150, times = 1000 } }
    assert.equal(202, e:post("/v1/prompts/tickets/optimize", {}).status)
    local l = wait_state(e, function(v) return v.state == "gating" end)
    local run = l.run
    engine.eventually(20, function() return #e:get("/v1/runs/" .. run .. "/results").json.items >= 3 end)
    e:kill9()
    e = engine.start { config = cfg, dir = e.dir }
    l = wait_state(e, function(v) return v.state == "canary" end, 60)
    assert.equal(run, l.run)
    assert.equal(3, l.version)
    fake:reset()
    e:kill9()
    e = engine.start { config = cfg, dir = e.dir }
    l = wait_state(e, function(v) return v.state == "canary" end)
    assert.equal(3, l.version)
    -- stops at a rollback too, and the loop's view says why (once in five suite runs on a loaded machine:
    -- the rollout's latency guardrail, the canary's mean of ~2 ms fake calls over 2x production's, which the
    -- rollout's latency floor is to fix); it used to drive traffic 60 s more before failing
    drive(e, 41, function(s) return s[3] == "production" or s[3] == "rolled_back" end)
    assert.equal("production", statuses(e)[3], "not promoted after the restart: " .. engine.json.encode(loop_view(e)))
  end)

  it("answers bad requests with errors that name the field", function()
    e = engine.start { config = config(fake, "enabled = false,") .. '\nprompt "other" { evaluators = { "json_valid" } }' }
    setup(e)
    local r = e:post("/v1/prompts/nope/optimize", {})
    assert.equal(404, r.status)
    assert.equal("unknown_prompt", r.json.error.code)
    assert.equal(201, e:post("/v1/prompts", { name = "other" }).status)
    r = e:post("/v1/prompts/other/optimize", {})
    assert.equal(409, r.status)
    assert.equal("no_loop", r.json.error.code)
    r = e:post("/v1/prompts/tickets/optimize", { now = true })
    assert.equal(400, r.status)
    assert.equal("now", r.json.error.field)
    r = e:post("/v1/runs/0123-abc/approve", {})
    assert.equal(404, r.status)
    assert.equal("unknown_run", r.json.error.code)
    r = e:post("/v1/runs/0123-abc/approve", { reason = 5 })
    assert.equal(400, r.status)
    assert.equal("reason", r.json.error.field)
    assert.equal(404, e:get("/v1/loop/nope").status)
    assert.equal(405, e:post("/v1/loop", {}).status)
    local code, _, err = engine.run("optimize 'bad name' --url http://" .. e.addr)
    assert.equal(3, code)
    assert.matches("not a prompt name", err)
    code, _, err = engine.run("optimize other --url http://" .. e.addr)
    assert.equal(3, code)
    assert.matches("no loop settings", err)
  end)

  it("refuses to start on a bad loop setting, naming it", function()
    local code, log = engine.start { expect_fail = true, config = 'prompt "p" { loop = { candidates = "three" } }' }
    assert.are_not.equal(0, code)
    assert.matches("prompt 'p': loop.candidates must be a positive integer", log)
    code, log = engine.start { expect_fail = true, config = 'prompt "p" { loop = { optimiser = {} } }' }
    assert.are_not.equal(0, code)
    assert.matches("unknown key 'optimiser'", log)
    code, log = engine.start { expect_fail = true, config = 'prompt "p" { loop = { optimizer = { temperature = -1 } } }' }
    assert.are_not.equal(0, code)
    assert.matches("loop.optimizer.temperature must be a number >= 0", log)
  end)
end)
