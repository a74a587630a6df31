-- regex: the output matches (or must not match) a PCRE2 regular expression.
local text = require "lib.text"
local rex = require "rex_pcre2"

local F = rex.flags()
local letters = { i = F.CASELESS, m = F.MULTILINE, s = F.DOTALL, x = F.EXTENDED }
local compiled = setmetatable({}, { __mode = "v" }) -- pattern cache, per flags

local OPTIONS = {
  pattern = { type = "string", required = true, description = "a PCRE2 pattern (UTF-8 mode)" },
  flags = { type = "string", default = "",
            description = "PCRE2 compile flags as letters: i (caseless), m (multiline), s (dotall), x (extended)" },
  must_match = { type = "boolean", default = true, description = "false: the output must not match" },
}

local function compile(pattern, flags)
  local key = flags .. "\0" .. pattern
  local re = compiled[key]
  if re then return re end
  -- UTF: the subject is UTF-8, so . and classes see characters, and invalid
  -- UTF-8 is an error rather than garbage matches
  local cf = F.UTF
  for l in flags:gmatch(".") do cf = cf | letters[l] end
  local ok, result = pcall(rex.new, pattern, cf)
  if not ok then error("option 'pattern' does not compile: " .. tostring(result), 0) end
  compiled[key] = result
  return result
end

return {
  name = "regex",
  description = "the output matches a PCRE2 regular expression (or must not, with must_match = false)",
  options = OPTIONS,
  -- the pattern must compile with its flags: checked when the config loads
  check = function(opts)
    local flags = text.opt(opts, OPTIONS, "flags")
    if flags:find("[^imsx]") then error("option 'flags' may hold only the letters i, m, s, x", 0) end
    compile(opts.pattern, flags)
  end,
  evaluate = function(case, opts)
    local re = compile(opts.pattern, text.opt(opts, OPTIONS, "flags"))
    local out = text.output_text(case)
    local ok, s, e = pcall(re.find, re, out)
    if not ok then return text.fail("regex could not run on the output: " .. text.excerpt(s)) end
    local matched = s ~= nil
    if opts.must_match == false then
      if matched then return text.fail("output matches the forbidden pattern at " .. s .. ": " .. text.excerpt(out:sub(s, e))) end
      return text.pass("output does not match the forbidden pattern")
    end
    if not matched then return text.fail("output does not match /" .. text.excerpt(opts.pattern, 60) .. "/") end
    return text.pass("output matches at " .. s)
  end,
}
