-- feedback: the trace has no negative feedback: no thumbs down, no retry,
-- no score under min_score.
local text = require "lib.text"

return {
  name = "feedback",
  description = "fails a trace with negative explicit feedback (thumbs down, low score) or a retry",
  options = {
    min_score = "number 0..1: a feedback score under it fails the trace; default 0.5",
    retries = "boolean, default true: a retry (a later trace's retry_of) fails the trace",
  },
  evaluate = function(case, opts)
    text.check_opts("feedback", opts, { min_score = "number?", retries = "boolean?" })
    local min_score = opts.min_score or 0.5
    local items = (case.trace or {}).feedback or {}
    for _, f in ipairs(items) do
      if f.source == "retry" then
        if opts.retries ~= false then return text.fail("the user retried (by trace " .. tostring(f.retried_by) .. ")") end
      elseif f.thumbs == "down" then
        return text.fail("thumbs down" .. (f.comment and (": " .. text.excerpt(f.comment)) or ""))
      elseif type(f.score) == "number" and f.score < min_score then
        return text.fail(string.format("feedback score %.2f is under %.2f", f.score, min_score))
      end
    end
    return text.pass(#items > 0 and "no negative feedback" or "no feedback")
  end,
}
