-- policies/trigger.lua — overrides the shipped trigger policy: a file of the
-- same name in an earlier script folder wins (this project's folder comes
-- before the shipped share/ratchet in scripts.dirs). This one starts an
-- optimization cycle sooner than the shipped one, and never at night (UTC).
-- Contract: docs/loop.md; spec/trigger_spec.lua tests it.
local M = {}

M.settings = {
  min_failures = 3,         -- failed traces in the window
  min_failure_rate = 0.05,  -- failures / evaluated traces
  min_evaluated = 10,       -- evaluated traces before a rate means anything
  cooldown_ms = 6 * 3600000,
  quiet_hours = { 0, 6 },   -- no cycle from 00:00 to 06:00 UTC
}

local function opt(state, name)
  local o = state.options
  if type(o) == "table" and o[name] ~= nil then return o[name] end
  return M.settings[name]
end

function M.should_optimize(stats, state)
  if state.pinned then return { optimize = false, reason = "the prompt is pinned" } end
  if state.canary ~= nil then return { optimize = false, reason = "a canary is live" } end
  if state.state ~= "idle" then return { optimize = false, reason = "the loop is " .. tostring(state.state) } end
  local hour = math.floor((state.now_ms or 0) / 3600000) % 24
  local quiet = opt(state, "quiet_hours")
  if hour >= quiet[1] and hour < quiet[2] then
    return { optimize = false, reason = string.format("quiet hours (%02d:00 UTC)", hour) }
  end
  if state.since_last_cycle_ms ~= nil and state.since_last_cycle_ms < opt(state, "cooldown_ms") then
    return { optimize = false, reason = "cooling down" }
  end
  local evaluated, failures = stats.evaluated or 0, stats.failures or 0
  if evaluated < opt(state, "min_evaluated") then
    return { optimize = false, reason = string.format("%d evaluated traces, under %d", evaluated, opt(state, "min_evaluated")) }
  end
  if failures < opt(state, "min_failures") or failures / evaluated < opt(state, "min_failure_rate") then
    return { optimize = false, reason = string.format("%d of %d traces failed: not enough", failures, evaluated) }
  end
  return { optimize = true, reason = string.format("%d of %d traces failed", failures, evaluated) }
end

return M
