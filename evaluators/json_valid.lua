-- json_valid: the output is JSON (a JSON text, or a JSON value already).
local text = require "lib.text"

return {
  name = "json_valid",
  description = "the output parses as JSON",
  options = {
    object = { type = "boolean", default = false, description = "also require a JSON object (not a scalar or a list)" },
  },
  evaluate = function(case, opts)
    local value, err = text.output_json(case)
    if value == nil then
      return text.fail("output is not valid JSON: " .. text.excerpt(err))
    end
    if opts.object and (type(value) ~= "table" or value[1] ~= nil) then
      return text.fail("output is JSON but not an object")
    end
    return text.pass("output is valid JSON")
  end,
}
