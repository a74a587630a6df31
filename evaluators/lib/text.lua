-- Helpers shared by the built-in evaluators (require "lib.text").
local M = {}

-- The output as text: strings as they are, JSON values encoded.
function M.output_text(case)
  local out = case.output
  if type(out) == "string" then return out end
  if out == nil or out == ratchet.json.null then return "" end
  return ratchet.json.encode(out)
end

-- The output as a JSON value: decoded when it is a JSON string.
-- Returns value, or nil and why.
function M.output_json(case)
  local out = case.output
  if type(out) ~= "string" then return out end
  return ratchet.json.decode(out)
end

-- Applies the normalisation options shared by the comparing evaluators:
-- trim (default true), case_sensitive (default true), collapse_whitespace.
function M.normalise(s, opts)
  s = tostring(s)
  if opts.trim ~= false then
    -- linear: "^%s*(.-)%s*$" backtracks over every run of white space for
    -- each character, quadratic on a long output with white space inside
    local a = s:find("%S")
    s = a and s:match(".*%S", a) or ""
  end
  if opts.collapse_whitespace then s = s:gsub("%s+", " ") end
  if opts.case_sensitive == false then s = s:lower() end
  return s
end

-- The value of option `name`, or the default its declaration gives (the
-- engine checks options against the declaration when the config loads; a
-- false option stays false).
function M.opt(opts, options, name)
  local v = opts[name]
  if v == nil then return options[name].default end
  return v
end

-- A number as the shortest text that reads back as the same number: 0.8,
-- not 0.80000000000000004, and 1234567, not 1.23457e+06. Never rounded.
function M.num(x)
  if math.type(x) == "integer" then return string.format("%d", x) end
  if x ~= x or x == math.huge or x == -math.huge then return tostring(x) end
  if x == math.floor(x) and math.abs(x) < 2^53 then return string.format("%d", x) end
  for p = 15, 17 do
    local s = string.format("%." .. p .. "g", x)
    if tonumber(s) == x then return s end
  end
end

-- Kept for evaluators written before options were declared: raises when an
-- option has the wrong type or is unknown (spec: name -> "string", "number?",
-- "string|list", ...). Declare options instead (docs/evaluators.md#declaring-options):
-- the engine then checks them when the config loads, not on every case.
function M.check_opts(name, opts, spec)
  for key, want in pairs(spec) do
    local v = opts[key]
    local required = want:sub(-1) ~= "?"
    local t = required and want or want:sub(1, -2)
    if v == nil then
      if required then error(name .. ": option '" .. key .. "' is required (" .. t .. ")", 0) end
    elseif t == "string|list" then
      if type(v) ~= "string" and type(v) ~= "table" then
        error(name .. ": option '" .. key .. "' must be a string or a list of strings", 0)
      end
    elseif type(v) ~= t then
      error(name .. ": option '" .. key .. "' must be a " .. t .. " (got " .. type(v) .. ")", 0)
    end
  end
  for key in pairs(opts) do
    if spec[key] == nil then error(name .. ": unknown option '" .. tostring(key) .. "'", 0) end
  end
end

function M.list(v)
  if type(v) == "table" then return v end
  return { v }
end

function M.pass(reason) return { pass = true, score = 1, reason = reason or "ok" } end
function M.fail(reason, score) return { pass = false, score = score or 0, reason = reason } end

-- s with every byte that is not valid UTF-8 replaced by U+FFFD, so
-- untrusted text can go into JSON (an LLM request, say).
function M.utf8_safe(s)
  if utf8.len(s) then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local ok, bad = utf8.len(s, i)
    if ok then out[#out + 1] = s:sub(i); break end
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = "\u{FFFD}"
    i = bad + 1
  end
  return table.concat(out)
end

-- A short, single-line excerpt of untrusted text for a reason string.
function M.excerpt(s, n)
  n = n or 80
  s = tostring(s):gsub("[%c]", " ")
  if #s > n then s = s:sub(1, n) .. "…" end
  return s
end

return M
