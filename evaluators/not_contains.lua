-- not_contains: the output contains none of the given text(s).
local contains = require "contains"

return {
  name = "not_contains",
  description = "the output contains none of the given text",
  options = {
    value = "string or list of strings: text that must not appear (plain, not a pattern)",
    case_sensitive = "boolean, default true",
  },
  evaluate = function(case, opts) return contains._evaluate(case, opts, "not_contains", true) end,
}
