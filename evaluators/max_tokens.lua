-- max_tokens: the traced call used at most so many tokens.
local text = require "lib.text"
local limits = require "lib.limits"

return {
  name = "max_tokens",
  description = "the trace's usage stays within max_output_tokens / max_input_tokens / max_total_tokens",
  options = {
    max_output_tokens = "integer", max_input_tokens = "integer", max_total_tokens = "integer",
  },
  evaluate = function(case, opts)
    text.check_opts("max_tokens", opts, { max_output_tokens = "number?", max_input_tokens = "number?",
      max_total_tokens = "number?" })
    if not (opts.max_output_tokens or opts.max_input_tokens or opts.max_total_tokens) then
      error("max_tokens: give at least one of max_output_tokens, max_input_tokens, max_total_tokens", 0)
    end
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
