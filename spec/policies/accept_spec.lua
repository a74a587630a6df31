-- policies/accept.lua over its decision table, run in the engine's sandbox.
local sandbox = require "spec.helpers.sandbox"

local policy = sandbox.policy("accept")

-- a case: id, source, tags, and the passed counts of baseline and candidate
local function case(id, source, tags, base, cand, k, errs, extra)
  k = k or 1
  local c = { id = id, source = source, tags = tags or {},
              baseline = { passed = base, failed = k - base, errors = 0, samples = k },
              candidate = { passed = cand, failed = k - cand - (errs or 0), errors = errs or 0, samples = k } }
  for key, v in pairs(extra or {}) do c[key] = v end
  return c
end

local function report(cases, extra)
  local r = { run = "r1", kind = "gate", prompt = "p", baseline = 1, candidate = 2, k = 1, complete = true,
              cases = cases, options = {} }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

local function golden(n, base, cand, tags)
  local out = {}
  for i = 1, n do out[i] = case("g" .. i, "dataset", tags or { "golden" }, base, cand) end
  return out
end

-- n held-out failures of one group: fixed of them fixed
local function failures(cases, group, n, fixed, broken)
  for i = 1, n do
    local base, cand = 0, i <= fixed and 1 or 0
    if broken and i > n - broken then base, cand = 1, 0 end
    cases[#cases + 1] = case(group .. "-" .. i, "failed", { "failed" }, base, cand, 1, 0, { group = group })
  end
  return cases
end

local function decide(cases, extra) return policy:call("decide", report(cases, extra)) end

describe("accept policy", function()
  it("says improved when the held-out failures are fixed significantly and nothing broke, with the interval", function()
    local d = decide(failures(golden(20, 1, 1), "json_schema: not valid JSON", 6, 6))
    assert.equal("improved", d.verdict)
    assert.matches("fixes 6 of 6, breaks 0", d.reasons[1], 1, true)
    assert.matches("p = 0.0156 <= 0.05", d.reasons[1], 1, true)
    assert.matches("%[%+%d+%.%d pp, %+100%.0 pp%]", d.reasons[1])
    assert.matches("20 protected case", d.reasons[#d.reasons], 1, true)
    assert.equal(0, d.stats.regressions)
    assert.near(0.5 ^ 6, d.stats.p_improved, 1e-12)
    assert.near(1, d.stats.gain, 1e-12)
  end)

  it("never calls 'no failing cases to fix' an improvement: inconclusive in the loop, no regression in CI", function()
    local d = decide(golden(20, 1, 1))
    assert.equal("inconclusive", d.verdict)
    assert.matches("no held%-out failures", d.reasons[1])
    local e = decide(golden(20, 1, 1), { kind = "eval" })
    assert.equal("no_regression", e.verdict)
  end)

  it("is inconclusive in the loop when too few failures are held out to show anything", function()
    local d = decide(failures(golden(10, 1, 1), "g", 3, 3))
    assert.equal("inconclusive", d.verdict)
    assert.matches("too few cases to fix %(3", d.reasons[1])
    assert.equal("no_regression", decide(failures(golden(10, 1, 1), "g", 3, 3), { kind = "eval" }).verdict)
  end)

  it("says no regression when fixes are not significant", function()
    local d = decide(failures(golden(10, 1, 1), "g", 12, 3, 2))
    assert.equal("no_regression", d.verdict)
    assert.matches("not shown better: fixes 3 of 12, breaks 2", d.reasons[1], 1, true)
  end)

  it("counts fixing one failure mode as progress, the level split over the groups", function()
    -- group A: 7 fixed; group B: 4 of its cases the baseline passed on the re-run now fail
    local cases = failures(golden(10, 1, 1), "A", 7, 7)
    failures(cases, "B", 6, 0, 4)
    local d = decide(cases)
    assert.equal("improved", d.verdict)
    assert.matches("improved on failure group 'A': fixes 7 of 7", d.reasons[1], 1, true)
    assert.matches("split over 3 tests", d.reasons[2], 1, true)
    assert.near(0.05 / 3, d.stats.level, 1e-12)
    assert.is_false(d.stats.p_improved <= d.stats.level) -- all together it is not significant
  end)

  it("has zero tolerance by default and says exactly what an opt-in allowance let through", function()
    local cases = failures(golden(60, 1, 1), "g", 6, 6)
    cases[1] = case("g1", "dataset", {}, 1, 0)
    local d = decide(cases)
    assert.equal("regressed", d.verdict)
    assert.matches("breaks 1 case%(s%) the baseline passed in every sample %(none allowed%): golden: 1 of 60 %(g1%)",
      d.reasons[1])
    d = decide(cases, { options = { max_regression_share = 0.02 } })
    assert.equal("improved", d.verdict)
    assert.matches("1 regression(s) allowed by max_regression_share = 0.02 (at most 1 of 60 protected): g1",
      d.reasons[#d.reasons], 1, true)
    assert.is_nil(table.concat(d.reasons, "; "):find("nothing that worked broke", 1, true))
  end)

  it("reports regressions of replayed production traces per stratum", function()
    local cases = failures(golden(10, 1, 1), "g", 6, 6)
    for i = 1, 3 do
      cases[#cases + 1] = case("replay:r" .. i, "replay", { "replay" }, 1, i == 2 and 0 or 1, 1, 0,
        { stratum = "charset=non-ascii" })
    end
    cases[#cases + 1] = case("replay:r9", "replay", { "replay" }, 1, 1, 1, 0, { stratum = "charset=ascii" })
    local d = decide(cases)
    assert.equal("regressed", d.verdict)
    assert.matches("replay charset=non-ascii: 1 of 3 (replay:r2)", d.reasons[1], 1, true)
  end)

  it("protects critical cases by rate, even when the baseline passed only some samples", function()
    local cases = failures({}, "g", 6, 6)
    for _, c in ipairs(cases) do c.baseline = { passed = 0, failed = 3, errors = 0, samples = 3 }
      c.candidate = { passed = 3, failed = 0, errors = 0, samples = 3 } end
    cases[#cases + 1] = case("crit", "dataset", { "critical" }, 2, 1, 3)
    local d = decide(cases, { k = 3 })
    assert.equal("regressed", d.verdict)
    assert.matches("crit (1 of 3 samples, baseline 2)", d.reasons[1], 1, true)
    cases[#cases] = case("crit", "dataset", { "critical" }, 2, 2, 3)
    assert.equal("improved", decide(cases, { k = 3 }).verdict)
  end)

  it("says regressed on a significant drop over golden and replayed cases (exact McNemar)", function()
    local cases = golden(40, 1, 1)
    for i = 1, 8 do cases[i] = case("g" .. i, "dataset", {}, 1, 0) end
    local d = decide(cases, { options = { max_regression_share = 0.5 } })
    assert.equal("regressed", d.verdict)
    assert.matches("drops significantly", table.concat(d.reasons, "; "))
    assert.near(0.5 ^ 8, d.stats.mcnemar_p, 1e-12)
  end)

  it("holds an improved candidate that adds a word only rare traffic holds", function()
    local cases = failures(golden(20, 1, 1), "g", 6, 6)
    local facts = { traces = 500, trace_tokens = {
      { token = "9041", traces = 1, golden = false }, { token = "widgets", traces = 300, golden = false } } }
    local d = decide(cases, { facts = facts })
    assert.equal("improved", d.verdict)
    assert.matches("'9041' (in 1 of 500 traces read)", d.hold, 1, true)
    assert.is_nil(d.hold:find("widgets", 1, true))
    -- a word the golden set names, or common traffic, is no reason to hold
    facts.trace_tokens[1].golden = true
    assert.is_nil(decide(cases, { facts = facts }).hold)
    facts.trace_tokens[1] = { token = "9041", traces = 40, golden = false }
    assert.is_nil(decide(cases, { facts = facts }).hold)
    assert.is_nil(decide(cases, { facts = { traces = 500, trace_tokens = {
      { token = "9041", traces = 1, golden = false } } }, options = { hold_rare_tokens = false } }).hold)
  end)

  it("is inconclusive on errored, missing or incomplete data, never improved", function()
    local cases = failures(golden(10, 1, 1), "g", 6, 6)
    cases[#cases + 1] = case("t1", "failed", {}, 0, 0, 1, 1)
    local d = decide(cases)
    assert.equal("inconclusive", d.verdict)
    assert.matches("errored results: t1", d.reasons[1])
    local short = golden(3, 1, 1)
    short[1].candidate.samples = 0
    assert.equal("inconclusive", decide(short).verdict)
    assert.equal("inconclusive", decide(golden(3, 1, 1), { complete = false }).verdict)
  end)

  it("takes its level from policy_options", function()
    local cases = failures(golden(10, 1, 1), "g", 5, 5)
    assert.equal("inconclusive", decide(cases, { options = { alpha = 0.01 } }).verdict)
    assert.equal("improved", decide(cases, { options = { alpha = 0.05 } }).verdict)
  end)
end)

describe("lib.stats", function()
  local stats = dofile("policies/lib/stats.lua")

  it("puts Newcombe's paired interval around the difference, close to Wald's for large counts", function()
    local d, lo, hi = stats.paired_diff(400, 30, 90, 480)
    assert.near(0.06, d, 1e-12)
    assert.is_true(lo < d and d < hi)
    -- Wald for paired data: sqrt(((b + c) - (c - b)^2 / n)) / n
    local se = math.sqrt((30 + 90) - (90 - 30) ^ 2 / 1000) / 1000
    assert.near(d - 1.959964 * se, lo, 0.003)
    assert.near(d + 1.959964 * se, hi, 0.003)
    -- small counts stay inside [-1, 1]; all fixed: the upper end is +1
    d, lo, hi = stats.paired_diff(0, 0, 6, 0)
    assert.equal(1, d)
    assert.equal(1, hi)
    assert.is_true(lo > 0.4 and lo < 1)
  end)

  it("gives the exact sign test for an improvement", function()
    assert.near(0.5 ^ 6, stats.sign_improved(0, 6), 1e-12)
    assert.near(8 / 128, stats.sign_improved(1, 6), 1e-12) -- P(X >= 6 | n = 7)
    assert.equal(1, stats.sign_improved(0, 0))
  end)
end)

-- stop_early: what a gate run may settle before its end; only ever a rejection
describe("accept policy: stop_early", function()
  local function stop(cases, extra) return policy:call("stop_early", report(cases, extra)) end
  local function running(id, source, group)
    return { id = id, source = source, tags = {}, group = group,
             baseline = { passed = 0, failed = 0, errors = 0, samples = 0 },
             candidate = { passed = 0, failed = 0, errors = 0, samples = 0 } }
  end

  it("stops a candidate that lost a protected case, as decide() would reject it", function()
    local cases = failures(golden(3, 1, 1), "json", 10, 10)
    cases[2] = case("g2", "dataset", { "golden" }, 1, 0)
    for i = 1, 20 do cases[#cases + 1] = running("more" .. i, "dataset") end
    local r = stop(cases)
    assert.is_true(r.stop)
    assert.equal("regressed", r.verdict)
    assert.matches("breaks 1 case%(s%) the baseline passed in every sample %(none allowed%): golden: 1 of 3 %(g2%)", r.reasons[1])
    assert.matches("stopped early after 13 of 33 cases", r.reasons[#r.reasons])
    -- decide() on the full run says the same: regressed
    local full = {}
    for _, c in ipairs(cases) do if c.baseline.samples > 0 then full[#full + 1] = c end end
    assert.equal("regressed", decide(full).verdict)
  end)

  it("never stops on a loss an allowance may let through, nor on cases still running", function()
    local cases = failures(golden(3, 1, 1), "json", 10, 10)
    cases[2] = case("g2", "dataset", { "golden" }, 1, 0)
    assert.is_false(stop(cases, { options = { max_regression_share = 0.5 } }).stop)
    -- a case whose candidate samples are not all in yet is not counted
    local c = case("g9", "dataset", { "golden" }, 1, 0)
    c.candidate.samples = 0
    assert.is_false(stop(failures({ c }, "json", 10, 10)).stop)
  end)

  it("stops on a critical case whose pass rate dropped, and on an error", function()
    local cases = failures({ case("c1", "dataset", { "critical" }, 3, 2, 3) }, "json", 10, 10)
    for _, x in ipairs(cases) do if x.source == "failed" then x.baseline.samples, x.candidate.samples = 3, 3 end end
    local r = stop(cases, { k = 3 })
    assert.is_true(r.stop)
    assert.equal("regressed", r.verdict)
    assert.matches("breaks critical case%(s%), whose pass rate may never drop: c1", r.reasons[1])
    r = stop({ case("g1", "dataset", {}, 1, 0, 1, 1) })
    assert.is_true(r.stop)
    assert.equal("inconclusive", r.verdict)
  end)

  it("stops a candidate that can no longer be shown better, and not one that still can", function()
    -- 20 held-out failures done, none fixed; 2 still running: even both fixed is not significant
    local cases = failures({}, "json", 20, 0)
    cases[#cases + 1] = running("r1", "failed", "json")
    cases[#cases + 1] = running("r2", "failed", "json")
    local r = stop(cases)
    assert.is_true(r.stop)
    assert.equal("inconclusive", r.verdict)
    assert.matches("cannot be shown better any more", r.reasons[1])
    -- 10 still running could still be 10 fixed of 10: p = 1/1024, significant: no stop
    for i = 3, 10 do cases[#cases + 1] = running("r" .. i, "failed", "json") end
    assert.is_false(stop(cases).stop)
    -- golden cases still running may be cases to fix: no stop either
    cases = failures({}, "json", 20, 0)
    for i = 1, 10 do cases[#cases + 1] = running("g" .. i, "dataset") end
    assert.is_false(stop(cases).stop)
    -- and decide() on the finished 22 cases never says improved
    local done = failures({}, "json", 20, 0)
    failures(done, "json2", 2, 2)
    assert.are_not.equal("improved", decide(done).verdict)
  end)

  it("is off with early_stop = false, and outside gate runs for the bound on gains", function()
    local cases = failures(golden(3, 1, 1), "json", 10, 10)
    cases[2] = case("g2", "dataset", { "golden" }, 1, 0)
    assert.is_false(stop(cases, { options = { early_stop = false } }).stop)
    assert.is_false(stop(failures({}, "json", 20, 0), { kind = "eval" }).stop)
  end)
end)
