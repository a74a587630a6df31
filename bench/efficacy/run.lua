-- bench/efficacy/run.lua — the efficacy benchmark (make bench-efficacy): which
-- strategy fixes most failure modes per LLM call. Everything is SIMULATED
-- (bench/efficacy/world.lua): the targets, the optimizer and the judge are
-- Lua, served by `ratchet fake-llm` and run by the real engine (`ratchet
-- serve`: mining, the strategy's template, the gate, the registry).
--
-- For each task x strategy x seed: a fresh engine with the task's first
-- prompt in production; `cycles` rounds of simulated traffic, `ratchet
-- optimize --template STRATEGY`, and a gate winner promoted (approve, then
-- promote by hand: no canary traffic is simulated). Then ground truth on
-- fresh inputs. Printed: a table per task and strategy (medians and ranges
-- over seeds) and the gate's calls per clean improvement with early stopping
-- off and on, on the same seeds.
--
--   lua5.4 bench/efficacy/run.lua [--seeds N] [--cycles N] [--tasks a,b] [--strategies a,b] [--no-gate-baseline]
package.path = "./?.lua;./?/init.lua;./spec/?.lua;" .. package.path
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local cjson = require "cjson"
local socket = require "socket"

local ROOT = engine.root
local WORLD_SRC = assert(engine.read_file(ROOT .. "/bench/efficacy/world.lua"))
local W = dofile(ROOT .. "/bench/efficacy/world.lua")

local opts = { seeds = 10, cycles = 3, traffic = 150, fresh = 300,
  tasks = W.order, strategies = { "plain", "critique_rewrite", "history", "gepa" }, gate_baseline = true }
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    local function list(s) local t = {}; for x in s:gmatch("[^,]+") do t[#t + 1] = x end; return t end
    if a == "--seeds" then opts.seeds = tonumber(arg[i + 1]); i = i + 1
    elseif a == "--cycles" then opts.cycles = tonumber(arg[i + 1]); i = i + 1
    elseif a == "--tasks" then opts.tasks = list(arg[i + 1]); i = i + 1
    elseif a == "--strategies" then opts.strategies = list(arg[i + 1]); i = i + 1
    elseif a == "--no-gate-baseline" then opts.gate_baseline = false
    else error("unknown argument " .. a .. " (see the header of bench/efficacy/run.lua)") end
    i = i + 1
  end
end

-- A real optimizer model (the targets and the judge stay simulated: the
-- world knows the truth): EFFICACY_API_KEY, EFFICACY_BASE_URL (default
-- https://api.openai.com/v1), EFFICACY_OPTIMIZER_MODEL (default gpt-4o).
local REAL = os.getenv("EFFICACY_API_KEY") and os.getenv("EFFICACY_API_KEY") ~= "" and {
  base_url = os.getenv("EFFICACY_BASE_URL") or "https://api.openai.com/v1",
  model = os.getenv("EFFICACY_OPTIMIZER_MODEL") or "gpt-4o" } or nil

-- simulated prices, per call: the optimizer model and the target model
local PRICE = { optimizer = 0.01, target = 0.0005 }

local function wrap(src) return "local W = (function()\n" .. src .. "\nend)()\n" end

local MODEL_TAIL = [[
local cjson = require "cjson"
return function(request)
  local system, user = "", ""
  for _, m in ipairs(request.messages or {}) do
    if m.role == "system" then system = system .. m.content end
    if m.role == "user" then user = m.content end
  end
  if system:find("prompt engineer", 1, true) then
    local want = tonumber(user:match("Write (%d+) different candidate")) or 1
    return cjson.encode({ candidates = W.optimizer(user, SEED, want) })
  end
  local task = W.task_of(system)
  if not task then return "?" end
  local vars = {}
  local k, v = W.tasks[task].user:match("^(.-){{(%w+)}}$")
  vars[v] = user:sub(#k + 1)
  return W.targets[task](system, vars)
end
]]

local JUDGE_TAIL = [[
return {
  name = "efficacy_judge",
  description = "the SIMULATED judge of the efficacy benchmark (bench/efficacy/world.lua): truth from the input",
  options = { task = { type = "string", required = true, description = "extract, triage, tools or helpdesk" } },
  evaluate = function(case, opts)
    local vars = (case.input or {}).variables or {}
    local ok, reason = W.judge(opts.task, vars, case.output)
    return { pass = ok, score = ok and 1 or 0, reason = reason }
  end,
}
]]

local function http(e, method, path, body)
  local r = e:request(method, path, body and { body = body } or nil)
  return r
end

local function post(e, path, body)
  local r = e:post(path, body)
  if r.status >= 300 then error(path .. ": " .. r.status .. " " .. r.body) end
  return r.json
end

local function system_of(e, task, version)
  local r = e:get("/v1/prompts/" .. task .. "/versions/" .. string.format("%d", version))
  local v = r.json or {}
  local msgs = v.messages or (v.version and v.version.messages)
  if not msgs then error("version " .. tostring(version) .. " of " .. task .. ": " .. r.status .. " " .. r.body) end
  return msgs[1].content
end

local function production(e, task)
  for _, v in ipairs(e:get("/v1/prompts/" .. task .. "/versions").json.items) do
    if v.status == "production" then return v.version end
  end
end

-- ground truth of a system prompt on fresh inputs: accuracy overall and per mode
local function truth(task, system)
  local t = W.tasks[task]
  local n, ok, by = 0, 0, {}
  for i = 1, opts.fresh do
    local vars = t.input(i, "fresh")
    local out = W.targets[task](system, vars)
    local pass, _, mode = W.judge(task, vars, out)
    n, ok = n + 1, ok + (pass and 1 or 0)
    for _, m in ipairs(t.modes) do
      if mode and mode:find(m.name, 1, true) then
        by[m.name] = by[m.name] or { n = 0, ok = 0 }
        by[m.name].n, by[m.name].ok = by[m.name].n + 1, by[m.name].ok + (pass and 1 or 0)
      end
    end
    local slice = mode or "plain"
    by["slice:" .. slice] = by["slice:" .. slice] or { n = 0, ok = 0 }
    by["slice:" .. slice].n, by["slice:" .. slice].ok = by["slice:" .. slice].n + 1, by["slice:" .. slice].ok + (pass and 1 or 0)
  end
  return ok / n, by
end

local function send_traffic(e, task, salt, n)
  local t = W.tasks[task]
  local traces, systems = {}, {}
  for i = 1, n do
    local vars = t.input(i, salt)
    local r = e:get("/v1/prompts/" .. task .. "?key=u" .. i)
    local version = r.json.version
    systems[version] = systems[version] or system_of(e, task, version)
    local k, v = t.user:match("^(.-){{(%w+)}}$")
    local call = { provider = "fake", model = "target", messages = {
      { role = "system", content = systems[version] }, { role = "user", content = k .. vars[v] } } }
    local res = post(e, "/v1/llm/chat", call)
    traces[#traces + 1] = { id = salt .. "-" .. i, prompt = { name = task, version = version },
      input = { variables = vars }, output = res.text }
  end
  post(e, "/v1/traces", traces)
  return n
end

local function wait_evaluated(e, task, want)
  assert(engine.eventually(60, function()
    for _, v in ipairs(e:get("/v1/prompts/" .. task .. "/metrics").json.versions or {}) do
      if v.status == "production" then return v.evaluated >= want end
    end
  end), "traces of " .. task .. " not evaluated")
end

local function metric(e, name)
  local text = e:get("/metrics").body
  local total = 0
  for line in text:gmatch("[^\n]+") do
    if line:sub(1, #name) == name then total = total + (tonumber(line:match("%s([%d%.e%+%-]+)$")) or 0) end
  end
  return total
end

local LIVE = {} -- what a failed run leaves to stop

local function run_one(task, strategy, seed, early)
  local dir = engine.tmpdir()
  os.execute("mkdir -p " .. dir .. "/evaluators")
  engine.write_file(dir .. "/model.lua", wrap(WORLD_SRC) .. string.format("local SEED = %q\n", tostring(seed)) .. MODEL_TAIL)
  engine.write_file(dir .. "/evaluators/efficacy_judge.lua", wrap(WORLD_SRC) .. JUDGE_TAIL)
  local fake = fake_llm.start { model = engine.read_file(dir .. "/model.lua") }
  LIVE.fake = fake
  local cfg = string.format([[
scripts = { dirs = { %q, %q } }
access_log = false
log_level = "warn"
provider "fake" { kind = "openai", base_url = %q, default_model = "target", max_retries = 1, timeout_ms = 20000 }
%s
prompt %q {
  evaluators = { { "efficacy_judge", options = { task = %q } } },
  loop = {
    dataset = "golden", template = %q, optimizer = %s, enabled = false,
    require_approval = true, k = 1, concurrency = 8, candidates = 3, replay = 40, check_interval_ms = 50,
    gepa = { iterations = 8, seed = %d },
    accept_options = { early_stop = %s },
  },
}
]], dir, ROOT, "http://" .. fake.addr .. "/v1", REAL and string.format(
    'provider "real" { kind = "openai", base_url = %q, api_key = env("EFFICACY_API_KEY"), timeout_ms = 120000 }',
    REAL.base_url) or "", task, task, strategy,
    REAL and string.format('{ provider = "real", model = %q, temperature = 0.7 }', REAL.model)
      or '{ provider = "fake", model = "optimizer" }', seed, early and "true" or "false")
  local e = engine.start { config = cfg }
  LIVE.e = e
  local t0 = socket.gettime()
  local t = W.tasks[task]
  post(e, "/v1/prompts", { name = task })
  post(e, "/v1/prompts/" .. task .. "/versions", { messages = { { role = "system", content = t.seed_prompt },
    { role = "user", content = t.user } }, model = { provider = "fake", model = "target" } })
  post(e, "/v1/prompts/" .. task .. "/promote", { version = 1 })
  -- a golden set of 20 inputs (no expected output: the judge needs none)
  local lines = {}
  local k, v = t.user:match("^(.-){{(%w+)}}$")
  for i = 1, 20 do lines[#lines + 1] = cjson.encode({ id = "g" .. i, variables = t.input(i, "golden"), tags = { "golden" } }) end
  local r = e:post("/v1/datasets/golden/cases", table.concat(lines, "\n") .. "\n", { content_type = "application/x-ndjson" })
  assert(r.status == 200, r.body)
  local traffic, promotions, gate_calls, clean = 0, {}, 0, 0
  local seen_runs = {}
  local last_seq
  local on_version = 0 -- traces sent on the production version
  local first = t.seed_prompt
  for c = 1, opts.cycles do
    traffic = traffic + send_traffic(e, task, string.format("s%d-c%d", seed, c), opts.traffic)
    on_version = on_version + opts.traffic
    -- every trace of the production version evaluated before the cycle reads them
    wait_evaluated(e, task, on_version)
    local before = production(e, task)
    local o = e:post("/v1/prompts/" .. task .. "/optimize", { template = strategy })
    if o.status ~= 202 then error("optimize: " .. o.status .. " " .. o.body) end
    local view
    assert(engine.eventually(120, function()
      view = e:get("/v1/loop/" .. task .. "?limit=500").json
      return view.state == "idle" or view.state == "awaiting_approval"
    end), "the cycle did not end: " .. cjson.encode(view))
    local runs = {}
    for _, ev in ipairs(view.events) do
      if ev.kind == "gate_started" and ev.detail and ev.detail.run and not seen_runs[ev.detail.run] then
        runs[ev.detail.run] = true
        seen_runs[ev.detail.run] = true
      end
    end
    local cycle_gate = 0
    for id in pairs(runs) do
      local rr = e:get("/v1/runs/" .. id).json
      cycle_gate = cycle_gate + ((rr.report or {}).usage or {}).calls or 0
    end
    gate_calls = gate_calls + cycle_gate
    if os.getenv("EFFICACY_DEBUG") then
      for _, ev in ipairs(view.events) do
        if ev.seq > (last_seq or 0) then io.stderr:write(string.format("      [%s] %s\n", ev.kind, ev.message:sub(1, 400))) end
        last_seq = math.max(last_seq or 0, ev.seq)
      end
      io.stderr:write(string.format("      cycle %d: gate calls %d\n", c, cycle_gate))
    end
    if view.state == "awaiting_approval" then
      post(e, "/v1/runs/" .. view.run .. "/approve", { reason = "benchmark" })
      local version = view.version
      post(e, "/v1/prompts/" .. task .. "/promote", { version = version, reason = "benchmark: the gate's winner" })
      assert(engine.eventually(10, function() return e:get("/v1/loop/" .. task).json.state == "idle" end))
      local old, new = system_of(e, task, before), system_of(e, task, version)
      local _, by_old = truth(task, old)
      local acc_new, by_new = truth(task, new)
      local worse = {}
      for name, s in pairs(by_old) do
        if name:find("^slice:") and by_new[name] and by_new[name].ok < s.ok then worse[#worse + 1] = name end
      end
      promotions[#promotions + 1] = { version = version, worse = worse, system = new }
      on_version = 0
      if #worse == 0 then clean = clean + 1 end
    end
  end
  local final = system_of(e, task, production(e, task))
  local wall = socket.gettime() - t0
  local opt_calls = metric(e, REAL and string.format('ratchet_llm_calls_total{provider="real",model="%s"}', REAL.model)
    or 'ratchet_llm_calls_total{provider="fake",model="optimizer"}')
  local target_calls = metric(e, 'ratchet_llm_calls_total{provider="fake",model="target"}') - traffic
  e:stop()
  fake:stop()
  LIVE.e, LIVE.fake = nil, nil
  os.execute("rm -rf " .. engine.shell_quote(dir))
  local acc0, by0 = truth(task, first)
  local acc1, by1 = truth(task, final)
  local fixed = 0
  for _, m in ipairs(t.modes) do
    if by0[m.name] and by1[m.name] and by1[m.name].ok == by1[m.name].n and by0[m.name].ok < by0[m.name].n then fixed = fixed + 1 end
  end
  local regressions = 0
  for _, p in ipairs(promotions) do if #p.worse > 0 then regressions = regressions + 1 end end
  return { task = task, strategy = strategy, seed = seed, early = early, fixed = fixed, modes = #t.modes,
    acc0 = acc0, acc1 = acc1, promotions = #promotions, regressions = regressions, clean = clean,
    calls = opt_calls + target_calls, opt_calls = opt_calls, target_calls = target_calls, gate_calls = gate_calls,
    cost = opt_calls * PRICE.optimizer + target_calls * PRICE.target, wall = wall, final = final }
end

local function median(xs)
  local t = {}
  for i, x in ipairs(xs) do t[i] = x end
  table.sort(t)
  if #t == 0 then return 0 end
  if #t % 2 == 1 then return t[(#t + 1) // 2] end
  return (t[#t // 2] + t[#t // 2 + 1]) / 2
end

local function range(xs)
  local lo, hi = math.huge, -math.huge
  for _, x in ipairs(xs) do lo, hi = math.min(lo, x), math.max(hi, x) end
  return lo, hi
end

local function col(rs, f) local t = {}; for i, r in ipairs(rs) do t[i] = f(r) end; return t end

local started = socket.gettime()
local results = {}
io.stderr:write(string.format("efficacy benchmark (SIMULATED): %d task(s) x %d strategies x %d seeds, %d cycles\n",
  #opts.tasks, #opts.strategies, opts.seeds, opts.cycles))
for _, task in ipairs(opts.tasks) do
  for _, strategy in ipairs(opts.strategies) do
    for seed = 1, opts.seeds do
      for _, early in ipairs(opts.gate_baseline and { false, true } or { true }) do
        local ok, r = pcall(run_one, task, strategy, seed, early)
        if not ok then
          io.stderr:write("FAILED ", task, " ", strategy, " ", seed, ": ", tostring(r), "\n")
          if LIVE.e then pcall(LIVE.e.stop, LIVE.e) end
          if LIVE.fake then pcall(LIVE.fake.stop, LIVE.fake) end
          os.exit(1)
        end
        results[#results + 1] = r
        io.stderr:write(string.format("  %-8s %-16s seed %2d early %-5s fixed %d/%d acc %.2f -> %.2f promos %d regr %d calls %d (gate %d) %.1fs\n",
          task, strategy, seed, tostring(early), r.fixed, r.modes, r.acc0, r.acc1, r.promotions, r.regressions, r.calls,
          r.gate_calls, r.wall))
      end
    end
  end
end

-- the tables: early stopping on (the engine's default)
print(REAL and ("## Efficacy benchmark (SIMULATED targets and judge; optimizer: " .. REAL.model .. ")")
  or "## Efficacy benchmark (SIMULATED)")
print()
print(string.format("%d seeds per task and strategy, %d cycles of %d traces each; true accuracy on %d fresh inputs. "
  .. "Medians, [min-max] over seeds.", opts.seeds, opts.cycles, opts.traffic, opts.fresh))
print()
print("| task | strategy | modes fixed | accuracy before -> after | promoted regressions (sum) | LLM calls | modes fixed per 1,000 calls | sim. cost per accuracy point | wall s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
local per_strategy = {}
for _, task in ipairs(opts.tasks) do
  for _, strategy in ipairs(opts.strategies) do
    local rs = {}
    for _, r in ipairs(results) do if r.task == task and r.strategy == strategy and r.early then rs[#rs + 1] = r end end
    local fixed, calls = col(rs, function(r) return r.fixed end), col(rs, function(r) return r.calls end)
    local lo_f, hi_f = range(fixed)
    local lo_c, hi_c = range(calls)
    local regs = 0
    for _, r in ipairs(rs) do regs = regs + r.regressions end
    local sum_f, sum_c = 0, 0
    for _, r in ipairs(rs) do sum_f, sum_c = sum_f + r.fixed, sum_c + r.calls end
    local costpp = col(rs, function(r)
      local gain = 100 * (r.acc1 - r.acc0)
      return gain > 0 and r.cost / gain or math.huge
    end)
    local cp = median(costpp)
    local lo_a, hi_a = range(col(rs, function(r) return r.acc1 end))
    print(string.format("| %s | %s | %.1f [%.0f-%.0f] of %d | %.2f -> %.2f [%.2f-%.2f] | %d | %.0f [%.0f-%.0f] | %.2f | %s | %.1f |",
      task, strategy, median(fixed), lo_f, hi_f, rs[1] and rs[1].modes or 0, median(col(rs, function(r) return r.acc0 end)),
      median(col(rs, function(r) return r.acc1 end)), lo_a, hi_a, regs, median(calls),
      lo_c, hi_c, sum_c > 0 and 1000 * sum_f / sum_c or 0, cp == math.huge and "no gain" or string.format("$%.4f", cp),
      median(col(rs, function(r) return r.wall end))))
    local ps = per_strategy[strategy] or { fixed = 0, calls = 0, regs = 0, clean = 0, gate = 0 }
    per_strategy[strategy] = ps
    ps.fixed, ps.calls, ps.regs = ps.fixed + sum_f, ps.calls + sum_c, ps.regs + regs
  end
end
print()
print("| strategy | modes fixed per 1,000 LLM calls (all tasks) | promoted regressions |")
print("| --- | --- | --- |")
for _, strategy in ipairs(opts.strategies) do
  local ps = per_strategy[strategy]
  print(string.format("| %s | %.2f | %d |", strategy, ps.calls > 0 and 1000 * ps.fixed / ps.calls or 0, ps.regs))
end
if opts.gate_baseline then
  print()
  print("The gate's calls per clean improvement (a promotion breaking no slice), early stopping off and on, same seeds:")
  print()
  print("| strategy | gate calls off | gate calls on | clean improvements off / on | calls per clean improvement off | on | ratio | same promotions |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for _, strategy in ipairs(opts.strategies) do
    local off, on, c_off, c_on, same, n = 0, 0, 0, 0, 0, 0
    for _, a in ipairs(results) do
      if a.strategy == strategy and not a.early then
        for _, b in ipairs(results) do
          if b.strategy == strategy and b.early and b.task == a.task and b.seed == a.seed then
            off, on, c_off, c_on = off + a.gate_calls, on + b.gate_calls, c_off + a.clean, c_on + b.clean
            n = n + 1
            if a.final == b.final then same = same + 1 end
          end
        end
      end
    end
    local pc_off, pc_on = c_off > 0 and off / c_off or 0, c_on > 0 and on / c_on or 0
    print(string.format("| %s | %.0f | %.0f | %.0f / %.0f | %.0f | %.0f | %.2fx | %d of %d runs |", strategy, off, on, c_off, c_on,
      pc_off, pc_on, pc_on > 0 and pc_off / pc_on or 0, same, n))
  end
end
print()
print(string.format("Wall time: %.0f s.", socket.gettime() - started))
