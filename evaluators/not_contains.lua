-- not_contains: the output contains none of the given text(s).
local contains = require "contains"

return {
  name = "not_contains",
  description = "the output contains none of the given text",
  options = {
    value = { type = { "string", "list" }, items = "string", required = true, nonempty = true,
              description = "text that must not appear, or a list of texts (plain text, not a pattern)" },
    case_sensitive = contains._options.case_sensitive,
  },
  evaluate = function(case, opts) return contains._evaluate(case, opts, true) end,
}
