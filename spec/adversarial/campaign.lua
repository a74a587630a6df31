-- spec/adversarial/campaign.lua — drives the adversarial scenario against a
-- running engine and fake LLM server through their HTTP APIs: application
-- traffic (the simulated target run in this process, each request's version
-- resolved by the engine's sticky split), one optimization cycle per plan of
-- world.PLANS, the canaries those cycles start, a simulated reviewer for
-- candidates held for approval, and a simulated operator who reverts any
-- promotion ground truth finds was not a genuine improvement (so the next
-- attack meets the same baseline). It records what happened to every
-- candidate, classifies every promotion with spec/adversarial/truth.lua, and
-- counts the engine's LLM calls from its ledger.
local engine = require "spec.helpers.engine"
local cjson = require "cjson"
local socket = require "socket"
local world = require "spec.adversarial.world"
local truth = require "spec.adversarial.truth"

local M = {}

-- canary traffic: small batches first (the early steps decide fast), larger
-- ones once a canary runs long (per-slice evidence on a 5 % slice takes
-- thousands of orders)
local function canary_batch(sent) return sent < 400 and 40 or 200 end
local MAX_CANARY_ORDERS = 12000 -- a canary still live after this many orders fails the scenario
local PRE_CYCLE_ORDERS = 400   -- about 120 failures on the first version; the miner reads the newest 90
local SHIFT_AFTER = 40          -- canary-phase orders before the distribution shift starts

local Campaign = {}
Campaign.__index = Campaign

-- opts: { engine = e, control = path, log = path, verbose = bool }
function M.new(opts)
  truth.forget_attacks()
  local c = setmetatable({ e = opts.engine, control = opts.control, log_path = opts.log, verbose = opts.verbose,
    state = { shifted = false }, versions = {}, unconfirmed = {}, cycles = {}, promotions = {},
    started = socket.gettime(), seq = {} }, Campaign)
  return c
end

local function check(r, what)
  if r.status >= 300 then error(what .. ": HTTP " .. r.status .. " " .. r.body, 2) end
  return r.json
end

function Campaign:say(fmt, ...)
  if self.verbose then io.stderr:write(string.format("[adversarial %5.1fs] ", socket.gettime() - self.started),
    string.format(fmt, ...), "\n") end
end

---------------------------------------------------------------------------
-- setup

function Campaign:setup()
  local e = self.e
  for _, p in ipairs({ { world.PROMPT, world.BASE }, { world.CLEAN_PROMPT, world.CLEAN } }) do
    check(e:post("/v1/prompts", { name = p[1], description = "SIMULATED order reading (adversarial suite)" }), "create prompt")
    check(e:post("/v1/prompts/" .. p[1] .. "/versions", {
      messages = { { role = "system", content = p[2] }, { role = "user", content = world.USER } },
      model = { provider = "sim", model = "target" }, note = "written by hand" }), "add version")
    check(e:post("/v1/prompts/" .. p[1] .. "/promote", { version = 1, reason = "initial release" }), "promote v1")
    self.seq[p[1]] = 0
  end
  local lines = {}
  for _, case in ipairs(world.golden()) do lines[#lines + 1] = cjson.encode(case) end
  check(e:post("/v1/datasets/" .. world.DATASET .. "/cases", table.concat(lines, "\n"),
    { content_type = "application/x-ndjson" }), "import the golden set")
end

-- the system message of a version (versions are immutable: cached)
function Campaign:system_of(prompt, version)
  local k = prompt .. "#" .. version
  if not self.versions[k] then
    local v = check(self.e:get(string.format("/v1/prompts/%s/versions/%d", prompt, version)), "read version")
    self.versions[k] = v.messages[1].content
  end
  return self.versions[k]
end

function Campaign:production(prompt)
  local r = check(self.e:get("/v1/prompts/" .. prompt), "resolve")
  return r.version
end

---------------------------------------------------------------------------
-- traffic

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-_%.~]", function(ch) return string.format("%%%02X", ch:byte()) end))
end

-- Sends orders (a list from world) as application requests: resolve the
-- version for the caller's key, run the simulated target, ingest the traces.
-- Returns { [version] = count }.
function Campaign:send(prompt, orders)
  local traces, used = {}, {}
  self.unconfirmed[prompt] = self.unconfirmed[prompt] or math.floor(socket.gettime() * 1000) - 1
  for _, o in ipairs(orders) do
    local key = "u-" .. o.key
    local r = check(self.e:get("/v1/prompts/" .. prompt .. "?key=" .. urlencode(key)), "resolve")
    local system = self:system_of(prompt, r.version)
    used[r.version] = (used[r.version] or 0) + 1
    if o.sentence then truth.note_attack(o.sentence) end
    traces[#traces + 1] = {
      id = prompt .. "." .. o.key:gsub("[^%w%-_%.:]", "_"),
      prompt = { name = prompt, version = r.version },
      input = { variables = { order = o.text } },
      output = world.target(system, "Order: " .. o.text),
      latency_ms = 400 + world.hash(o.key) % 200, -- the same for every version: no latency signal
      metadata = { segment = o.segment },
    }
  end
  for i = 1, #traces, 500 do
    local batch = { table.unpack(traces, i, math.min(#traces, i + 499)) }
    local res = check(self.e:post("/v1/traces", batch), "ingest")
    for _, item in ipairs(res.items or res.results or {}) do
      if item.status == "rejected" then error("a trace was rejected: " .. cjson.encode(item)) end
    end
  end
  return used
end

-- the traces of a prompt since a time that have no stored verdict yet
function Campaign:unjudged(prompt, since_ms)
  local n, cursor = 0, nil
  repeat
    local r = check(self.e:get(string.format("/v1/traces?prompt=%s&since=%d&limit=1000%s", prompt, since_ms,
      cursor and ("&cursor=" .. cursor) or "")), "list traces")
    for _, t in ipairs(r.items) do
      if t.verdict ~= "pass" and t.verdict ~= "fail" and t.verdict ~= "error" then n = n + 1 end
    end
    cursor = r.next_cursor
  until cursor == nil or cursor == cjson.null
  return n
end

-- waits until every trace sent has its verdict stored (the miner reads
-- stored verdicts; online evaluation writes them in batches)
function Campaign:wait_evaluated()
  local ok = engine.eventually(60, function()
    for prompt, since in pairs(self.unconfirmed) do
      if self:unjudged(prompt, since) > 0 then return false end
    end
    return true
  end)
  assert(ok, "online evaluation did not store a verdict for every trace sent: " .. self.e:get("/v1/status").body)
  self.unconfirmed = {}
end

function Campaign:traffic(prompt, stream, n)
  local orders = {}
  for i = 1, n do orders[i] = world.order(stream, i, self.state) end
  return self:send(prompt, orders)
end

---------------------------------------------------------------------------
-- one cycle

-- The loop view of a prompt with every event after the last one seen (the
-- view's state is taken once the moves that led to it are stored).
function Campaign:loop_view(prompt)
  local view, events = nil, {}
  repeat
    local cursor = #events > 0 and events[#events].seq or self.seq[prompt]
    view = check(self.e:get(string.format("/v1/loop/%s?cursor=%d&limit=200", prompt, cursor)), "loop view")
    for _, ev in ipairs(view.events) do events[#events + 1] = ev end
  until #view.events < 200
  view.events = events
  return view
end

-- the optimizer's answer for a cycle, from its log
function Campaign:proposal(cycle)
  local found
  for line in (engine.read_file(self.log_path) or ""):gmatch("[^\n]+") do
    local p = cjson.decode(line)
    if p.cycle == cycle then found = p end
  end
  return found
end

local function ledger_count(e, since_ms, kind)
  local r = check(e:get(string.format("/v1/llm/calls?since=%d&caller_kind=%s&limit=1000", since_ms, kind)), "ledger")
  return #r.items, #r.items >= 1000
end

function Campaign:run_plan(n, plan)
  local e, prompt = self.e, plan.prompt or world.PROMPT
  local cyc = { n = n, plan = plan.name, prompt = prompt, events = {}, canary_orders = 0 }
  self.cycles[#self.cycles + 1] = cyc
  cyc.baseline = self:production(prompt)
  -- fresh traffic on the production version (enough that the miner's newest
  -- max_failures come from it, whatever earlier canaries sent), the plan's
  -- own traffic newest
  self:traffic(prompt, "c" .. n, PRE_CYCLE_ORDERS)
  local extra = {}
  for j = 1, plan.poison or 0 do
    -- a third of them fullwidth when the plan copies normalised text
    local wide = nil
    if plan.wide then wide = j % 3 == 0 end
    extra[#extra + 1] = world.poisoned(string.format("p%d:%d", n, j), (j - 1) % 8, self.state, wide)
  end
  for j = 1, plan.spam or 0 do extra[#extra + 1] = world.make("spam", string.format("s%d:%d", n, j), self.state) end
  if #extra > 0 then self:send(prompt, extra) end
  self:wait_evaluated()
  engine.write_file(self.control, cjson.encode({ cycle = n, plan = plan.name }))
  local t0 = math.floor(socket.gettime() * 1000) - 1
  local r = e:post("/v1/prompts/" .. prompt .. "/optimize", {})
  assert(r.status == 202, "optimize " .. prompt .. ": " .. r.status .. " " .. r.body)
  self:say("cycle %d (%s) on %s v%d: started", n, plan.name, prompt, cyc.baseline)
  local deadline = socket.gettime() + 240 * engine.slow
  while true do
    local l = self:loop_view(prompt)
    for _, ev in ipairs(l.events) do
      self.seq[prompt] = ev.seq
      cyc.events[#cyc.events + 1] = ev
      self:say("  %-10s %s", ev.kind, ev.message:sub(1, 300))
      if ev.kind == "promote" then self:promoted(cyc, ev) end
      if ev.kind == "error" then error("cycle " .. n .. " (" .. plan.name .. ") ended in an engine error: " .. ev.message, 0) end
      if ev.kind == "approval" then cyc.held = { version = l.version, run = l.run, message = ev.message } end
    end
    -- back to idle after the POST: the cycle is over (whatever its last event)
    if l.state == "idle" and #cyc.events > 0 then break end
    if l.state == "awaiting_approval" and cyc.held and not cyc.held.answered then
      -- the simulated reviewer: nothing held is let through
      cyc.held.answered = true
      check(e:post("/v1/runs/" .. cyc.held.run .. "/reject",
        { reason = "simulated reviewer: held candidates are not approved in this scenario" }), "reject")
    elseif l.state == "canary" then
      if plan.shift and not self.state.shifted and cyc.canary_orders >= SHIFT_AFTER then
        self.state.shifted = true
        cyc.shift_at = cyc.canary_orders
        self:say("  -- distribution shift: half the wholesale orders now come from the KLM- catalogue")
      end
      local batch = canary_batch(cyc.canary_orders)
      self:traffic(prompt, string.format("k%d:%d", n, cyc.canary_orders), batch)
      cyc.canary_orders = cyc.canary_orders + batch
      self:wait_evaluated()
      assert(cyc.canary_orders <= MAX_CANARY_ORDERS, "the canary of cycle " .. n .. " is still live after "
        .. cyc.canary_orders .. " orders: " .. cjson.encode(l))
    else
      socket.sleep(0.05)
    end
    assert(socket.gettime() < deadline, "cycle " .. n .. " did not end: " .. cjson.encode(l))
  end
  if plan.shift and not self.state.shifted then
    self.state.shifted = true -- the shift comes whether or not a canary was there to meet it
    cyc.shift_at = "after the cycle (no canary)"
  end
  -- where the gate's calls went: per version, calls made (not cached) and results
  for _, ev in ipairs(cyc.events) do
    if ev.kind == "gate_started" and ev.detail and ev.detail.run then
      local per, cursor = {}, nil
      repeat
        local r = check(e:get("/v1/runs/" .. ev.detail.run .. "/results?limit=1000"
          .. (cursor and ("&cursor=" .. cursor) or "")), "results")
        for _, x in ipairs(r.items) do
          local v = per[x.version] or { calls = 0, results = 0 }
          per[x.version] = v
          v.results = v.results + 1
          if not x.cached then v.calls = v.calls + 1 end
        end
        cursor = r.next_cursor ~= cjson.null and r.next_cursor or nil
      until not cursor
      local parts = {}
      for v, x in pairs(per) do parts[#parts + 1] = string.format("v%d %d calls/%d results", v, x.calls, x.results) end
      table.sort(parts)
      cyc.gate_breakdown = table.concat(parts, ", ")
      self:say("  gate calls: %s", cyc.gate_breakdown)
    end
  end
  cyc.llm_template, cyc.ledger_full = ledger_count(e, t0, "template")
  local runs, full = ledger_count(e, t0, "run")
  cyc.llm_run, cyc.ledger_full = runs, cyc.ledger_full or full
  cyc.proposal = self:proposal(n)
  self:outcomes(cyc)
  return cyc
end

-- ground truth on a promotion; the simulated operator reverts anything that
-- is not a genuine improvement
function Campaign:promoted(cyc, ev)
  local prompt, version = cyc.prompt, ev.detail.version
  local new, old = self:system_of(prompt, version), self:system_of(prompt, cyc.baseline)
  local verdict = truth.classify(new, old, self.state)
  local p = { cycle = cyc.n, plan = cyc.plan, prompt = prompt, version = version, replaced = cyc.baseline,
    class = verdict.class, poisoned = verdict.poisoned, worse = verdict.worse, better = verdict.better,
    shifted = self.state.shifted, message = ev.message, stats = ev.detail.stats }
  self.promotions[#self.promotions + 1] = p
  cyc.promotion = p
  self:say("  ground truth: v%d over v%d is %s%s (better: %s; worse: %s)", version, cyc.baseline, verdict.class,
    verdict.poisoned and (", poisoned: " .. verdict.poisoned) or "", table.concat(verdict.better, ","),
    table.concat(verdict.worse, ","))
  if verdict.class ~= "genuine" then
    engine.eventually(10, function() return self:loop_view(prompt).state == "idle" end)
    check(self.e:post("/v1/prompts/" .. prompt .. "/promote", { version = cyc.baseline,
      reason = "simulated operator: ground truth found v" .. version .. " " .. verdict.class }), "revert")
    p.reverted = true
  end
end

-- what happened to each candidate the optimizer proposed
function Campaign:outcomes(cyc)
  local by_version, invalid = {}, {}
  local valid_versions = {}
  for _, ev in ipairs(cyc.events) do
    local d = ev.detail or {}
    if ev.kind == "candidates" then
      for _, v in ipairs(d.versions or {}) do valid_versions[#valid_versions + 1] = v end
      for _, inv in ipairs(d.invalid or {}) do invalid[inv.index + 1] = inv.reason end
    elseif ev.kind == "gate" then
      for _, v in ipairs(d.verdicts or {}) do
        by_version[v.version] = by_version[v.version] or {}
        by_version[v.version].gate = v.verdict
        by_version[v.version].reasons = v.reasons
      end
    elseif ev.kind == "canary" or ev.kind == "promote" or ev.kind == "rollback" then
      by_version[d.version] = by_version[d.version] or {}
      by_version[d.version][ev.kind] = ev.message
    end
  end
  if cyc.held then
    by_version[cyc.held.version] = by_version[cyc.held.version] or {}
    by_version[cyc.held.version].held = cyc.held.message
  end
  cyc.candidates = {}
  local vi = 0
  for _, c in ipairs((cyc.proposal or {}).candidates or {}) do
    local out = { kind = c.kind, mode = c.mode, copy = c.copy, skipped = c.skipped }
    if not c.skipped then
      if invalid[c.index] then
        out.stage, out.reason = "pre-check", invalid[c.index]
      else
        vi = vi + 1
        out.version = valid_versions[vi]
        local o = by_version[out.version] or {}
        out.gate, out.gate_reasons = o.gate, o.reasons
        if o.promote then out.stage, out.reason = "promoted", o.promote
        elseif o.rollback then out.stage, out.reason = "rolled back", o.rollback
        elseif o.held then out.stage, out.reason = "held", o.held
        elseif o.canary then out.stage = "canary"
        elseif o.gate then out.stage = "gate: " .. o.gate
        else out.stage = "no verdict" end
      end
    end
    cyc.candidates[#cyc.candidates + 1] = out
  end
end

function Campaign:run()
  for n, plan in ipairs(world.PLANS) do self:run_plan(n, plan) end
  self.wall = socket.gettime() - self.started
  return self
end

return M
