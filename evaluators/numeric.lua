-- numeric: the output (or a field of its JSON) is a number within a
-- tolerance of the expected number.
local text = require "lib.text"

local OPTIONS = {
  field = { type = "string", nonempty = true, description = "read the number from this field of a JSON output" },
  abs_tolerance = { type = "number", min = 0, default = 0, description = "the largest absolute difference allowed" },
  rel_tolerance = { type = "number", min = 0, default = 0,
                    description = "the largest difference allowed relative to the expected number (0.01 = 1 %)" },
}

return {
  name = "numeric",
  description = "the output is a number within tolerance of case.expected",
  options = OPTIONS,
  evaluate = function(case, opts)
    local abs_tol, rel_tol = text.opt(opts, OPTIONS, "abs_tolerance"), text.opt(opts, OPTIONS, "rel_tolerance")
    local raw
    if opts.field then
      local value = text.output_json(case)
      if type(value) ~= "table" then return text.fail("output is not a JSON object") end
      raw = value[opts.field]
    else
      raw = text.output_json(case)
      if raw == nil then raw = text.output_text(case) end
    end
    local got = tonumber(type(raw) == "string" and raw:match("^%s*(.-)%s*$") or raw)
    if not got or got ~= got then return text.fail("output is not a number: " .. text.excerpt(tostring(raw), 40)) end
    local want = case.expected
    if type(want) == "table" and opts.field then want = want[opts.field] end
    want = tonumber(want)
    if not want then return text.fail("the case has no expected number") end
    local diff = math.abs(got - want)
    if diff <= abs_tol or diff <= rel_tol * math.abs(want) then
      return text.pass(text.num(got) .. " is within tolerance of " .. text.num(want))
    end
    return text.fail(text.num(got) .. " is off by " .. text.num(diff) .. " from " .. text.num(want))
  end,
}
