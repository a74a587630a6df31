-- max_latency: the traced call took at most max_ms.
local limits = require "lib.limits"

return {
  name = "max_latency",
  description = "the trace's latency_ms is at most max_ms",
  options = {
    max_ms = { type = "number", above = 0, required = true, description = "the most latency_ms a trace may have" },
  },
  evaluate = function(case, opts)
    local trace = case.trace or {}
    return limits.at_most("max_latency", "latency", trace.latency_ms, opts.max_ms, "ms")
  end,
}
