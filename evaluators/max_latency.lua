-- max_latency: the traced call took at most max_ms.
local text = require "lib.text"
local limits = require "lib.limits"

return {
  name = "max_latency",
  description = "the trace's latency_ms is at most max_ms",
  options = { max_ms = "number > 0" },
  evaluate = function(case, opts)
    text.check_opts("max_latency", opts, { max_ms = "number" })
    local trace = case.trace or {}
    return limits.at_most("max_latency", "latency", trace.latency_ms, opts.max_ms, "ms")
  end,
}
