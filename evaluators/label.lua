-- label: a classification matches the expected label. The label is the whole
-- output, or one field of a JSON output (field = "category").
local text = require "lib.text"

return {
  name = "label",
  description = "the output's label (the output, or a field of its JSON) equals the expected label",
  options = {
    field = { type = "string", nonempty = true,
              description = "read the label from this field of a JSON output (default: the whole output)" },
    case_sensitive = { type = "boolean", default = false, description = "true: labels must match in case too" },
    allowed = { type = "list", items = "string", nonempty = true,
                description = "the output's label must be one of these (checked even without an expected label)" },
  },
  evaluate = function(case, opts)
    local norm = { trim = true, case_sensitive = opts.case_sensitive == true }
    local got
    if opts.field then
      local value, err = text.output_json(case)
      if type(value) ~= "table" then return text.fail("output is not a JSON object: " .. text.excerpt(err or "")) end
      got = value[opts.field]
      if got == nil or got == ratchet.json.null then return text.fail("output has no field '" .. opts.field .. "'") end
    else
      got = text.output_text(case)
    end
    got = text.normalise(got, norm)
    if opts.allowed then
      local ok = false
      for _, a in ipairs(opts.allowed) do if text.normalise(a, norm) == got then ok = true end end
      if not ok then return text.fail("label '" .. text.excerpt(got, 40) .. "' is not an allowed label") end
    end
    local expected = case.expected
    if type(expected) == "table" and opts.field then expected = expected[opts.field] end
    if expected == nil or expected == ratchet.json.null then
      if opts.allowed then return text.pass("label '" .. text.excerpt(got, 40) .. "' is allowed") end
      return text.fail("the case has no expected label")
    end
    if got == text.normalise(expected, norm) then return text.pass("label '" .. text.excerpt(got, 40) .. "'") end
    return text.fail("expected label '" .. text.excerpt(expected, 40) .. "', got '" .. text.excerpt(got, 40) .. "'")
  end,
}
