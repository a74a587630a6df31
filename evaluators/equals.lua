-- equals: the output equals the expected output (dataset cases), after the
-- chosen normalisation, or as JSON values.
local text = require "lib.text"

local function json_equal(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not json_equal(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

return {
  name = "equals",
  description = "the output equals case.expected (text with normalisation, or JSON values with json = true)",
  options = {
    trim = { type = "boolean", default = true, description = "ignore leading and trailing white space" },
    case_sensitive = { type = "boolean", default = true, description = "false: compare in lower case" },
    collapse_whitespace = { type = "boolean", default = false,
                            description = "runs of white space count as one space" },
    json = { type = "boolean", default = false,
             description = "compare as JSON values (key order and formatting ignored)" },
  },
  evaluate = function(case, opts)
    if case.expected == nil or case.expected == ratchet.json.null then
      return text.fail("the case has no expected output to compare with")
    end
    if opts.json then
      local got, err = text.output_json(case)
      if got == nil then return text.fail("output is not valid JSON: " .. text.excerpt(err)) end
      local want = case.expected
      if type(want) == "string" then
        local decoded = ratchet.json.decode(want)
        if decoded ~= nil then want = decoded end
      end
      if json_equal(got, want) then return text.pass("output equals the expected JSON") end
      return text.fail("output differs from the expected JSON")
    end
    local want = type(case.expected) == "string" and case.expected or ratchet.json.encode(case.expected)
    local got = text.normalise(text.output_text(case), opts)
    if got == text.normalise(want, opts) then return text.pass("output equals the expected output") end
    return text.fail("expected " .. text.excerpt(want, 60) .. ", got " .. text.excerpt(got, 60))
  end,
}
