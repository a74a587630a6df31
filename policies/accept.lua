-- accept.lua — the accept policy of the regression gate: decide(report)
-- judges one candidate against the baseline from the per-case outcomes the
-- engine hands over, and answers accept, reject or inconclusive with reasons.
-- Ops edit the settings below (or pass policy_options with a run); the file
-- hot-reloads. Method and assumptions: docs/gate.md.
local stats = require "lib.stats"
local num = require "lib.num"

local M = {}

M.settings = {
  -- the share of the cases to fix (failed traces, and dataset cases the
  -- baseline fails) that the candidate must pass
  min_fixed_share = 0.5,
  -- golden cases (dataset cases) the baseline passed in every sample that
  -- the candidate may fail, as a share of the golden cases; critical cases
  -- have zero tolerance whatever this says
  max_regression_share = 0.02,
  -- one-sided exact McNemar test on the golden cases: reject when the
  -- candidate's drop is significant at this level
  alpha = 0.05,
}

local function opt(report, name)
  local o = report.options
  if type(o) == "table" and o[name] ~= nil then return o[name] end
  return M.settings[name]
end

local function has(tags, t)
  for _, x in ipairs(tags or {}) do if x == t then return true end end
  return false
end

-- a case passes for one side when most samples pass and none erred
local function passes(r, k) return r.errors == 0 and 2 * r.passed > k end

local function list(ids, max)
  max = max or 5
  local out = {}
  for i = 1, math.min(#ids, max) do out[i] = ids[i] end
  local s = table.concat(out, ", ")
  if #ids > max then s = s .. string.format(" and %d more", #ids - max) end
  return s
end

function M.decide(report)
  local k = report.k or 1
  local reasons = {}
  -- 1. incomplete or errored data is never accepted
  local missing, errored = {}, {}
  for _, c in ipairs(report.cases) do
    for _, side in ipairs({ "baseline", "candidate" }) do
      local r = c[side]
      if r.samples < k then missing[#missing + 1] = c.id .. " (" .. side .. ")"
      elseif r.errors > 0 then errored[#errored + 1] = c.id .. " (" .. side .. ")" end
    end
  end
  if not report.complete or #missing > 0 or #errored > 0 then
    if not report.complete then reasons[#reasons + 1] = "the run is incomplete" end
    if #missing > 0 then reasons[#reasons + 1] = "missing results: " .. list(missing) end
    if #errored > 0 then reasons[#reasons + 1] = "errored results: " .. list(errored) end
    return { verdict = "inconclusive", reasons = reasons }
  end

  -- 2. regressions on golden cases the baseline passed in all k samples
  local golden, critical_broken, broken = 0, {}, {}
  local b, c_ = 0, 0 -- McNemar's discordant pairs on golden cases
  local targets, fixed, unfixed = 0, 0, {}
  for _, c in ipairs(report.cases) do
    local base_ok, cand_ok = passes(c.baseline, k), passes(c.candidate, k)
    if c.source == "dataset" then
      golden = golden + 1
      if base_ok and not cand_ok then b = b + 1 elseif cand_ok and not base_ok then c_ = c_ + 1 end
      if c.baseline.passed == k then
        if has(c.tags, "critical") and c.candidate.passed < k then
          critical_broken[#critical_broken + 1] = c.id
        elseif not cand_ok then
          broken[#broken + 1] = c.id
        end
      end
    end
    if c.source == "failed" or not base_ok then
      targets = targets + 1
      if cand_ok then fixed = fixed + 1 else unfixed[#unfixed + 1] = c.id end
    end
  end
  local p_one = stats.mcnemar(b, c_)
  local st = { golden = golden, regressions = #broken + #critical_broken, targets = targets, fixed = fixed,
               discordant_worse = b, discordant_better = c_, p_value = p_one }

  if #critical_broken > 0 then
    reasons[#reasons + 1] = "breaks critical case(s): " .. list(critical_broken)
  end
  local allowed = math.floor(opt(report, "max_regression_share") * golden)
  if #broken > allowed then
    reasons[#reasons + 1] = string.format("breaks %d golden case(s) the baseline always passed (at most %d allowed): %s",
      #broken, allowed, list(broken))
  end
  if b > c_ and p_one < opt(report, "alpha") then
    reasons[#reasons + 1] = string.format("the golden pass rate drops significantly (McNemar: %d worse, %d better, p = %.4g < %s)",
      b, c_, p_one, num(opt(report, "alpha")))
  end
  if targets > 0 and fixed / targets < opt(report, "min_fixed_share") then
    reasons[#reasons + 1] = string.format("fixes %d of %d failing case(s), under the %.0f%% required; still failing: %s",
      fixed, targets, 100 * opt(report, "min_fixed_share"), list(unfixed))
  end
  if #reasons > 0 then return { verdict = "reject", reasons = reasons, stats = st } end

  if targets > 0 then
    reasons[#reasons + 1] = string.format("fixes %d of %d failing case(s)", fixed, targets)
  else
    reasons[#reasons + 1] = "no failing cases to fix"
  end
  reasons[#reasons + 1] = string.format("no regression on %d golden case(s) (%d worse, %d better, p = %.4g)",
    golden, b, c_, p_one)
  return { verdict = "accept", reasons = reasons, stats = st }
end

-- What the settings' defaults cannot say about a prompt's accept_options
-- (types and keys come from M.settings; docs/loop.md#policy-settings).
-- The engine checks the options against both when the config loads.
M.options = {
  min_fixed_share = { type = "number", min = 0, max = 1, description = "share of the cases to fix the candidate must pass" },
  max_regression_share = { type = "number", min = 0, max = 1,
                           description = "golden cases the baseline always passed that the candidate may fail, as a share" },
  alpha = { type = "number", above = 0, max = 1, description = "level of the one-sided exact McNemar test" },
}

return M
