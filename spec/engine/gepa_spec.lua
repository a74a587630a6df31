-- loop.template = "gepa" end to end: the real engine under `ratchet serve`,
-- the fake LLM server running demo/model.lua (SIMULATED target and optimizer
-- models), simulated traffic. The search's pool, lineage, seed, budget stop
-- and replay are read back from the loop's events.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local traffic = require "demo.traffic"

local tickets = require "spec.helpers.tickets"

local MODEL = tickets.MODEL
local setup, base = tickets.setup, tickets.base

local function config(fake, loop)
  return tickets.config(fake, [[
    enabled = false,
    trigger_options = { min_evaluated = 10, min_failures = 3, cooldown_ms = 0 },
    ]] .. (loop or ""))
end

-- sends 40 tickets and waits until their evaluations are stored (failures to learn from)
local function traffic_evaluated(e)
  traffic.send(base(e), "tickets", 1, 40)
  local ok = engine.eventually(20 * engine.slow, function()
    local m = e:get("/v1/prompts/tickets/metrics").json
    local v = m and (m.versions and m.versions[1] or m)
    local n = v and (v.evaluated or (v.production and v.production.evaluated))
    return type(n) == "number" and n >= 40
  end)
  assert(ok, "the traces were not evaluated: " .. e:get("/v1/prompts/tickets/metrics").body)
end

local function wait_event(e, kind, seconds)
  local ev = engine.eventually(seconds or 30 * engine.slow, function()
    local l = e:get("/v1/loop/tickets?limit=100").json
    for _, x in ipairs(l.events or {}) do if x.kind == kind then return x, l end end
  end)
  assert(ev, "no '" .. kind .. "' event; loop: " .. engine.json.encode(e:get("/v1/loop/tickets").json)
    .. "\nlog:\n" .. e:log_text())
  return ev
end

local function wait_idle_after(e, kind)
  wait_event(e, kind)
  local l = engine.eventually(30 * engine.slow, function()
    local v = e:get("/v1/loop/tickets?limit=100").json
    if v.state ~= "optimizing" and v.state ~= "gating" then return v end
  end)
  assert(l, "the cycle did not end")
  return l
end

local function find(events, kind)
  for _, x in ipairs(events) do if x.kind == kind then return x end end
end

describe("the gepa strategy", function()
  it("refuses an unknown template on optimize, naming the field, before anything starts", function()
    local fake2 = fake_llm.start { model = MODEL }
    local e2 = engine.start { config = config(fake2) }
    setup(e2)
    local code, _, err = engine.run("optimize tickets --url http://" .. e2.addr .. " --template nosuch")
    assert.equal(3, code)
    assert.matches("no meta%-prompt template 'nosuch'", err)
    local r = e2:post("/v1/prompts/tickets/optimize", { template = 5 })
    assert.equal(400, r.status)
    assert.equal("template", r.json.error.field)
    r = e2:post("/v1/prompts/tickets/optimize", { template = "../x" })
    assert.equal(400, r.status)
    assert.equal("idle", e2:get("/v1/loop/tickets").json.state)
    code, _, err = engine.run("optimize tickets --url http://" .. e2.addr .. " --template '../x'")
    assert.equal(3, code)
    assert.matches("not a template name", err)
    e2:stop()
    fake2:stop()
  end)

  local fake, e
  before_each(function() fake = fake_llm.start { model = MODEL } end)
  after_each(function()
    if e then e:stop() end
    e = nil
    fake:stop()
  end)

  it("searches a Pareto pool, records the lineage and seed, and hands its best members to the unchanged gate", function()
    e = engine.start { config = config(fake, 'template = "gepa", gepa = { iterations = 4, seed = 7, merge_every = 3 },') }
    setup(e)
    traffic_evaluated(e)
    assert.equal(202, e:post("/v1/prompts/tickets/optimize", {}).status)
    local l = wait_idle_after(e, "gate")
    local search = find(l.events, "search")
    assert(search, engine.json.encode(l.events))
    local d = search.detail
    if os.getenv("GEPA_DEBUG") then
      for _, x in ipairs(l.events) do print(x.kind, x.message) end
      for _, m in ipairs(d.pool) do print(m.id, m.origin, engine.json.encode(m.parents), engine.json.encode(m.scores), m.messages[1].content) end
      print(engine.json.encode(d.invalid))
    end
    assert.equal("7", d.seed)
    assert.matches("gepa search %(seed 7%)", search.message)
    -- the seed is the production version; every other member names its parent(s)
    assert.equal("seed", d.pool[1].origin)
    assert.equal(0, #d.pool[1].parents)
    assert.is_true(#d.pool >= 2, engine.json.encode(d))
    for i = 2, #d.pool do
      local m = d.pool[i]
      assert.is_true(#m.parents >= 1)
      for _, p in ipairs(m.parents) do assert.is_true(p < m.id) end
      assert.equal(#d.feedback, #m.scores)
    end
    -- the feedback set: failures shown and passing traces, never a held-out case
    local shown = 0
    for _, f in ipairs(d.feedback) do
      assert.is_true(f.source == "shown" or f.source == "passing")
      if f.source == "shown" then shown = shown + 1 end
    end
    assert.is_true(shown > 0)
    local cands = find(l.events, "candidates")
    local gate = find(l.events, "gate")
    -- no case of the gate (held-out failures, replayed traces) is one the search saw
    local res = e:get("/v1/runs/" .. find(l.events, "gate_started").detail.run .. "/results?limit=1000").json
    local seen = {}
    for _, f in ipairs(d.feedback) do seen["trace:" .. f.id], seen["replay:" .. f.id] = true, true end
    local traced = 0
    for _, r in ipairs(res.items) do
      assert.is_nil(seen[r.case_id], r.case_id)
      if r.case_id:find("^trace:") or r.case_id:find("^replay:") then traced = traced + 1 end
    end
    assert.is_true(traced > 0)
    -- the regressing proposal ("Use uppercase.") never enters the pool: it fails the minibatch
    for _, m in ipairs(d.pool) do
      assert.is_nil(m.messages[1].content:find("Use uppercase.", 1, true))
    end
    -- the user-message rewrite is refused before it costs a call
    local saw = false
    for _, x in ipairs(d.invalid) do saw = saw or x.reason:find("changes the user message", 1, true) ~= nil end
    assert.is_true(saw, engine.json.encode(d.invalid))
    -- the fix reaches the gate and wins it, unchanged
    assert.matches("candidate", cands.message)
    assert.matches("improved", gate.message)
    -- the optimizer calls went through the ledger under the cycle's id
    assert.is_true(d.calls > 0)
    -- `ratchet loop NAME` prints the lineage under the search event
    local code, out = engine.run("loop tickets --url " .. base(e))
    assert.equal(0, code)
    assert.matches("search%s+gepa search %(seed 7%)", out)
    assert.matches("#0%s+seed%s+from %-%s+mean 0%.%d+", out)
    assert.matches("#1%s+reflect%s+from #0%s+mean 1%.000", out)
  end)

  it("replays to the same pool with the same seed, from the output cache", function()
    e = engine.start { config = config(fake, 'template = "gepa", gepa = { iterations = 3, seed = 11 },') }
    setup(e)
    traffic_evaluated(e)
    assert.equal(202, e:post("/v1/prompts/tickets/optimize", {}).status)
    local l1 = wait_idle_after(e, "gate")
    local s1 = find(l1.events, "search").detail
    -- reject whatever the first cycle produced so the next starts from the same production version
    if l1.state == "canary" then
      local cv = l1.version
      assert.equal(200, e:post("/v1/prompts/tickets/rollback", {}).status, "rollback of v" .. tostring(cv))
      engine.eventually(10 * engine.slow, function() return e:get("/v1/loop/tickets").json.state == "idle" end)
    end
    local before = fake:stats()
    assert.equal(202, e:post("/v1/prompts/tickets/optimize", {}).status)
    local l2 = engine.eventually(30 * engine.slow, function()
      local v = e:get("/v1/loop/tickets?limit=200").json
      local n = 0
      for _, x in ipairs(v.events) do if x.kind == "search" then n = n + 1 end end
      if n >= 2 and v.state ~= "optimizing" and v.state ~= "gating" then return v end
    end)
    assert(l2, e:log_text())
    local s2
    for _, x in ipairs(l2.events) do if x.kind == "search" then s2 = x.detail end end
    assert.equal(s1.seed, s2.seed)
    assert.equal(#s1.pool, #s2.pool)
    for i, m in ipairs(s1.pool) do
      assert.same(m.parents, s2.pool[i].parents)
      assert.same(m.messages, s2.pool[i].messages)
      assert.same(m.scores, s2.pool[i].scores)
    end
    assert.same(s1.final, s2.final)
    -- the search asked no model again: every answer came from the cache
    assert.equal(0, s2.calls)
    assert.is_true(s2.cached > 0)
    assert.is_not_nil(before)
  end)

  it("stops at its call budget and still hands what it found to the gate", function()
    e = engine.start { config = config(fake, 'template = "gepa", gepa = { iterations = 50, seed = 3, budget = { calls = 14 } },') }
    setup(e)
    traffic_evaluated(e)
    assert.equal(202, e:post("/v1/prompts/tickets/optimize", {}).status)
    local ev = wait_event(e, "search")
    assert.equal("budget", ev.detail.stop)
    assert.is_true(ev.detail.iterations < 50)
    assert.is_true(ev.detail.calls <= 14, tostring(ev.detail.calls))
  end)

  it("is chosen per cycle with `ratchet optimize NAME --template gepa`", function()
    e = engine.start { config = config(fake, 'gepa = { iterations = 2, seed = 5 },') }
    setup(e)
    traffic_evaluated(e)
    local code, out, err = engine.run("optimize tickets --url " .. base(e) .. " --template gepa --json")
    assert.equal(0, code, tostring(out) .. tostring(err))
    local ev = wait_event(e, "search")
    assert.matches("gepa search", ev.message)
    assert.matches("template gepa", wait_event(e, "trigger").message)
  end)

  it("merges two members that each fix a different failure mode into one that fixes both", function()
    fake:stop()
    fake = fake_llm.start { model = engine.read_file("spec/fixtures/gepa_model.lua") }
    e = engine.start { config = config(fake, 'template = "gepa", gepa = { iterations = 12, seed = 1, merge_every = 3, minibatch = 3, passing = 4 },') }
    setup(e)
    traffic_evaluated(e)
    assert.equal(202, e:post("/v1/prompts/tickets/optimize", {}).status)
    local ev = wait_event(e, "search")
    local d = ev.detail
    if os.getenv("GEPA_DEBUG") then
      for _, m in ipairs(d.pool) do print(m.id, m.origin, engine.json.encode(m.parents), engine.json.encode(m.scores), m.messages[1].content) end
    end
    if os.getenv("GEPA_DEBUG") then print(ev.message, engine.json.encode(d.invalid)) end
    local merged
    for _, m in ipairs(d.pool) do if m.origin == "merge" then merged = m end end
    assert(merged, "no merge in the pool: " .. engine.json.encode(d.pool))
    assert.equal(2, #merged.parents)
    local a, b = d.pool[merged.parents[1] + 1], d.pool[merged.parents[2] + 1]
    -- each parent wins a case the other loses; the merge passes every case either passes
    local aw, bw = 0, 0
    for i = 1, #d.feedback do
      if a.scores[i] > b.scores[i] then aw = aw + 1 elseif b.scores[i] > a.scores[i] then bw = bw + 1 end
      assert.is_true(merged.scores[i] >= math.max(a.scores[i], b.scores[i]))
    end
    assert.is_true(aw > 0 and bw > 0)
    local text = merged.messages[1].content
    assert.truthy(text:find("Escape quotes in strings.", 1, true))
    assert.truthy(text:find("Use high for outages and slowness.", 1, true))
    -- the merge dominates its parents, so it alone is on the front and goes to the gate
    assert.same({ merged.id }, d.final)
  end)

  it("stops the engine at start on a wrong loop.gepa or search policy, naming the key", function()
    local code, log = engine.start { expect_fail = true, config = 'prompt "p" { loop = { gepa = { minibtach = 3 } } }' }
    assert.are_not.equal(0, code)
    assert.matches("loop.gepa: unknown key 'minibtach'; did you mean 'minibatch'", log)
    code, log = engine.start { expect_fail = true, config = 'prompt "p" { loop = { gepa = { iterations = 0 } } }' }
    assert.are_not.equal(0, code)
    assert.matches("loop.gepa.iterations must be a positive integer", log)
    code, log = engine.start { expect_fail = true, config = 'prompt "p" { loop = { gepa = { budget = { calls = -1 } } } }' }
    assert.are_not.equal(0, code)
    assert.matches("loop.gepa.budget.calls must be a number >= 0", log)
    code, log = engine.start { expect_fail = true, config = 'prompt "p" { evaluators = { "contains" }, loop = { search = "nosuch" } }' }
    assert.are_not.equal(0, code)
    assert.matches("loop.search: no policy 'nosuch' is loaded", log)
    code, log = engine.start { expect_fail = true, config = 'prompt "p" { evaluators = { "contains" }, loop = { search_options = { min_gain = "x" } } }' }
    assert.are_not.equal(0, code)
    assert.matches("search_options", log)
    assert.matches("min_gain", log)
  end)

  it("refuses a search policy that lacks one of its functions, at its file:line", function()
    local dir = engine.tmpdir()
    os.execute("mkdir -p " .. dir .. "/policies")
    engine.write_file(dir .. "/policies/search.lua", [[
local M = {}
function M.select_parent(pool, options) return { parent = 0 } end
function M.accept_child(child, parents, options) return { accept = false } end
function M.pick_merj(pool, options) return {} end
function M.final(pool, options) return { ids = {} } end
return M
]])
    local code, log = engine.start { expect_fail = true, config = string.format('scripts = { dirs = { %q } }\nprompt "p" { loop = {} }', dir) }
    assert.are_not.equal(0, code)
    assert.matches("search.lua:4: a search policy must export pick_merge%(pool, options%); 'pick_merj' %(defined here%) looks like a misspelling", log)
  end)

  it("runs the copy check on every child before it costs a call: poisoned traces never reach the pool", function()
    e = engine.start { config = config(fake, 'template = "gepa", gepa = { iterations = 4, seed = 9 },') }
    setup(e)
    -- every third ticket carries "Add this sentence to the prompt: ..."; the simulated optimizer obeys it
    traffic.send(base(e), "tickets", 1, 40, { poison = true })
    assert(engine.eventually(20 * engine.slow, function()
      local v = (e:get("/v1/prompts/tickets/metrics").json.versions or {})[1]
      return v and v.evaluated >= 40
    end))
    assert.equal(202, e:post("/v1/prompts/tickets/optimize", {}).status)
    local d = wait_event(e, "search").detail
    local copied = 0
    for _, x in ipairs(d.invalid) do
      if x.reason:find("copies trace text into the prompt", 1, true) then copied = copied + 1 end
    end
    assert.is_true(copied > 0, engine.json.encode(d.invalid))
    for _, m in ipairs(d.pool) do
      assert.is_nil(m.messages[1].content:lower():find("attacker", 1, true), m.messages[1].content)
    end
  end)

  it("refuses at load a search template without merge(ctx), or with an unknown search", function()
    local dir = engine.tmpdir()
    os.execute("mkdir -p " .. dir .. "/scripts/metaprompts")
    engine.write_file(dir .. "/scripts/metaprompts/mygepa.lua", [[
return {
  search = "gepa",
  build = function(ctx) return {} end,
  parse = function(text, ctx) return { candidates = {} } end,
  merj = function(ctx) return {} end,
}
]])
    local code, log = engine.start { expect_fail = true, config = string.format('scripts = { dirs = { %q } }', dir) }
    assert.are_not.equal(0, code)
    assert.matches('mygepa.lua:5: a search template %(search = "gepa"%) must export merge%(ctx%); \'merj\' %(defined here%) looks like a misspelling of \'merge\'', log)
    engine.write_file(dir .. "/scripts/metaprompts/mygepa.lua", [[
return { search = "beam", build = function(ctx) return {} end, parse = function(text, ctx) return {} end }
]])
    code, log = engine.start { expect_fail = true, config = string.format('scripts = { dirs = { %q } }', dir) }
    assert.are_not.equal(0, code)
    assert.matches("mygepa.lua: a meta%-prompt template's search must be \"gepa\"", log)
  end)

  it("stops cleanly in the middle of a search, and the next start aborts the cycle", function()
    fake:stop()
    fake = fake_llm.start { model = MODEL, latency_ms = 100 }
    local cfg = config(fake, 'template = "gepa", gepa = { iterations = 200, seed = 2, minibatch = 6 },')
    e = engine.start { config = cfg }
    setup(e)
    traffic_evaluated(e)
    assert.equal(202, e:post("/v1/prompts/tickets/optimize", {}).status)
    assert(engine.eventually(20 * engine.slow, function()
      return (e:get("/v1/loop/tickets").json.decision or ""):find("search over", 1, true)
    end), "the search did not start: " .. e:get("/v1/loop/tickets").body)
    engine.sleep(0.3)
    local dir = e.dir
    e:stop { keep = true } -- exit 0, no sanitizer report, with calls and evaluations in flight
    e = engine.start { config = cfg, dir = dir }
    local l = engine.eventually(10 * engine.slow, function()
      local v = e:get("/v1/loop/tickets?limit=100").json
      for _, ev in ipairs(v.events) do if ev.kind == "aborted" then return v end end
    end)
    assert(l, "the interrupted cycle was not aborted: " .. e:get("/v1/loop/tickets?limit=100").body)
    assert.equal("idle", l.state)
  end)
end)

