-- policies/accept.lua over its decision table, run in the engine's sandbox.
local sandbox = require "spec.helpers.sandbox"

local policy = sandbox.policy("accept")

-- a case: id, source, tags, and the passed counts of baseline and candidate
local function case(id, source, tags, base, cand, k, errs)
  k = k or 1
  return { id = id, source = source, tags = tags or {},
           baseline = { passed = base, failed = k - base, errors = 0, samples = k },
           candidate = { passed = cand, failed = k - cand - (errs or 0), errors = errs or 0, samples = k } }
end

local function report(cases, extra)
  local r = { run = "r1", prompt = "p", baseline = 1, candidate = 2, k = 1, complete = true, cases = cases, options = {} }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

local function golden(n, base, cand, tags)
  local out = {}
  for i = 1, n do out[i] = case("g" .. i, "dataset", tags or { "golden" }, base, cand) end
  return out
end

describe("accept policy", function()
  it("accepts a candidate that fixes the failures and breaks nothing", function()
    local cases = golden(20, 1, 1)
    cases[#cases + 1] = case("t1", "failed", { "failed" }, 0, 1)
    cases[#cases + 1] = case("t2", "failed", { "failed" }, 0, 1)
    local d = policy:call("decide", report(cases))
    assert.equal("accept", d.verdict)
    assert.matches("fixes 2 of 2", d.reasons[1])
    assert.equal(0, d.stats.regressions)
  end)

  it("rejects a candidate that breaks a critical case, naming it", function()
    local cases = golden(20, 1, 1)
    cases[#cases + 1] = case("crit-7", "dataset", { "critical" }, 1, 0)
    cases[#cases + 1] = case("t1", "failed", { "failed" }, 0, 1)
    local d = policy:call("decide", report(cases))
    assert.equal("reject", d.verdict)
    assert.matches("critical case%(s%): crit%-7", d.reasons[1])
  end)

  it("gives critical cases zero tolerance even for one sample in k", function()
    local cases = { case("c1", "dataset", { "critical" }, 3, 2, 3), case("t1", "failed", {}, 0, 3, 3) }
    local d = policy:call("decide", report(cases, { k = 3 }))
    assert.equal("reject", d.verdict)
  end)

  it("tolerates a bounded share of non-critical regressions", function()
    local cases = golden(100, 1, 1)
    cases[1] = case("g1", "dataset", {}, 1, 0)          -- 1 of 100: within 2%
    cases[#cases + 1] = case("t1", "failed", {}, 0, 1)
    assert.equal("accept", policy:call("decide", report(cases)).verdict)
    cases[2] = case("g2", "dataset", {}, 1, 0)
    cases[3] = case("g3", "dataset", {}, 1, 0)          -- 3 of 100: over
    local d = policy:call("decide", report(cases))
    assert.equal("reject", d.verdict)
    assert.matches("breaks 3 golden case", d.reasons[1])
  end)

  it("rejects a significant drop in the golden pass rate (exact McNemar)", function()
    local cases = golden(40, 1, 1)
    for i = 1, 8 do cases[i] = case("g" .. i, "dataset", {}, 1, 0) end
    local d = policy:call("decide", report(cases, { options = { max_regression_share = 0.5, alpha = 0.0123456789 } }))
    assert.equal("reject", d.verdict)
    assert.matches("drops significantly", table.concat(d.reasons, "; "))
    -- the setting as given, not rounded by %g to 0.0123457
    assert.truthy(table.concat(d.reasons, "; "):find("p = 0.003906 < 0.0123456789)", 1, true), table.concat(d.reasons, "; "))
    assert.near(0.5 ^ 8, d.stats.p_value, 1e-12) -- 8 discordant pairs, all worse: exact binomial tail
  end)

  it("rejects when too few failures are fixed", function()
    local cases = golden(10, 1, 1)
    for i = 1, 4 do cases[#cases + 1] = case("t" .. i, "failed", {}, 0, i == 1 and 1 or 0) end
    local d = policy:call("decide", report(cases))
    assert.equal("reject", d.verdict)
    assert.matches("fixes 1 of 4", d.reasons[1])
  end)

  it("is inconclusive on errored, missing or incomplete data, never accepting", function()
    local cases = golden(10, 1, 1)
    cases[#cases + 1] = case("t1", "failed", {}, 0, 0, 1, 1)
    local d = policy:call("decide", report(cases))
    assert.equal("inconclusive", d.verdict)
    assert.matches("errored results: t1", d.reasons[1])
    local short = golden(3, 1, 1)
    short[1].candidate.samples = 0
    assert.equal("inconclusive", policy:call("decide", report(short)).verdict)
    assert.equal("inconclusive", policy:call("decide", report(golden(3, 1, 1), { complete = false })).verdict)
  end)

  it("takes its thresholds from policy_options", function()
    local cases = golden(10, 1, 1)
    for i = 1, 4 do cases[#cases + 1] = case("t" .. i, "failed", {}, 0, i == 1 and 1 or 0) end
    local d = policy:call("decide", report(cases, { options = { min_fixed_share = 0.25 } }))
    assert.equal("accept", d.verdict)
  end)
end)

