-- trigger.lua — the trigger policy of the loop: should_optimize(stats, state)
-- says whether to start an optimization cycle for a prompt now, and why.
-- The engine calls it per prompt on a schedule (loop.check_interval_ms) and
-- soon after a burst of ingest. Ops edit the settings (or a prompt's
-- loop.trigger_options); the file hot-reloads. Contract: docs/loop.md.
--
-- stats: the production version's traces in the window (loop.window_ms):
--   { version, window_ms, traces, evaluated, passed, failures, errors,
--     negative, retries, failure_rate, latency_ms, cost, tokens,
--     evaluators = { name = { n, passed, failures, errors, pass_rate, required } } }
-- state: { prompt, state, pinned, canary, last_cycle_at, since_last_cycle_ms,
--          now_ms, options }
-- returns { optimize = bool, reason = "..." }
local num = require "lib.num"

local M = {}

M.settings = {
  min_failures = 5,         -- failed traces in the window
  min_failure_rate = 0.1,   -- failures / evaluated traces
  min_evaluated = 20,       -- evaluated traces before a rate means anything
  cooldown_ms = 3600000,    -- time between two cycles of one prompt
}

local function opt(state, name)
  local o = state.options
  if type(o) == "table" and o[name] ~= nil then return o[name] end
  return M.settings[name]
end

local function pct(x) return string.format("%.0f%%", 100 * x) end

-- the evaluators that failed most, "json_schema 12, label 3"
local function top_evaluators(evs)
  local list = {}
  for name, e in pairs(evs or {}) do
    if (e.failures or 0) > 0 then list[#list + 1] = { name = name, n = e.failures } end
  end
  table.sort(list, function(a, b) if a.n ~= b.n then return a.n > b.n end return a.name < b.name end)
  local out = {}
  for i = 1, math.min(3, #list) do out[i] = list[i].name .. " " .. list[i].n end
  return table.concat(out, ", ")
end

function M.should_optimize(stats, state)
  if state.pinned then return { optimize = false, reason = "the prompt is pinned" } end
  if state.canary ~= nil then
    return { optimize = false, reason = "a canary (v" .. tostring(state.canary) .. ") is live" }
  end
  if state.state ~= "idle" then return { optimize = false, reason = "the loop is " .. tostring(state.state) } end
  local cooldown = opt(state, "cooldown_ms")
  if state.since_last_cycle_ms ~= nil and state.since_last_cycle_ms < cooldown then
    return { optimize = false, reason = string.format("cooling down: the last cycle was %.0f s ago (cooldown %s s)",
      state.since_last_cycle_ms / 1000, num(cooldown / 1000)) }
  end
  local evaluated, failures = stats.evaluated or 0, stats.failures or 0
  if evaluated < opt(state, "min_evaluated") then
    return { optimize = false, reason = string.format("%d evaluated traces in the window, under %d", evaluated,
      opt(state, "min_evaluated")) }
  end
  if failures < opt(state, "min_failures") then
    return { optimize = false, reason = string.format("%d failures in the window, under %d", failures,
      opt(state, "min_failures")) }
  end
  local rate = failures / evaluated
  if rate < opt(state, "min_failure_rate") then
    return { optimize = false, reason = string.format("failure rate %s, under %s", pct(rate),
      pct(opt(state, "min_failure_rate"))) }
  end
  local why = string.format("%d of %d traces failed (%s)", failures, evaluated, pct(rate))
  local top = top_evaluators(stats.evaluators)
  if top ~= "" then why = why .. "; " .. top end
  if (stats.negative or 0) > 0 then why = why .. string.format("; %d with negative feedback", stats.negative) end
  return { optimize = true, reason = why }
end

-- What the settings' defaults cannot say about a prompt's trigger_options
-- (types and keys come from M.settings; docs/loop.md#policy-settings).
-- The engine checks the options against both when the config loads.
M.options = {
  min_failures = { type = "integer", min = 0, description = "failed traces in the window" },
  min_failure_rate = { type = "number", min = 0, max = 1, description = "failures / evaluated traces" },
  min_evaluated = { type = "integer", min = 0, description = "evaluated traces before a rate means anything" },
  cooldown_ms = { type = "integer", min = 0, description = "time between two cycles of one prompt" },
}

return M
