-- Each shipped policy declares the options a prompt may set (its settings'
-- keys and types, narrowed by its options block): what the engine checks a
-- config's *_options against when it loads (spec/engine/validation_spec.lua).
local sandbox = require "spec.helpers.sandbox"

local cases = {
  trigger = {
    good = { {}, { min_failures = 3, min_failure_rate = 0.2, min_evaluated = 10, cooldown_ms = 0 } },
    bad = {
      { { min_failure = 3 }, "unknown option 'min_failure'; did you mean 'min_failures'?" },
      { { min_failures = 2.5 }, "option 'min_failures' must be an integer (got 2.5)" },
      { { min_failure_rate = 1.5 }, "option 'min_failure_rate' must be at most 1 (got 1.5)" },
    },
  },
  mining = {
    good = { {}, { max_shown = 5, holdout = 0, max_input_bytes = 100, strata = { "metadata.segment", "length" },
      replay_floor = 3 } },
    bad = {
      { { holdout = 2 }, "option 'holdout' must be at most 1 (got 2)" },
      { { max_shown = 0 }, "option 'max_shown' must be at least 1 (got 0)" },
    },
  },
  accept = {
    good = { {}, { max_regression_share = 0.02, alpha = 0.01, hold_rare_tokens = false, rare_token_share = 0.1 } },
    bad = {
      { { alpha = 0 }, "option 'alpha' must be more than 0 (got 0)" },
      { { alpah = 0.1 }, "did you mean 'alpha'?" },
      { { alpha = "0.05" }, "option 'alpha' must be a number (got a string)" },
      { { min_fixed_share = 0.5 }, "unknown option 'min_fixed_share'" },
      { { rare_token_share = 2 }, "option 'rare_token_share' must be at most 1 (got 2)" },
    },
  },
  rollout = {
    good = { {}, { steps = { 10, 50 }, min_step_samples = 15, min_step_ms = 2000, margin = 0.1, tau = 0.3,
      slices = { "metadata.tier" }, min_latency_increase_ms = 20, require_better = true } },
    bad = {
      { { stpes = { 5 } }, "unknown option 'stpes'; did you mean 'steps'?" },
      { { steps = { 5, "x" } }, "option 'steps': item 2 must be a number (got a string)" },
      { { steps = 5 }, "option 'steps' must be a list (got a number)" },
      { { max_latency_ratio = 0 }, "option 'max_latency_ratio' must be more than 0 (got 0)" },
      { { slices = { 3 } }, "option 'slices': item 1 must be a string (got a number)" },
      { { min_slice_share = 1.5 }, "option 'min_slice_share' must be at most 1 (got 1.5)" },
    },
  },
}

describe("shipped policies' option declarations", function()
  for name, c in pairs(cases) do
    describe(name, function()
      local p = sandbox.policy(name)
      it("accept the settings' own defaults and good options", function()
        for _, good in ipairs(c.good) do
          local ok, problems = p:check_options(good)
          assert.is_true(ok, name .. ": " .. table.concat(problems or {}, "; "))
        end
      end)
      it("reject mistakes, naming the option", function()
        for _, bad in ipairs(c.bad) do
          local ok, problems = p:check_options(bad[1])
          assert.is_false(ok, name .. ": expected " .. bad[2])
          local all = table.concat(problems, "\n")
          assert.truthy(all:find(bad[2], 1, true), name .. ": expected '" .. bad[2] .. "' in:\n" .. all)
        end
      end)
    end)
  end
end)
