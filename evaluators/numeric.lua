-- numeric: the output (or a field of its JSON) is a number within a
-- tolerance of the expected number.
local text = require "lib.text"

return {
  name = "numeric",
  description = "the output is a number within tolerance of case.expected",
  options = {
    field = "string: read the number from this field of a JSON output",
    abs_tolerance = "number >= 0, default 0",
    rel_tolerance = "number >= 0, default 0 (0.01 = 1 %)",
  },
  evaluate = function(case, opts)
    text.check_opts("numeric", opts, { field = "string?", abs_tolerance = "number?", rel_tolerance = "number?" })
    local abs_tol, rel_tol = opts.abs_tolerance or 0, opts.rel_tolerance or 0
    if abs_tol < 0 or rel_tol < 0 then error("numeric: tolerances must be zero or more", 0) end
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
      return text.pass(string.format("%.10g is within tolerance of %.10g", got, want))
    end
    return text.fail(string.format("%.10g is off by %.6g from %.10g", got, diff, want))
  end,
}
