-- max_tokens: the traced call used at most so many tokens.
local text = require "lib.text"
local limits = require "lib.limits"

return {
  name = "max_tokens",
  description = "the trace's usage stays within max_output_tokens / max_input_tokens / max_total_tokens",
  options = {
    max_output_tokens = { type = "integer", min = 0, description = "the most usage.output_tokens a trace may have" },
    max_input_tokens = { type = "integer", min = 0, description = "the most usage.input_tokens a trace may have" },
    max_total_tokens = { type = "integer", min = 0, description = "the most input plus output tokens" },
  },
  -- which bound to give is a choice the declaration cannot state: at least one
  check = function(opts)
    if not (opts.max_output_tokens or opts.max_input_tokens or opts.max_total_tokens) then
      error("give at least one of max_output_tokens, max_input_tokens, max_total_tokens", 0)
    end
  end,
  evaluate = function(case, opts)
    local usage = (case.trace or {}).usage or {}
    local checks = {
      { "output tokens", usage.output_tokens, opts.max_output_tokens },
      { "input tokens", usage.input_tokens, opts.max_input_tokens },
      { "total tokens", usage.input_tokens and usage.output_tokens and usage.input_tokens + usage.output_tokens,
        opts.max_total_tokens },
    }
    local last = text.pass("no token usage recorded; not judged")
    for _, c in ipairs(checks) do
      if c[3] then
        local r = limits.at_most("max_tokens", c[1], c[2], c[3], "")
        if not r.pass then return r end
        if c[2] ~= nil then last = r end
      end
    end
    return last
  end,
}
