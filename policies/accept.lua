-- accept.lua — the accept policy of the regression gate: decide(report)
-- judges one candidate against the baseline from the per-case outcomes the
-- engine hands over and says what the run showed:
--   improved       significantly better on cases to fix that the optimizer
--                  never saw (held-out failures, golden cases the baseline
--                  fails), in all or in one failure group, and nothing that
--                  worked broken: the only verdict the loop canaries
--   no_regression  nothing broken, nothing shown better
--   regressed      something that worked broke
--   inconclusive   incomplete or errored data; in a gate run (the loop), also
--                  nothing to fix or too few cases to show an improvement
-- and, for an improved candidate that adds words only rare traffic holds,
-- hold = "why" (the loop then waits for `ratchet approve`).
-- Ops edit the settings below (or pass policy_options with a run, or a
-- prompt's loop.accept_options); the file hot-reloads. Method: docs/gate.md.
local stats = require "lib.stats"
local num = require "lib.num"

local M = {}

M.settings = {
  -- "improved" needs the one-sided exact sign test on the cases to fix at
  -- this level, split (Bonferroni) over the tests made: all cases to fix
  -- together, and each failure group on its own
  alpha = 0.05,
  -- protected cases (golden and replayed production cases the baseline
  -- passed in every sample) the candidate may lose, as a share of them,
  -- rounded down. 0: none. Critical cases never.
  max_regression_share = 0,
  -- hold an improved candidate for a human when it adds a word that traffic
  -- holds but the current prompt and the golden set do not, and that is
  -- rare: in at most this share of the traces the loop read (at least 1)
  hold_rare_tokens = true,
  rare_token_share = 0.05,
  -- a gate run stops a candidate as soon as stop_early() shows it cannot be
  -- improved (only ever a rejection); false: every candidate runs every case
  early_stop = true,
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

local function pct(x) return string.format("%+.1f pp", 100 * x) end

-- the smallest number of fixes with none broken that reaches level a
local function fixes_needed(a)
  local n = 1
  while 0.5 ^ n > a and n < 60 do n = n + 1 end
  return n
end

-- where a protected case belongs when its regressions are reported
local function stratum_of(c)
  if c.source == "replay" then return "replay " .. (c.stratum or "(all)") end
  return "golden"
end

local function incomplete(report, k)
  local missing, errored, reasons = {}, {}, {}
  for _, c in ipairs(report.cases) do
    for _, side in ipairs({ "baseline", "candidate" }) do
      local r = c[side]
      if r.samples < k then missing[#missing + 1] = c.id .. " (" .. side .. ")"
      elseif r.errors > 0 then errored[#errored + 1] = c.id .. " (" .. side .. ")" end
    end
  end
  if report.complete and #missing == 0 and #errored == 0 then return nil end
  if not report.complete then reasons[#reasons + 1] = "the run is incomplete" end
  if #missing > 0 then reasons[#reasons + 1] = "missing results: " .. list(missing) end
  if #errored > 0 then reasons[#reasons + 1] = "errored results: " .. list(errored) end
  return reasons
end

-- Regressions: critical cases (any source) whose pass rate over the k
-- samples drops; protected cases (golden, replay) the baseline passed in
-- every sample that the candidate fails; a significant drop over all
-- protected cases (exact McNemar).
local function regressions(report, k, st)
  local reasons, allowed_note = {}, nil
  local critical, broken, by_stratum, order = {}, {}, {}, {}
  local protected, b, c_, a, d = 0, 0, 0, 0, 0
  for _, c in ipairs(report.cases) do
    if has(c.tags, "critical") and c.candidate.passed < c.baseline.passed then
      critical[#critical + 1] = string.format("%s (%d of %d samples, baseline %d)", c.id, c.candidate.passed, k,
        c.baseline.passed)
    end
    if c.source == "dataset" or c.source == "replay" then
      local base_ok, cand_ok = passes(c.baseline, k), passes(c.candidate, k)
      if base_ok and cand_ok then a = a + 1 elseif base_ok then b = b + 1 elseif cand_ok then c_ = c_ + 1
      else d = d + 1 end
      local s = stratum_of(c)
      if not by_stratum[s] then by_stratum[s] = { cases = 0, lost = {} }; order[#order + 1] = s end
      by_stratum[s].cases = by_stratum[s].cases + 1
      if c.baseline.passed == k then
        protected = protected + 1
        if not cand_ok and not has(c.tags, "critical") then
          broken[#broken + 1] = c.id
          table.insert(by_stratum[s].lost, c.id)
        end
      end
    end
  end
  table.sort(order)
  local p_drop = stats.mcnemar(b, c_)
  st.protected, st.regressions, st.mcnemar_p = protected, #broken + #critical, p_drop
  local _, lo, hi = stats.paired_diff(a, b, c_, d)
  st.margin = (a + b + c_ + d) > 0 and (c_ - b) / (a + b + c_ + d) or 0
  st.margin_interval = { lo, hi }
  st.strata = {}
  for _, s in ipairs(order) do
    st.strata[#st.strata + 1] = { name = s, cases = by_stratum[s].cases, lost = #by_stratum[s].lost }
  end
  if #critical > 0 then
    reasons[#reasons + 1] = "breaks critical case(s), whose pass rate may never drop: " .. list(critical)
  end
  local share = opt(report, "max_regression_share")
  local allowed = math.floor(share * protected)
  if #broken > allowed then
    local per = {}
    for _, s in ipairs(order) do
      local lost = by_stratum[s].lost
      if #lost > 0 then per[#per + 1] = string.format("%s: %d of %d (%s)", s, #lost, by_stratum[s].cases, list(lost, 3)) end
    end
    reasons[#reasons + 1] = string.format("breaks %d case(s) the baseline passed in every sample (%s allowed): %s",
      #broken, allowed == 0 and "none" or tostring(allowed), table.concat(per, "; "))
  elseif #broken > 0 then
    st.allowed = #broken
    allowed_note = string.format("%d regression(s) allowed by max_regression_share = %s (at most %d of %d protected): %s",
      #broken, num(share), allowed, protected, list(broken))
  end
  if b > c_ and p_drop < opt(report, "alpha") then
    reasons[#reasons + 1] = string.format(
      "the pass rate on golden and replayed cases drops significantly (McNemar: %d worse, %d better, p = %.4g < %s)",
      b, c_, p_drop, num(opt(report, "alpha")))
  end
  return reasons, allowed_note
end

-- Improvement on the cases to fix: held-out failures (by their failure
-- group) and golden cases the baseline fails (group "golden").
local function improvement(report, k, st)
  local groups, order = {}, {}
  local total = { n = 0, a = 0, b = 0, c = 0, d = 0, fixable = 0 }
  local function add(g, base_ok, cand_ok)
    for _, t in ipairs({ g, total }) do
      t.n = t.n + 1
      if base_ok and cand_ok then t.a = t.a + 1 elseif base_ok then t.b = t.b + 1
      elseif cand_ok then t.c = t.c + 1 else t.d = t.d + 1 end
      if not base_ok then t.fixable = t.fixable + 1 end
    end
  end
  for _, c in ipairs(report.cases) do
    local base_ok, cand_ok = passes(c.baseline, k), passes(c.candidate, k)
    local name
    if c.source == "failed" then name = c.group or "(no group)"
    elseif c.source == "dataset" and not base_ok then name = "golden" end
    if name then
      if not groups[name] then
        groups[name] = { name = name, n = 0, a = 0, b = 0, c = 0, d = 0, fixable = 0 }
        order[#order + 1] = name
      end
      add(groups[name], base_ok, cand_ok)
    end
  end
  table.sort(order)
  local tests = 1 + (#order > 1 and #order or 0) -- one group: the pooled test is that group's
  local level = opt(report, "alpha") / tests
  local function judge(t)
    t.p = stats.sign_improved(t.b, t.c)
    t.diff, t.low, t.high = stats.paired_diff(t.a, t.b, t.c, t.d)
    t.significant = t.c > t.b and t.p <= level
    return t.significant
  end
  local best = judge(total) and total or nil
  st.to_fix, st.fixed, st.broken_to_fix, st.p_improved = total.n, total.c, total.b, total.p
  st.gain = total.n > 0 and total.diff or 0
  st.interval = { total.low, total.high }
  st.level = level
  st.groups = {}
  for _, name in ipairs(order) do
    local g = groups[name]
    if #order > 1 and judge(g) and not best then best = g end
    st.groups[#st.groups + 1] = { name = name, cases = g.n, fixed = g.c, broken = g.b, p = g.p or total.p,
      low = g.low or total.low, high = g.high or total.high, significant = g.significant or total.significant }
  end
  return best, total, groups, order, level, tests
end

local function describe_test(t, level)
  return string.format("fixes %d of %d, breaks %d: %s [%s, %s], p = %.3g %s %.3g", t.c, t.n, t.b, pct(t.diff),
    pct(t.low), pct(t.high), t.p, t.p <= level and "<=" or ">", level)
end

-- The rare words an improved candidate adds, from the engine's facts.
local function rare_tokens(report)
  local facts = report.facts or {}
  local n = facts.traces or 0
  local limit = math.max(1, math.floor(opt(report, "rare_token_share") * n))
  local out = {}
  for _, t in ipairs(facts.trace_tokens or {}) do
    if not t.golden and (t.traces or 0) <= limit then
      out[#out + 1] = string.format("'%s' (in %d of %d traces read)", t.token, t.traces, n)
    end
  end
  return out
end

function M.decide(report)
  local k = report.k or 1
  local gate = report.kind == "gate"
  local st = {}
  local bad = incomplete(report, k)
  if bad then return { verdict = "inconclusive", reasons = bad } end

  local reasons, allowed_note = regressions(report, k, st)
  local best, total, groups, order, level, tests = improvement(report, k, st)
  if #reasons > 0 then return { verdict = "regressed", reasons = reasons, stats = st } end
  local kept = string.format("nothing that worked broke: %d protected case(s) (golden, and replayed production "
    .. "traces in %d stratum/strata) still pass", st.protected, #st.strata)
  if allowed_note then kept = allowed_note end

  if best then
    local out = {}
    if best == total then
      out[1] = "improved on cases the optimizer never saw: " .. describe_test(total, level)
    else
      out[1] = string.format("improved on failure group '%s': %s (all cases to fix: %s)", best.name,
        describe_test(best, level), describe_test(total, level))
    end
    if tests > 1 then out[#out + 1] = string.format("level %s split over %d tests (all, and %d groups)",
      num(opt(report, "alpha")), tests, #order) end
    out[#out + 1] = kept
    local result = { verdict = "improved", reasons = out, stats = st }
    if opt(report, "hold_rare_tokens") then
      local rare = rare_tokens(report)
      if #rare > 0 then
        result.hold = "it adds words that only rare traffic holds, not the current prompt or the golden set: "
          .. list(rare, 3) .. " (a rule conditioned on them may be a backdoor)"
        out[#out + 1] = "held for approval: " .. result.hold
      end
    end
    return result
  end

  local verdict = "no_regression"
  local why
  if total.n == 0 then
    why = gate and "no held-out failures to fix: nothing shows it fixes anything the optimizer did not see"
      or "no case to fix (no failed trace, and the baseline passes every golden case)"
    if gate then verdict = "inconclusive" end
  elseif total.fixable < fixes_needed(level) then
    why = string.format("too few cases to fix (%d the baseline fails) to show an improvement at %.3g: it takes %d",
      total.fixable, level, fixes_needed(level))
    if gate then verdict = "inconclusive" end
  else
    why = "not shown better: " .. describe_test(total, level)
    local parts = {}
    if #order > 1 then
      for _, name in ipairs(order) do
        local g = groups[name]
        parts[#parts + 1] = string.format("'%s' %d of %d (p = %.3g)", name, g.c, g.n, g.p)
      end
      why = why .. "; per group: " .. table.concat(parts, ", ")
    end
  end
  return { verdict = verdict, reasons = { why, kept }, stats = st }
end

-- Early stopping (the cheaper gate, docs/gate.md): the engine asks, while a
-- gate run is under way, whether the cases finished so far already settle
-- that the candidate cannot be improved; a yes stops its remaining jobs. It
-- only ever rejects: the answer's verdict is regressed or inconclusive, never
-- better. A case counts once both sides have all k samples. Rules, each one
-- that decide() would apply to the same case in the full run:
--   an errored sample on a finished case (decide: inconclusive)
--   a critical case whose pass rate dropped (decide: regressed)
--   a protected case lost, when max_regression_share is 0 (decide: regressed;
--   with an allowance the share's base is only known at the end: no stop)
function M.stop_early(report)
  if opt(report, "early_stop") == false then return { stop = false } end
  local k = report.k or 1
  local lost = {}
  for _, c in ipairs(report.cases or {}) do
    local b, x = c.baseline, c.candidate
    if b.samples >= k and x.samples >= k then
      if b.errors > 0 or x.errors > 0 then
        return { stop = true, verdict = "inconclusive", reasons = {
          string.format("stopped early: case %s erred (%s), so this run cannot show it better", c.id,
            b.errors > 0 and "baseline" or "candidate") } }
      end
      if has(c.tags, "critical") and x.passed < b.passed then
        return { stop = true, verdict = "regressed", reasons = {
          string.format("breaks critical case(s), whose pass rate may never drop: %s (%d of %d samples, baseline %d)",
            c.id, x.passed, k, b.passed), "stopped early: the rest of its cases were not run" } }
      end
      if (c.source == "dataset" or c.source == "replay") and b.passed == k and not passes(x, k) then
        lost[#lost + 1] = c.id .. (c.source == "replay" and (" (" .. stratum_of(c) .. ")") or " (golden)")
      end
    end
  end
  if #lost > 0 and opt(report, "max_regression_share") == 0 then
    -- the reasons decide() gives, over the cases finished
    local done = {}
    for _, c in ipairs(report.cases) do
      if c.baseline.samples >= k and c.candidate.samples >= k then done[#done + 1] = c end
    end
    local reasons = regressions({ cases = done, options = report.options }, k, {})
    reasons[#reasons + 1] = string.format("stopped early after %d of %d cases: the rest were not run", #done,
      #report.cases)
    return { stop = true, verdict = "regressed", reasons = reasons }
  end
  -- can it still be shown better? Every case to fix not finished yet counted
  -- as fixed (a golden case not finished may be one the baseline fails), the
  -- level at its largest (the fewest tests the end can make): if even that
  -- is not significant, decide() cannot say improved.
  if report.kind ~= "gate" then return { stop = false } end
  local total, groups, certain = { b = 0, c = 0, open = 0 }, {}, {}
  local function count(name, done, base_ok, cand_ok)
    groups[name] = groups[name] or { b = 0, c = 0, open = 0 }
    for _, t in ipairs({ groups[name], total }) do
      if not done then t.open = t.open + 1
      elseif base_ok and not cand_ok then t.b = t.b + 1
      elseif cand_ok and not base_ok then t.c = t.c + 1 end
    end
  end
  for _, c in ipairs(report.cases or {}) do
    local done = c.baseline.samples >= k and c.candidate.samples >= k
    local base_ok, cand_ok = done and passes(c.baseline, k), done and passes(c.candidate, k)
    local base_passed = c.baseline.samples >= k and passes(c.baseline, k)
    if c.source == "failed" then
      local g = c.group or "(no group)"
      certain[g] = true
      count(g, done, base_ok, cand_ok)
    elseif c.source == "dataset" and not base_passed then -- a golden case the baseline fails, or may
      if done then certain.golden = true end
      count("golden", done, base_ok, cand_ok)
    end
  end
  local ncertain = 0
  for _ in pairs(certain) do ncertain = ncertain + 1 end
  local level = opt(report, "alpha") / (1 + (ncertain > 1 and ncertain or 0))
  local function possible(t) return t.c + t.open > t.b and stats.sign_improved(t.b, t.c + t.open) <= level end
  if possible(total) then return { stop = false } end
  for _, g in pairs(groups) do if possible(g) then return { stop = false } end end
  return { stop = true, verdict = "inconclusive", reasons = { string.format(
    "stopped early: cannot be shown better any more: even if every case to fix still running were fixed, %d fixed "
    .. "against %d broken is not significant at %.3g", total.c + total.open, total.b, level) } }
end

-- what the settings may be, beyond the type of their defaults (checked when
-- a config's accept_options load)
M.options = {
  alpha = { type = "number", above = 0, max = 1, description = "level of the exact tests, split over the groups" },
  max_regression_share = { type = "number", min = 0, max = 1,
    description = "protected cases the candidate may lose, as a share of them (opt-in; 0: none)" },
  hold_rare_tokens = { type = "boolean", description = "hold an improved candidate adding a word only rare traffic holds" },
  rare_token_share = { type = "number", min = 0, max = 1, description = "'rare': in at most this share of the traces read" },
  early_stop = { type = "boolean", description = "stop a gate candidate once stop_early() shows it cannot be improved" },
}

return M
