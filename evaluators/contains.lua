-- contains: the output contains the given text(s), as plain substrings.
local text = require "lib.text"

local function evaluate(case, opts, name, negate)
  text.check_opts(name, opts, { value = "string|list", mode = "string?", case_sensitive = "boolean?" })
  local mode = opts.mode or (negate and "any" or "all")
  if mode ~= "all" and mode ~= "any" then error(name .. ": option 'mode' must be \"all\" or \"any\"", 0) end
  local out = text.output_text(case)
  if opts.case_sensitive == false then out = out:lower() end
  local found, missing = {}, {}
  local values = text.list(opts.value)
  for _, v in ipairs(values) do
    if type(v) ~= "string" or v == "" then error(name .. ": option 'value' holds an empty or non-string item", 0) end
    local needle = opts.case_sensitive == false and v:lower() or v
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
  options = {
    value = "string or list of strings: the text to look for (plain, not a pattern)",
    mode = "\"all\" (default) or \"any\"",
    case_sensitive = "boolean, default true",
  },
  evaluate = function(case, opts) return evaluate(case, opts, "contains", false) end,
  _evaluate = evaluate, -- shared with not_contains
}
