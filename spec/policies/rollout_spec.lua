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

  it("needs an absolute latency increase too: sub-millisecond means never roll back", function()
    -- the demo's fake: production 0.4 ms, canary 1.1 ms (2.75x, but 0.7 ms)
    local r = policy:call("next", state { step_samples = 1 }, metrics(40, 40, { latency_ms = 1.1 }),
      metrics(400, 400, { latency_ms = 0.4 }))
    assert.are_not.equal("rollback", r.action)
    r = policy:call("next", state { step_samples = 1 }, metrics(40, 40, { latency_ms = 260 }),
      metrics(400, 400, { latency_ms = 100 }))
    assert.equal("rollback", r.action)
    assert.matches("160.0 ms slower", r.reason, 1, true)
  end)

  it("rolls back when one slice gets worse beyond doubt, even when the whole improves", function()
    local slices_c = { ["metadata.segment=fr"] = { evaluated = 400, passed = 200 },
                       ["metadata.segment=en"] = { evaluated = 3600, passed = 3600 } }
    local slices_p = { ["metadata.segment=fr"] = { evaluated = 400, passed = 390 },
                       ["metadata.segment=en"] = { evaluated = 3600, passed = 3000 } }
    local r = policy:call("next", state(), metrics(4000, 3800, { slices = slices_c }),
      metrics(4000, 3390, { slices = slices_p }))
    assert.equal("rollback", r.action)
    assert.matches("slice metadata.segment=fr: the canary passes 50.0% against production's 97.5%", r.reason, 1, true)
    assert.equal(2, r.stats.slices)
    -- too few samples in a slice: not judged on its own
    slices_c["metadata.segment=fr"] = { evaluated = 10, passed = 2 }
    slices_p["metadata.segment=fr"] = { evaluated = 10, passed = 10 }
    r = policy:call("next", state(), metrics(3610, 3602, { slices = slices_c }), metrics(3610, 3010, { slices = slices_p }))
    assert.equal("advance", r.action)
  end)

  it("promotes only once every slice with a share of the traffic is judged on both sides and does not trail", function()
    local last = state { step = 2, percent = 50, options = { min_slice_samples = 30 } }
    local slices_p = { ["metadata.segment=de"] = { evaluated = 500, passed = 500 },
                       ["metadata.segment=en"] = { evaluated = 19500, passed = 17500 } }
    local slices_c = { ["metadata.segment=de"] = { evaluated = 12, passed = 6 },
                       ["metadata.segment=en"] = { evaluated = 19988, passed = 17994 } }
    local r = policy:call("next", last, metrics(20000, 18000, { slices = slices_c }),
      metrics(20000, 18000, { slices = slices_p }))
    assert.equal("hold", r.action)
    assert.matches("slices not judged yet: metadata.segment=de (12 and 500 of 30 samples)", r.reason, 1, true)
    -- a slice too small on the production side is waited for too, when it holds a share of the traffic
    local small = { ["metadata.segment=de"] = { evaluated = 12, passed = 12 },
                    ["metadata.segment=en"] = { evaluated = 488, passed = 440 } }
    r = policy:call("next", last, metrics(500, 452, { slices = { ["metadata.segment=de"] = { evaluated = 40, passed = 40 },
      ["metadata.segment=en"] = { evaluated = 460, passed = 412 } } }), metrics(500, 452, { slices = small }))
    assert.equal("hold", r.action)
    assert.matches("metadata.segment=de (40 and 12 of 30 samples)", r.reason, 1, true)
    slices_c["metadata.segment=de"] = { evaluated = 40, passed = 38 }
    r = policy:call("next", last, metrics(20000, 18032, { slices = slices_c }), metrics(20000, 18000, { slices = slices_p }))
    assert.equal("hold", r.action)
    assert.matches("trail production by the margin or more: metadata.segment=de", r.reason, 1, true)
    slices_c["metadata.segment=de"] = { evaluated = 40, passed = 40 }
    r = policy:call("next", last, metrics(20000, 18034, { slices = slices_c }), metrics(20000, 18000, { slices = slices_p }))
    assert.equal("promote", r.action)
  end)

  it("promotes only a canary shown better when require_better is set", function()
    local last = state { step = 2, percent = 50, options = { require_better = true } }
    local r = policy:call("next", last, metrics(20000, 18000), metrics(20000, 18000))
    assert.equal("hold", r.action)
    assert.matches("not shown better", r.reason)
    r = policy:call("next", last, metrics(20000, 19000), metrics(20000, 18000))
    assert.equal("promote", r.action)
    assert.matches("shown better", r.reason)
  end)

  it("holds with no data on a side", function()
    assert.equal("hold", policy:call("next", state(), metrics(0, 0), metrics(0, 0)).action)
  end)
end)
