-- max_length: the output is at most max_chars characters (UTF-8 aware).
local text = require "lib.text"
local limits = require "lib.limits"

return {
  name = "max_length",
  description = "the output is at most max_chars characters long",
  options = {
    max_chars = { type = "integer", min = 1, required = true,
                  description = "the most characters (UTF-8) the output may have" },
  },
  evaluate = function(case, opts)
    local out = text.output_text(case)
    local n = utf8.len(out) or #out -- invalid UTF-8: count bytes
    return limits.at_most("max_length", "length", n, opts.max_chars, "characters")
  end,
}
