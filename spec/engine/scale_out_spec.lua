-- Two engines on one PostgreSQL database (docs/scale-out.md): ingest on both; a registry change
-- on one is seen by the other (LISTEN/NOTIFY); one leader runs the loop, and when it is
-- SIGKILLed during a canary the other takes over within a bounded time, one canary, no double
-- promotion, no acked trace lost. #heavy: it runs once, in `make test`, on PostgreSQL.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local traffic = require "demo.traffic"
local socket = require "socket"
local tickets = require "spec.helpers.tickets"

local MODEL, V2, version, statuses = tickets.MODEL, tickets.V2, tickets.version, tickets.statuses

-- the loop starts no round of its own: each test drives it; a canary advances on 10 samples a step
local function config(fake, extra)
  return tickets.config(fake, [[enabled = false,
    rollout_options = { steps = { 25, 50 }, min_step_samples = 10, min_step_ms = 0, margin = 0.1, tau = 0.3 },
    ]] .. (extra or ""))
end

local function store_of(e) return e:get("/v1/status").json.store end

describe("two engines on one database #heavy", function()
  local fake, e1, e2
  before_each(function() fake = fake_llm.start { model = MODEL } end)
  after_each(function()
    if e1 and not e1.gone then e1:stop() end
    if e2 then e2:stop() end
    e1, e2 = nil, nil
    fake:stop()
  end)

  it("share ingest and the registry, and fail over during a canary without losing or doubling anything", function()
    local cfg = config(fake)
    e1 = engine.start { store = "postgres", config = cfg }
    e2 = engine.start { store = "postgres", dsn = e1.dsn, config = cfg }
    -- one leader: the first to start
    assert.equal("leader", store_of(e1).role)
    assert.equal("follower", store_of(e2).role)
    local engines = store_of(e2).engines
    assert.equal(2, #engines)
    assert.is_false(store_of(e2).scripts_differ)
    local code, out = engine.run("status --url http://" .. e2.addr)
    assert.matches("engines on this database %(2%)", out, nil, false, out .. tostring(code))
    -- the follower acts for no loop: it says so rather than forward
    local refused = e2:post("/v1/prompts/tickets/optimize", {})
    assert.equal(409, refused.status)
    assert.equal("not_leader", refused.json.error.code)

    -- a registry change on one is seen by the other at once (NOTIFY, no polling)
    tickets.setup(e1)
    assert.truthy(engine.eventually(3, function() return e2:get("/v1/prompts/tickets").status == 200 end),
      "engine 2 never saw the prompt engine 1 created")
    assert.truthy(engine.eventually(3, function() return statuses(e2)[1] == "production" end))
    -- and a version added on the follower reaches the leader
    assert.equal(201, e2:post("/v1/prompts/tickets/versions", version(V2)).status)
    assert.truthy(engine.eventually(3, function() return statuses(e1)[2] ~= nil end), "engine 1 never saw the version added on engine 2")

    -- ingest on both: every ack is in the shared store
    local acked = {}
    for i = 1, 20 do
      local e = i % 2 == 0 and e1 or e2
      local id = "both-" .. i
      local res = e:post("/v1/traces", engine.trace { id = id, prompt = { name = "other", version = 1 } })
      assert.equal(200, res.status, res.body)
      acked[#acked + 1] = id
    end
    for _, id in ipairs(acked) do
      assert.equal(200, e1:get("/v1/traces/" .. id).status)
      assert.equal(200, e2:get("/v1/traces/" .. id).status)
    end

    -- a canary, started on the leader; traffic on both
    local r = e1:post("/v1/prompts/tickets/canary", { version = 2, share = 0.25 })
    assert.equal(200, r.status, r.body)
    assert.truthy(engine.eventually(10, function() return e1:get("/v1/loop/tickets").json.state == "canary" end))
    -- a caller gets the same version from either engine (a hash of prompt and key against the shared share)
    assert.truthy(engine.eventually(3, function() return statuses(e2)[2] == "canary" end))
    local canaried = 0
    for k = 1, 40 do
      local a = e1:get("/v1/prompts/tickets?key=caller-" .. k).json
      local b = e2:get("/v1/prompts/tickets?key=caller-" .. k).json
      assert.equal(a.version, b.version, "caller-" .. k)
      if a.version == 2 then canaried = canaried + 1 end
    end
    assert.is_true(canaried > 0 and canaried < 40, canaried .. " of 40 callers on the canary")
    traffic.send("http://" .. e1.addr, "tickets", 1, 10)
    traffic.send("http://" .. e2.addr, "tickets", 11, 10)

    -- the leader dies; the follower takes over within a bounded time
    e1:kill9()
    e1.gone = true
    local t0 = socket.gettime()
    assert.truthy(engine.eventually(10, function() return store_of(e2).role == "leader" end),
      "engine 2 did not take over; log:\n" .. e2:log_text())
    local took = socket.gettime() - t0
    assert.is_true(took <= 5 * engine.slow, string.format("the takeover took %.1f s", took))
    print(string.format("# failover: the follower led %.2f s after the leader's SIGKILL", took))
    assert.truthy(engine.eventually(10, function()
      local l = e2:get("/v1/loop/tickets").json
      return l.state == "canary" and l.version == 2
    end), "the new leader does not carry the canary on: " .. e2:get("/v1/loop/tickets").body)

    -- the new leader finishes the rollout: one canary, promoted or rolled back once
    local i = 21
    local done = engine.eventually(60, function()
      traffic.send("http://" .. e2.addr, "tickets", i, 20)
      i = i + 20
      local s = statuses(e2)
      return s[2] == "production" or s[2] == "rolled_back"
    end)
    assert.truthy(done, "the canary never ended: " .. e2:get("/v1/loop/tickets").body .. "\n" .. e2:log_text())
    local to = {}
    for _, h in ipairs(e2:get("/v1/prompts/tickets/history").json.items) do
      if h.version == 2 then to[h.to] = (to[h.to] or 0) + 1 end
    end
    assert.is_true((to.production or 0) + (to.rolled_back or 0) == 1,
      "version 2 ended more than once: " .. engine.json.encode(to))
    local canaries = 0
    for _, st in pairs(statuses(e2)) do if st == "canary" then canaries = canaries + 1 end end
    assert.equal(0, canaries)
    -- nothing acked before the kill is lost
    for _, id in ipairs(acked) do assert.equal(200, e2:get("/v1/traces/" .. id).status) end
  end)

  it("refuses a loop decision from an engine whose leadership epoch is no longer the current one (fencing)", function()
    e1 = engine.start { store = "postgres", config = config(fake) }
    assert.equal("leader", store_of(e1).role)
    tickets.setup(e1, nil, { V2 })
    -- another engine took over as far as the database knows (what a successor's win does)
    assert.equal("", e1:sql("UPDATE ratchet_leader SET epoch = epoch + 1, engine = 'a-successor'"))
    -- the canary is a registry change (any engine may make it); the loop's decision to watch it is fenced
    assert.equal(200, e1:post("/v1/prompts/tickets/canary", { version = 2, share = 0.25 }).status)
    assert.truthy(engine.eventually(10, function()
      return e1:log_text():find("a loop decision was refused: this engine no longer leads", 1, true)
    end), "no refusal in the log:\n" .. e1:log_text())
    assert.equal("0", e1:sql("SELECT count(*) FROM loop_events"))
    assert.equal("", e1:sql("SELECT state FROM loop_state WHERE prompt = 'tickets' AND state = 'canary'"))
    -- ingest on the fenced engine still commits: only the leader's decisions are fenced
    assert.equal(200, e1:post("/v1/traces", engine.trace { id = "fenced-ingest" }).status)
    assert.equal("1", e1:sql("SELECT count(*) FROM traces WHERE id = 'fenced-ingest'"))
  end)

  it("flags an engine whose scripts differ from the others' in status", function()
    e1 = engine.start { store = "postgres" }
    -- the second engine overrides the shipped contains.lua with its own copy (first folder wins)
    local dir = engine.tmpdir()
    os.execute("mkdir -p " .. engine.shell_quote(dir .. "/evaluators"))
    engine.write_file(dir .. "/evaluators/contains.lua",
      engine.read_file("evaluators/contains.lua") .. "\n-- a local change\n")
    e2 = engine.start { store = "postgres", dsn = e1.dsn,
      config = string.format("scripts = { dirs = { %q, %q } }", dir, engine.root) }
    local st = assert(engine.eventually(5, function()
      local s = store_of(e1)
      local told = 0
      for _, en in ipairs(s.engines) do if type(en.scripts) == "table" then told = told + 1 end end
      if told == 2 and s.scripts_differ then return s end
    end), "status never flagged the difference: " .. e1:get("/v1/status").body)
    local flagged = {}
    for _, en in ipairs(st.engines) do
      if en.scripts_differ then flagged[#flagged + 1] = en.id end
      assert.is_string(en.scripts["evaluators/contains"])
    end
    assert.equal(1, #flagged)
    local _, out = engine.run("status --url http://" .. e1.addr)
    assert.matches("NOT ALL RUN THE SAME SCRIPTS", out)
    assert.matches("%(different scripts%)", out)
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)

  it("resumes the gate run of a leader killed mid-way on the engine that takes over", function()
    local cfg = config(fake, "concurrency = 1,")
    e1 = engine.start { store = "postgres", config = cfg }
    e2 = engine.start { store = "postgres", dsn = e1.dsn, config = cfg }
    tickets.setup(e1)
    traffic.send("http://" .. e1.addr, "tickets", 1, 40)
    engine.sleep(0.5)
    fake:faults { { delay_ms = 150, times = 1000 } }
    assert.equal(202, e1:post("/v1/prompts/tickets/optimize", {}).status)
    local run = assert(engine.eventually(20, function()
      local l = e1:get("/v1/loop/tickets").json
      return l.state == "gating" and l.run
    end), "no gate run: " .. e1:get("/v1/loop/tickets").body)
    assert.truthy(engine.eventually(20, function() return #e1:get("/v1/runs/" .. run .. "/results").json.items >= 3 end))
    e1:kill9()
    local killed = socket.gettime()
    e1.gone = true
    fake:reset()
    assert.truthy(engine.eventually(10, function() return store_of(e2).role == "leader" end))
    -- the gate run is claimed once the killed leader's lease has run out (15 s after its last heartbeat)
    assert.truthy(engine.eventually(40, function()
      return e2:log_text():find("run " .. run .. ": resumed", 1, true) ~= nil
    end), e2:log_text())
    print(string.format("# failover: the gate run resumed on the new leader %.1f s after the leader's SIGKILL",
      socket.gettime() - killed))
    local l = assert(engine.eventually(60, function()
      local v = e2:get("/v1/loop/tickets").json
      if v.state == "canary" then return v end
    end), "the new leader did not finish the gate: " .. e2:get("/v1/loop/tickets").body .. "\n" .. e2:log_text())
    assert.equal(run, l.run)
    assert.matches("run " .. run .. ": resumed", e2:log_text(), 1, true)
  end)

  it("share a daily budget: two engines together never spend more than it", function()
    local cfg = string.format([[
provider "fake" { kind = "openai", base_url = %q, default_model = "target", max_retries = 0, timeout_ms = 5000,
  models = { target = { input_per_mtok = 1, output_per_mtok = 1 } } }
llm = { daily_calls = 5 }
]], "http://" .. fake.addr .. "/v1")
    e1 = engine.start { store = "postgres", config = cfg }
    e2 = engine.start { store = "postgres", dsn = e1.dsn, config = cfg }
    local before = fake:stats().requests
    local ok, refused = 0, 0
    for i = 1, 8 do
      local e = i % 2 == 0 and e2 or e1
      local r = e:post("/v1/llm/chat", { provider = "fake", messages = { { role = "user", content = "Ticket: " .. i } } })
      if r.status == 200 then
        ok = ok + 1
      else
        assert.equal(429, r.status, r.body)
        assert.equal("budget_exceeded", r.json.error.code)
        refused = refused + 1
      end
    end
    -- each engine alone would have allowed its 4 calls (8 in all); shared, the budget holds
    assert.equal(5, ok)
    assert.equal(3, refused)
    assert.equal(5, fake:stats().requests - before)
    assert.equal("5", e1:sql("SELECT calls FROM ratchet_budget"))
  end)

  it("share the gateway's rate limits: requests alternating across two engines get the limit, not twice it", function()
    local cfg = string.format([[
provider "fake" { kind = "openai", base_url = %q, default_model = "target", max_retries = 0, timeout_ms = 5000 }
gateway = { providers = { "fake" }, requests_per_minute = 4 }
]], "http://" .. fake.addr .. "/v1")
    e1 = engine.start { store = "postgres", config = cfg }
    e2 = engine.start { store = "postgres", dsn = e1.dsn, config = cfg }
    -- each engine has read the other's heartbeat: two live engines, a share of 2 requests each
    assert.truthy(engine.eventually(5, function()
      return #store_of(e1).engines == 2 and #store_of(e2).engines == 2
    end))
    local before = fake:stats().requests
    local ok, limited = 0, 0
    for i = 1, 12 do
      local e = i % 2 == 0 and e2 or e1
      local r = e:post("/v1/chat/completions", { model = "target", messages = { { role = "user", content = "hi " .. i } } })
      if r.status == 200 then
        ok = ok + 1
      else
        assert.equal(429, r.status, r.body)
        assert.matches("requests_per_minute", r.body)
        limited = limited + 1
      end
    end
    -- per engine, each would have let 4 through (8 in all); shared, the total holds
    assert.equal(4, ok)
    assert.equal(8, limited)
    assert.equal(4, fake:stats().requests - before)
    assert.equal(2, e1:get("/v1/status").json.gateway.rate_share_engines)
  end)
end)
