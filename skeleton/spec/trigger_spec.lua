-- spec/trigger_spec.lua — this project's trigger policy (policies/trigger.lua,
-- which overrides the shipped one), in the engine's sandbox.
local testing = require "ratchet.testing"

local policy = testing.policy("trigger")
local NOON = 12 * 3600000

local function state(extra)
  local s = { prompt = "support-reply", state = "idle", pinned = false, now_ms = NOON, options = {} }
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

describe("trigger policy (this project's)", function()
  it("starts a cycle once 3 of 10 evaluated traces failed", function()
    local r = policy:call("should_optimize", { evaluated = 10, failures = 3 }, state())
    assert.is_true(r.optimize, r.reason)
  end)

  it("waits for enough traces", function()
    assert.is_false(policy:call("should_optimize", { evaluated = 5, failures = 5 }, state()).optimize)
  end)

  it("never starts during the quiet hours", function()
    local r = policy:call("should_optimize", { evaluated = 100, failures = 50 }, state { now_ms = 3 * 3600000 })
    assert.is_false(r.optimize)
    assert.matches("quiet hours", r.reason)
  end)

  it("takes a prompt's trigger_options over its settings", function()
    local r = policy:call("should_optimize", { evaluated = 100, failures = 50 },
      state { now_ms = 3 * 3600000, options = { quiet_hours = { 0, 0 } } })
    assert.is_true(r.optimize, r.reason)
  end)
end)
