-- lib/num.lua — a number as the shortest text that reads back as the same
-- number: how policies print the settings they were given in a reason
-- (0.05, not 0.050000000000000003; 1.25, not 1.2 from %.1f; 1234567, not
-- 1.23457e+06 from %g). Never rounded.
--   local num = require "lib.num"
--   string.format("under %s", num(0.1))  --> "under 0.1"
return function(x)
  if math.type(x) == "integer" then return string.format("%d", x) end
  if x ~= x or x == math.huge or x == -math.huge then return tostring(x) end
  if x == math.floor(x) and math.abs(x) < 2 ^ 53 then return string.format("%d", x) end
  for p = 15, 17 do
    local s = string.format("%." .. p .. "g", x)
    if tonumber(s) == x then return s end
  end
end
