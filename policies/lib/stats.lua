-- lib/stats.lua — the statistics the policies use: exact binomial tails,
-- the exact McNemar test and sign test on paired outcomes, Wilson score
-- intervals and Newcombe's interval for a paired difference.
-- Pure Lua, no state; works in log space so n in the tens of thousands is fine.
local M = {}

local function log_choose(n, k)
  -- log(n choose k) through the log-gamma-free sum of logs, with symmetry
  if k < 0 or k > n then return -math.huge end
  if k > n - k then k = n - k end
  local s = 0
  for i = 1, k do s = s + math.log(n - k + i) - math.log(i) end
  return s
end

-- P(X <= k) for X ~ Binomial(n, 1/2).
function M.binom_half_cdf(k, n)
  if k < 0 then return 0 end
  if k >= n then return 1 end
  -- sum terms in log space relative to the largest, for stability
  local logs, top = {}, -math.huge
  for i = 0, k do
    local l = log_choose(n, i) - n * math.log(2)
    logs[#logs + 1] = l
    if l > top then top = l end
  end
  local s = 0
  for _, l in ipairs(logs) do s = s + math.exp(l - top) end
  local p = math.exp(top) * s
  return p > 1 and 1 or p
end

-- Exact McNemar test on discordant pairs. b: pairs the baseline passed and
-- the candidate failed; c: the reverse. Returns the one-sided p-value for
-- "the candidate is worse" (b large against c) and the two-sided one.
function M.mcnemar(b, c)
  local n = b + c
  if n == 0 then return 1, 1 end
  local one = M.binom_half_cdf(c, n)                 -- P(X <= c): as few improvements by chance
  local two = 2 * M.binom_half_cdf(math.min(b, c), n)
  return one, two > 1 and 1 or two
end

-- Exact one-sided sign test for an improvement on paired outcomes: c pairs
-- the candidate fixed, b pairs it broke. The p-value P(X >= c) for X ~
-- Binomial(b + c, 1/2) (= P(X <= b) by symmetry): how often chance alone
-- would show as many fixes.
function M.sign_improved(b, c)
  if b + c == 0 then return 1 end
  return M.binom_half_cdf(b, b + c)
end

-- Newcombe's (1998, method 10) interval for a difference of paired
-- proportions, candidate minus baseline, from the four cells: a both pass,
-- b only the baseline passes, c only the candidate passes, d both fail.
-- Returns the difference, low, high (about 95% with the default z).
function M.paired_diff(a, b, c, d, z)
  local n = a + b + c + d
  if n == 0 then return 0, -1, 1 end
  local p1, p2 = (a + c) / n, (a + b) / n
  local l1, u1 = M.wilson(a + c, n, z)
  local l2, u2 = M.wilson(a + b, n, z)
  local den = (a + b) * (c + d) * (a + c) * (b + d)
  local phi = 0
  if den > 0 then
    local num = a * d - b * c
    if num > 0 then num = math.max(num - n / 2, 0) end
    phi = num / math.sqrt(den)
  end
  local dl = math.sqrt(math.max(0, (p1 - l1) ^ 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ^ 2))
  local du = math.sqrt(math.max(0, (u1 - p1) ^ 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ^ 2))
  local diff = p1 - p2
  return diff, math.max(-1, diff - dl), math.min(1, diff + du)
end

-- Wilson score interval for passed out of n at ~95% (z = 1.96).
function M.wilson(passed, n, z)
  z = z or 1.959964
  if n == 0 then return 0, 1 end
  local p = passed / n
  local d = 1 + z * z / n
  local centre = (p + z * z / (2 * n)) / d
  local half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
  return math.max(0, centre - half), math.min(1, centre + half)
end

return M
