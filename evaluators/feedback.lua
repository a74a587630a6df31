-- feedback: the trace has no negative feedback: no thumbs down, no retry,
-- no score under min_score.
local text = require "lib.text"

local OPTIONS = {
  min_score = { type = "number", min = 0, max = 1, default = 0.5,
                description = "a feedback score under it fails the trace" },
  retries = { type = "boolean", default = true, description = "a retry (a later trace's retry_of) fails the trace" },
}

return {
  name = "feedback",
  description = "fails a trace with negative explicit feedback (thumbs down, low score) or a retry",
  options = OPTIONS,
  evaluate = function(case, opts)
    local min_score = text.opt(opts, OPTIONS, "min_score")
    local items = (case.trace or {}).feedback or {}
    for _, f in ipairs(items) do
      if f.source == "retry" then
        if opts.retries ~= false then return text.fail("the user retried (by trace " .. tostring(f.retried_by) .. ")") end
      elseif f.thumbs == "down" then
        return text.fail("thumbs down" .. (f.comment and (": " .. text.excerpt(f.comment)) or ""))
      elseif type(f.score) == "number" and f.score < min_score then
        return text.fail("feedback score " .. text.num(f.score) .. " is under " .. text.num(min_score))
      end
    end
    return text.pass(#items > 0 and "no negative feedback" or "no feedback")
  end,
}
