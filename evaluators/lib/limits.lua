-- Shared by max_latency, max_tokens and max_length: a value from the case
-- compared with an upper bound.
local text = require "lib.text"
local M = {}

function M.at_most(name, what, value, bound, unit)
  if value == nil or value == ratchet.json.null then
    return text.pass("no " .. what .. " recorded; not judged")
  end
  if value <= bound then return text.pass(string.format("%s %g %s (at most %g)", what, value, unit, bound)) end
  return text.fail(string.format("%s %g %s is over %g", what, value, unit, bound))
end

return M
