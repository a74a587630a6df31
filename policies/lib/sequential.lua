-- lib/sequential.lua — an always-valid confidence sequence for the
-- difference of two pass rates, from the mixture sequential probability
-- ratio test (mSPRT; Robbins 1970, Johari, Pekelis & Walsh 2017).
--
-- With the estimate d = p_a - p_b and its variance V = p_a(1-p_a)/n_a +
-- p_b(1-p_b)/n_b (normal approximation), the mixture likelihood ratio with a
-- N(0, tau^2) prior on the true difference is
--   L = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))
-- and P(L ever reaches 1/alpha | no difference) <= alpha, however often it
-- is looked at. Inverting it gives the radius r: the interval d +- r covers
-- the true difference at every look with probability >= 1 - alpha.
local M = {}

-- smoothed rate, so a 0 or 1 pass rate still has a variance
local function rate(passed, n) return (passed + 0.5) / (n + 1) end

-- d = p_a - p_b and its always-valid radius; nil when a side has no data
function M.diff(passed_a, n_a, passed_b, n_b, alpha, tau)
  if n_a <= 0 or n_b <= 0 then return nil end
  local pa, pb = rate(passed_a, n_a), rate(passed_b, n_b)
  local v = pa * (1 - pa) / n_a + pb * (1 - pb) / n_b
  local t2 = tau * tau
  local r = math.sqrt(2 * v * (v + t2) / t2 * (math.log(1 / alpha) + 0.5 * math.log((v + t2) / v)))
  return passed_a / n_a - passed_b / n_b, r
end

return M
