-- policies/trigger.lua over its decision table, in the engine's sandbox.
local sandbox = require "spec.helpers.sandbox"

local policy = sandbox.policy("trigger")

local function stats(evaluated, failures, extra)
  local s = { version = 1, window_ms = 3600000, traces = evaluated, evaluated = evaluated, failures = failures,
              passed = evaluated - failures, negative = 0, retries = 0,
              evaluators = { json_schema = { n = evaluated, passed = evaluated - failures, failures = failures, required = true } } }
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

local function state(extra)
  local s = { prompt = "p", state = "idle", pinned = false, now_ms = 1e12, options = {} }
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

describe("trigger policy", function()
  it("starts a cycle when failures and the failure rate are over the bars, saying why", function()
    local r = policy:call("should_optimize", stats(100, 30), state())
    assert.is_true(r.optimize)
    assert.matches("30 of 100 traces failed %(30%%%)", r.reason)
    assert.matches("json_schema 30", r.reason)
  end)

  it("waits for enough evaluated traces, failures and failure rate", function()
    assert.matches("under 20", policy:call("should_optimize", stats(10, 9), state()).reason)
    assert.is_false(policy:call("should_optimize", stats(100, 4), state()).optimize)
    local r = policy:call("should_optimize", stats(1000, 50), state())
    assert.is_false(r.optimize)
    assert.matches("failure rate 5%%, under 10%%", r.reason)
  end)

  it("never starts on a pinned prompt, beside a live canary, or while the loop is busy", function()
    assert.matches("pinned", policy:call("should_optimize", stats(100, 50), state { pinned = true }).reason)
    assert.matches("canary %(v4%)", policy:call("should_optimize", stats(100, 50), state { canary = 4 }).reason)
    assert.is_false(policy:call("should_optimize", stats(100, 50), state { state = "gating" }).optimize)
  end)

  it("keeps a cooldown between cycles", function()
    local r = policy:call("should_optimize", stats(100, 50), state { since_last_cycle_ms = 60000 })
    assert.is_false(r.optimize)
    assert.matches("cooling down", r.reason)
    -- the cooldown as set: 1.5 s, not rounded to 2 s
    r = policy:call("should_optimize", stats(100, 50), state { since_last_cycle_ms = 1000, options = { cooldown_ms = 1500 } })
    assert.truthy(r.reason:find("(cooldown 1.5 s)", 1, true), r.reason)
    assert.is_true(policy:call("should_optimize", stats(100, 50), state { since_last_cycle_ms = 7200000 }).optimize)
  end)

  it("takes the prompt's options over its settings", function()
    local s = state { options = { min_failures = 1, min_failure_rate = 0.01, min_evaluated = 5, cooldown_ms = 0 } }
    assert.is_true(policy:call("should_optimize", stats(5, 1), s).optimize)
  end)

  it("mentions negative feedback", function()
    assert.matches("3 with negative feedback", policy:call("should_optimize", stats(100, 30, { negative = 3 }), state()).reason)
  end)
end)
