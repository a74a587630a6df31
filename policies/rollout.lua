-- rollout.lua — the canary rollout policy: next(state, canary, production)
-- answers hold, advance (to the next traffic step), promote or rollback,
-- with a reason. The engine calls it at every check of a live canary with
-- both versions' online metrics since the canary started. Ops edit the
-- settings (or a prompt's loop.rollout_options); the file hot-reloads.
-- Method (docs/loop.md): guardrails roll back at once; pass rates are
-- compared with an always-valid confidence sequence (lib/sequential.lua),
-- so looking at every check does not inflate the error rates.
--
-- state: { prompt, version, production, step (0-based), percent, step_started_ms,
--          canary_started_ms, now_ms, step_samples, options }
-- canary, production: { traces, evaluated, passed, failures, errors, negative,
--   retries, pass_rate, latency_ms, cost, tokens, evaluators = { name = {...} },
--   slices = { ["metadata.KEY=VALUE"] = { evaluated, passed, pass_rate } } }
--   (slices: for the metadata keys named in settings.slices)
-- returns { action = "hold"|"advance"|"promote"|"rollback", percent = n, reason = "...", stats = {...} }
local seq = require "lib.sequential"
local num = require "lib.num"

local M = {}

M.settings = {
  steps = { 5, 25, 50 },      -- percent of traffic per step; after the last one, promote
  min_step_samples = 100,     -- evaluated canary traces per step
  min_step_ms = 60000,        -- time per step
  alpha = 0.05,               -- error rate of the sequential test, whatever the number of looks
  tau = 0.05,                 -- the mixture's scale: the size of difference the test is tuned to
  margin = 0.02,              -- promote only when the canary is shown no worse than this (pass-rate points)
  max_samples = 50000,        -- a canary still undecided after this many samples is rolled back
  max_latency_ratio = 2.0,    -- guardrails: canary / production means
  min_latency_increase_ms = 50, -- ... and the latency guardrail only when the canary is slower by this much
  max_cost_ratio = 1.5,
  min_guardrail_samples = 30,
  -- slices compared on their own, with the same sequential test (the level
  -- split between them): a slice significantly worse rolls the canary back
  -- even when the whole improves. "metadata.KEY" names a trace metadata key.
  slices = {},
  min_slice_samples = 30,     -- evaluated traces on each side before a slice is judged
  -- a promotion waits until every slice with at least this share of either
  -- side's traffic has min_slice_samples on both sides (0: every slice)
  min_slice_share = 0.02,
  -- promote only when the canary is shown better than production, not just
  -- no worse (the gate has shown it better on held-out failures already)
  require_better = false,
}

local function opt(state, name)
  local o = state.options
  if type(o) == "table" and o[name] ~= nil then return o[name] end
  return M.settings[name]
end

local function pct(x) return string.format("%.1f%%", 100 * x) end

-- passed / judged of one side, overall or for one evaluator
local function counts(m, evaluator)
  if evaluator then
    local e = (m.evaluators or {})[evaluator]
    if not e then return 0, 0 end
    return e.passed or 0, (e.passed or 0) + (e.failures or 0)
  end
  return m.passed or 0, m.evaluated or 0
end

function M.next(state, canary, production)
  local alpha, tau = opt(state, "alpha"), opt(state, "tau")
  local nc, np = canary.evaluated or 0, production.evaluated or 0
  local stats = { canary_samples = nc, production_samples = np }
  -- guardrails: at once, no test
  local g = opt(state, "min_guardrail_samples")
  if nc >= g and np >= g then
    local lr, floor = opt(state, "max_latency_ratio"), opt(state, "min_latency_increase_ms")
    local cl, pl = canary.latency_ms or 0, production.latency_ms or 0
    if pl > 0 and cl > lr * pl and cl - pl >= floor then
      return { action = "rollback", stats = stats, reason = string.format(
        "guardrail: mean latency %.1f ms is over %sx production's %.1f ms (and %.1f ms slower, the floor being %s ms)",
        cl, num(lr), pl, cl - pl, num(floor)) }
    end
    local cr = opt(state, "max_cost_ratio")
    if (production.cost or 0) > 0 and (canary.cost or 0) > cr * production.cost then
      return { action = "rollback", stats = stats, reason = string.format(
        "guardrail: cost per call %.6f is over %sx production's %.6f", canary.cost, num(cr), production.cost) }
    end
  end
  -- the overall pass rate (evaluators and negative feedback): drop = production - canary
  local pp, pn = counts(production)
  local cp, cn = counts(canary)
  local d, r = seq.diff(pp, pn, cp, cn, alpha, tau)
  if d then
    stats.drop, stats.drop_low, stats.drop_high = d, d - r, d + r
    if d - r > 0 then
      return { action = "rollback", stats = stats, reason = string.format(
        "the canary's pass rate %s is below production's %s beyond doubt (drop %s, always-valid %d%% interval [%s, %s])",
        pct(cp / cn), pct(pp / pn), pct(d), math.floor(100 * (1 - alpha) + 0.5), pct(d - r), pct(d + r)) }
    end
  end
  -- each required evaluator, the level split between them
  local names = {}
  for name, e in pairs(canary.evaluators or {}) do if e.required then names[#names + 1] = name end end
  table.sort(names)
  for _, name in ipairs(names) do
    local a, an = counts(production, name)
    local b, bn = counts(canary, name)
    local ed, er = seq.diff(a, an, b, bn, alpha / #names, tau)
    if ed and ed - er > 0 then
      return { action = "rollback", stats = stats, reason = string.format(
        "evaluator %s: the canary passes %s against production's %s, worse beyond doubt", name, pct(b / bn), pct(a / an)) }
    end
  end
  -- each slice, the level split between them: worse beyond doubt in one rolls back
  local slices, min_n = {}, opt(state, "min_slice_samples")
  for name, cs in pairs(canary.slices or {}) do
    local ps = (production.slices or {})[name]
    if ps and (cs.evaluated or 0) >= min_n and (ps.evaluated or 0) >= min_n then slices[#slices + 1] = name end
  end
  table.sort(slices)
  stats.slices = #slices
  for _, name in ipairs(slices) do
    local cs, ps = canary.slices[name], production.slices[name]
    local sd, sr = seq.diff(ps.passed, ps.evaluated, cs.passed, cs.evaluated, alpha / #slices, tau)
    if sd and sd - sr > 0 then
      return { action = "rollback", stats = stats, reason = string.format(
        "slice %s: the canary passes %s against production's %s, worse beyond doubt (drop %s, interval [%s, %s], "
          .. "level split over %d slices)", name, pct(cs.passed / cs.evaluated), pct(ps.passed / ps.evaluated), pct(sd),
        pct(sd - sr), pct(sd + sr), #slices) }
    end
  end
  if nc >= opt(state, "max_samples") then
    return { action = "rollback", stats = stats, reason = string.format(
      "still undecided after %d canary samples: not shown to be no worse than production", nc) }
  end
  local steps = opt(state, "steps")
  local step = (state.step or 0) + 1
  local in_step = (state.now_ms or 0) - (state.step_started_ms or 0)
  local need_n, need_ms = opt(state, "min_step_samples"), opt(state, "min_step_ms")
  if (state.step_samples or 0) < need_n or in_step < need_ms then
    return { action = "hold", stats = stats, reason = string.format(
      "step %d (%s%%): %d of %d samples, %.0f of %.0f s", step, tostring(steps[step] or state.percent),
      state.step_samples or 0, need_n, in_step / 1000, need_ms / 1000) }
  end
  local margin = opt(state, "margin")
  if not d then return { action = "hold", stats = stats, reason = "no evaluated traces on one side yet" } end
  if step >= #steps then
    -- every slice with a share of the traffic must be judged before a
    -- promotion: enough samples on both sides, and no drop beyond the margin
    local waiting, trailing, seen = {}, {}, {}
    local share = opt(state, "min_slice_share")
    for _, side in ipairs({ production.slices or {}, canary.slices or {} }) do
      for name in pairs(side) do
        if not seen[name] then
          seen[name] = true
          local ps, cs = (production.slices or {})[name] or {}, (canary.slices or {})[name] or {}
          local pe, ce = ps.evaluated or 0, cs.evaluated or 0
          if (np > 0 and pe / np >= share) or (nc > 0 and ce / nc >= share) then
            if pe < min_n or ce < min_n then
              waiting[#waiting + 1] = string.format("%s (%d and %d of %d samples)", name, ce, pe, min_n)
            elseif ps.passed / pe - cs.passed / ce >= margin then
              trailing[#trailing + 1] = string.format("%s (%s against %s)", name, pct(cs.passed / ce),
                pct(ps.passed / pe))
            end
          end
        end
      end
    end
    table.sort(waiting)
    table.sort(trailing)
    if #waiting > 0 then
      return { action = "hold", stats = stats, reason = "last step: slices not judged yet: " .. table.concat(waiting, ", ") }
    end
    if #trailing > 0 then
      return { action = "hold", stats = stats, reason = "last step: slices trail production by the margin or more: "
        .. table.concat(trailing, ", ") }
    end
    if opt(state, "require_better") then
      if d + r < 0 then
        return { action = "promote", stats = stats, reason = string.format(
          "pass rate %s against production's %s: shown better (gain at least %s) after %d samples",
          pct(cp / cn), pct(pp / pn), pct(-(d + r)), nc) }
      end
      return { action = "hold", stats = stats, reason = string.format(
        "last step: not shown better yet (the gain may be as low as %s)", pct(-(d + r))) }
    end
    if d + r < margin then
      return { action = "promote", stats = stats, reason = string.format(
        "pass rate %s against production's %s: shown no worse than %s (drop at most %s) after %d samples",
        pct(cp / cn), pct(pp / pn), pct(margin), pct(d + r), nc) }
    end
    return { action = "hold", stats = stats, reason = string.format(
      "last step: the drop may still be up to %s (needs under %s)", pct(d + r), pct(margin)) }
  end
  if d < margin then
    return { action = "advance", percent = steps[step + 1], stats = stats, reason = string.format(
      "pass rate %s against production's %s after %d samples; no harm seen", pct(cp / cn), pct(pp / pn), nc) }
  end
  return { action = "hold", stats = stats, reason = string.format(
    "the canary's pass rate %s trails production's %s by %s; watching", pct(cp / cn), pct(pp / pn), pct(d)) }
end

-- What the settings' defaults cannot say about a prompt's rollout_options
-- (types and keys come from M.settings; docs/loop.md#policy-settings).
-- The engine checks the options against both when the config loads.
M.options = {
  steps = { type = "list", items = "number", nonempty = true, description = "percent of traffic per canary step" },
  min_step_samples = { type = "integer", min = 0, description = "evaluated canary traces per step" },
  min_step_ms = { type = "integer", min = 0, description = "time per step" },
  alpha = { type = "number", above = 0, max = 1, description = "error rate of the sequential test" },
  tau = { type = "number", above = 0, description = "the mixture's scale: the size of difference the test is tuned to" },
  margin = { type = "number", min = 0, max = 1, description = "promote only when shown no worse than this" },
  max_samples = { type = "integer", min = 1, description = "canary samples before an undecided canary is rolled back" },
  max_latency_ratio = { type = "number", above = 0, description = "guardrail: canary / production mean latency" },
  max_cost_ratio = { type = "number", above = 0, description = "guardrail: canary / production mean cost" },
  min_guardrail_samples = { type = "integer", min = 0, description = "samples on each side before the guardrails act" },
  min_latency_increase_ms = { type = "number", min = 0,
    description = "the latency guardrail also needs the canary slower by this much" },
  slices = { type = "list", items = "string", description = "\"metadata.KEY\" names of the slices judged on their own" },
  min_slice_samples = { type = "integer", min = 1, description = "evaluated traces on each side before a slice is judged" },
  min_slice_share = { type = "number", min = 0, max = 1,
    description = "a promotion waits for every slice with this share of either side's traffic" },
  require_better = { type = "boolean", description = "promote only a canary shown better, not just no worse" },
}

return M
