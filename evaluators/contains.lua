-- contains: the output contains the given text(s), as plain substrings.
local text = require "lib.text"

-- the options, declared once: the engine checks a config's options against
-- this when it loads (docs/evaluators.md#declaring-options)
local OPTIONS = {
  value = { type = { "string", "list" }, items = "string", required = true, nonempty = true,
            description = "the text to look for, or a list of texts (plain text, not a pattern)" },
  mode = { type = "string", allowed = { "all", "any" }, default = "all",
           description = "all: every text must appear; any: one is enough (the score is the share found)" },
  case_sensitive = { type = "boolean", default = true, description = "false: compare in lower case" },
}

local function evaluate(case, opts, negate)
  local mode = negate and "any" or text.opt(opts, OPTIONS, "mode")
  local fold = opts.case_sensitive == false
  local out = text.output_text(case)
  if fold then out = out:lower() end
  local found, missing = {}, {}
  local values = text.list(opts.value)
  for _, v in ipairs(values) do
    local needle = fold and v:lower() or v
    if out:find(needle, 1, true) then found[#found + 1] = v else missing[#missing + 1] = v end
  end
  if negate then
    if #found > 0 then return text.fail("output contains forbidden text: " .. text.excerpt(table.concat(found, ", "))) end
    return text.pass("output contains none of the forbidden text")
  end
  local score = #found / #values
  if mode == "all" and #missing > 0 then
    return text.fail("output is missing: " .. text.excerpt(table.concat(missing, ", ")), score)
  end
  if mode == "any" and #found == 0 then
    return text.fail("output contains none of: " .. text.excerpt(table.concat(values, ", ")), 0)
  end
  return { pass = true, score = score, reason = "output contains " .. text.excerpt(table.concat(found, ", ")) }
end

return {
  name = "contains",
  description = "the output contains the given text (all of a list, or any with mode = \"any\")",
  options = OPTIONS,
  evaluate = function(case, opts) return evaluate(case, opts, false) end,
  _evaluate = evaluate, -- shared with not_contains
  _options = OPTIONS,
}
