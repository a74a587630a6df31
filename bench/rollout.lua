-- bench/rollout.lua — the rollout policy (policies/rollout.lua, loaded in
-- the engine's sandbox exactly as the engine runs it) over simulated canary
-- rollouts, no LLM and no engine: N rollouts where the canary is no
-- different from production and N where it is worse by DELTA pass-rate
-- points. Reports the false rollback rate, the detected-regression rate and
-- the canary samples each decision needed; and, as the baseline on the very
-- same data streams, a fixed-horizon one-sided z-test (alpha 0.05) checked
-- at every look, the way a dashboard is watched ("peeking").
--   lua5.4 bench/rollout.lua [N] [P0] [DELTA] [REQUESTS_PER_CHECK] [SEED]
package.cpath = (os.getenv("RATCHET_LUA_CPATH") or "build/lua") .. "/?.so;" .. package.cpath
local sandbox = require "ratchet_sandbox"

local N = tonumber(arg[1]) or 1000
local P0 = tonumber(arg[2]) or 0.8
local DELTA = tonumber(arg[3]) or 0.05
local PER_CHECK = tonumber(arg[4]) or 1000
local SEED = tonumber(arg[5]) or 42
local CHECK_MS = 60000
local MAX_CHECKS = 2000

local policy = assert(sandbox.load_policy("policies/rollout.lua"))
math.randomseed(SEED)

-- binomial draw: exact for small n, normal approximation when n p (1-p) is large
local function binomial(n, p)
  if n == 0 then return 0 end
  if n * p * (1 - p) < 30 then
    local k = 0
    for _ = 1, n do if math.random() < p then k = k + 1 end end
    return k
  end
  local u1, u2 = math.random(), math.random()
  local z = math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)
  local k = math.floor(n * p + z * math.sqrt(n * p * (1 - p)) + 0.5)
  return math.max(0, math.min(n, k))
end

local function metrics(n, passed)
  return { traces = n, evaluated = n, passed = passed, failures = n - passed, latency_ms = 100, cost = 0.001,
           evaluators = {} }
end

-- one rollout; returns the policy's outcome, the canary samples at that
-- point, and whether the peeking z-test would have rolled back by then
local function rollout(p_canary)
  local share = policy.settings and nil
  local steps = { 5, 25, 50 }
  local step, step_base, step_started = 0, 0, 0
  share = steps[1] / 100
  local nc, pc, np, pp = 0, 0, 0, 0
  local peek_rollback = false
  for check = 1, MAX_CHECKS do
    local now = check * CHECK_MS
    local c = binomial(PER_CHECK, share)
    nc, pc = nc + c, pc + binomial(c, p_canary)
    np, pp = np + (PER_CHECK - c), pp + binomial(PER_CHECK - c, P0)
    -- the baseline: a one-sided z-test at 0.05, looked at every check
    if not peek_rollback and nc > 0 and np > 0 then
      local a, b = pc / nc, pp / np
      local pool = (pc + pp) / (nc + np)
      local se = math.sqrt(pool * (1 - pool) * (1 / nc + 1 / np))
      if se > 0 and (b - a) / se > 1.645 then peek_rollback = true end
    end
    local state = { prompt = "bench", version = 2, production = 1, step = step, percent = share * 100,
                    step_started_ms = step_started, canary_started_ms = 0, now_ms = now, step_samples = nc - step_base,
                    options = {} }
    local r = policy:call("next", state, metrics(nc, pc), metrics(np, pp))
    if r.action == "advance" then
      step, step_base, step_started, share = step + 1, nc, now, r.percent / 100
    elseif r.action == "promote" or r.action == "rollback" then
      return r.action, nc, peek_rollback
    end
  end
  return "undecided", nc, peek_rollback
end

local function median(t)
  table.sort(t)
  if #t == 0 then return 0 end
  return t[(#t + 1) // 2]
end

local function scenario(name, p_canary)
  local t0 = os.clock()
  local out = { rollback = 0, promote = 0, undecided = 0, peek = 0, samples = {}, rb_samples = {} }
  for _ = 1, N do
    local action, n, peek = rollout(p_canary)
    out[action] = out[action] + 1
    if peek then out.peek = out.peek + 1 end
    out.samples[#out.samples + 1] = n
    if action == "rollback" then out.rb_samples[#out.rb_samples + 1] = n end
  end
  out.seconds = os.clock() - t0
  print(string.format("%-34s rollback %5.1f%%  promote %5.1f%%  undecided %4.1f%%  median canary samples %6d"
    .. " (rollbacks: %6d)  | peeking z-test rolls back %5.1f%%  (%.1f s)",
    name, 100 * out.rollback / N, 100 * out.promote / N, 100 * out.undecided / N, median(out.samples),
    median(out.rb_samples), 100 * out.peek / N, out.seconds))
  return out
end

print(string.format("rollout policy: %d rollouts per scenario, production pass rate %.2f, %d requests per check,"
  .. " default settings (steps 5/25/50%%, alpha 0.05, margin 0.02), seed %d", N, P0, PER_CHECK, SEED))
local same = scenario("no difference", P0)
local worse = scenario(string.format("canary %.0f points worse", DELTA * 100), P0 - DELTA)
local fr, det = same.rollback / N, worse.rollback / N
print(string.format("false rollback rate %.1f%% (target <= 5%%); detected regressions %.1f%% (target >= 95%%)",
  100 * fr, 100 * det))
print(string.format("ratio of false rollbacks, sequential / peeking z-test on the same streams: %.2f (%.1f%% vs %.1f%%)",
  same.peek > 0 and same.rollback / same.peek or 0, 100 * fr, 100 * same.peek / N))
os.exit((fr <= 0.05 and det >= 0.95) and 0 or 1)
