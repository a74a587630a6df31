-- Shared by max_latency, max_tokens and max_length: a value from the case
-- compared with an upper bound.
local text = require "lib.text"
local M = {}

function M.at_most(name, what, value, bound, unit)
  if value == nil or value == ratchet.json.null then
    return text.pass("no " .. what .. " recorded; not judged")
  end
  local u = unit ~= "" and " " .. unit or ""
  if value <= bound then return text.pass(what .. " " .. text.num(value) .. u .. " (at most " .. text.num(bound) .. ")") end
  return text.fail(what .. " " .. text.num(value) .. u .. " is over " .. text.num(bound))
end

return M
