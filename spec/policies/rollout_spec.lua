-- policies/rollout.lua over its decision table, in the engine's sandbox.
local sandbox = require "spec.helpers.sandbox"

local policy = sandbox.policy("rollout")

local function metrics(n, passed, extra)
  local m = { traces = n, evaluated = n, passed = passed, failures = n - passed, latency_ms = 100, cost = 0.001,
              evaluators = {} }
  for k, v in pairs(extra or {}) do m[k] = v end
  return m
end

local function state(extra)
  local s = { prompt = "p", version = 2, production = 1, step = 0, percent = 5, step_started_ms = 0,
              canary_started_ms = 0, now_ms = 3600000, step_samples = 1000, options = {} }
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

describe("rollout policy", function()
  it("holds until a step has its samples and its time", function()
    local r = policy:call("next", state { step_samples = 40 }, metrics(40, 36), metrics(800, 720))
    assert.equal("hold", r.action)
    assert.matches("40 of 100 samples", r.reason)
    r = policy:call("next", state { now_ms = 1000 }, metrics(400, 360), metrics(8000, 7200))
    assert.equal("hold", r.action)
    assert.matches("1 of 60 s", r.reason)
  end)

  it("advances to the next step when nothing is worse", function()
    local r = policy:call("next", state(), metrics(400, 360), metrics(8000, 7200))
    assert.equal("advance", r.action)
    assert.equal(25, r.percent)
    r = policy:call("next", state { step = 1, percent = 25 }, metrics(2000, 1800), metrics(8000, 7200))
    assert.equal(50, r.percent)
  end)

  it("promotes at the last step only once the canary is shown no worse than the margin", function()
    local last = state { step = 2, percent = 50 }
    local r = policy:call("next", last, metrics(400, 360), metrics(400, 360))
    assert.equal("hold", r.action)
    assert.matches("may still be up to", r.reason)
    r = policy:call("next", last, metrics(20000, 18000), metrics(20000, 18000))
    assert.equal("promote", r.action)
    assert.is_true(r.stats.drop_high < 0.02)
  end)

  it("rolls back a canary whose pass rate is lower beyond doubt, at any step", function()
    local r = policy:call("next", state { step_samples = 10 }, metrics(500, 350), metrics(5000, 4500))
    assert.equal("rollback", r.action)
    assert.matches("beyond doubt", r.reason)
    assert.is_true(r.stats.drop_low > 0)
  end)

  it("does not roll back on a small, noisy difference", function()
    local r = policy:call("next", state(), metrics(100, 86), metrics(2000, 1800))
    assert.are_not.equal("rollback", r.action)
  end)

  it("rolls back at once on a latency or cost guardrail", function()
    local r = policy:call("next", state { step_samples = 1 }, metrics(40, 40, { latency_ms = 500 }), metrics(400, 360))
    assert.equal("rollback", r.action)
    assert.matches("latency", r.reason)
    -- a ratio of 1.25 prints as 1.25, not rounded to 1.2 (%.1f)
    r = policy:call("next", state { step_samples = 1, options = { max_latency_ratio = 1.25 } },
      metrics(40, 40, { latency_ms = 500 }), metrics(400, 360))
    assert.truthy(r.reason:find("is over 1.25x production's", 1, true), r.reason)
    r = policy:call("next", state { step_samples = 1 }, metrics(40, 40, { cost = 0.01 }), metrics(400, 360))
    assert.matches("cost per call", r.reason)
  end)

  it("rolls back on one required evaluator's drop, even when the overall rate holds", function()
    local c = metrics(3000, 2700, { evaluators = { schema = { n = 3000, passed = 2000, failures = 1000, required = true } } })
    local p = metrics(3000, 2700, { evaluators = { schema = { n = 3000, passed = 2900, failures = 100, required = true } } })
    local r = policy:call("next", state(), c, p)
    assert.equal("rollback", r.action)
    assert.matches("evaluator schema", r.reason)
  end)

  it("rolls back a canary still undecided after max_samples", function()
    local r = policy:call("next", state { options = { max_samples = 100 } }, metrics(100, 90), metrics(100, 90))
    assert.equal("rollback", r.action)
    assert.matches("undecided", r.reason)
  end)

  it("holds with no data on a side", function()
    assert.equal("hold", policy:call("next", state(), metrics(0, 0), metrics(0, 0)).action)
  end)
end)
