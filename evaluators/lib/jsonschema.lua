-- JSON Schema 2020-12 validation (core and validation vocabularies) for the
-- json_schema and tool_call evaluators: require "lib.jsonschema".
--
--   local js = require "lib.jsonschema"
--   local validate = js.compile(schema)      -- raises on a schema it cannot use
--   local ok, errors = validate(value)       -- errors: { {path=, message=}, ... }
--
-- Supported: type, enum, const, multipleOf, maximum, exclusiveMaximum,
-- minimum, exclusiveMinimum, maxLength, minLength, pattern (PCRE2),
-- items, prefixItems, contains, minContains, maxContains, maxItems,
-- minItems, uniqueItems, properties, patternProperties,
-- additionalProperties, required, maxProperties, minProperties,
-- propertyNames, dependentRequired, dependentSchemas, allOf, anyOf, oneOf,
-- not, if/then/else, boolean schemas, $defs, and $ref to anything inside
-- the schema (JSON pointers, $id, $anchor). Not supported: $ref to other
-- documents (remote schemas), $dynamicRef, unevaluated*, format assertions.
local rex = require "rex_pcre2"

local M = {}
local null = ratchet.json.null
local is_array = ratchet.json.is_array
local mtype, floor, huge = math.type, math.floor, math.huge
local MAX_ERRORS = 10

local function jtype(v)
  local t = type(v)
  if t == "table" then return is_array(v) and "array" or "object" end
  if t == "number" then
    if mtype(v) == "integer" or (v == floor(v) and v ~= huge and v ~= -huge) then return "integer" end
    return "number"
  end
  if v == null then return "null" end
  return t -- string, boolean
end
M.type_of = jtype

local function equal(a, b)
  local ta, tb = jtype(a), jtype(b)
  if (ta == "integer" or ta == "number") and (tb == "integer" or tb == "number") then return a == b end
  if ta ~= tb then return false end
  if ta == "array" then
    if #a ~= #b then return false end
    for i = 1, #a do if not equal(a[i], b[i]) then return false end end
    return true
  elseif ta == "object" then
    for k, v in pairs(a) do
      if b[k] == nil or not equal(v, b[k]) then return false end
    end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
  end
  return a == b
end
M.equal = equal

local function describe(v)
  local t = jtype(v)
  if t == "string" then
    local s = v:gsub("%c", " ")
    if #s > 40 then s = s:sub(1, 40) .. "…" end
    return string.format("%q", s)
  end
  if t == "array" or t == "object" then return "an " .. t end
  return tostring(v == null and "null" or v)
end

-- The path to the value being checked is a stack of keys (no strings are
-- built unless something fails): render it as $.a[0].b
local function render(path)
  local out = { "$" }
  for i = 1, #path do
    local k = path[i]
    if type(k) == "number" then out[#out + 1] = "[" .. (k - 1) .. "]" -- 0-based, as in JSON
    elseif k:match("^[%a_][%w_]*$") then out[#out + 1] = "." .. k
    else out[#out + 1] = "[" .. string.format("%q", k) .. "]" end
  end
  return table.concat(out)
end

-- f(v) with k pushed on the path
local function at(path, k, f, v, errs)
  path[#path + 1] = k
  local ok = f(v, path, errs)
  path[#path] = nil
  return ok
end

local function slen(s)
  return utf8.len(s) or #s -- invalid UTF-8: bytes
end

-- ---- URIs, just enough to resolve $id and $ref within one document ----

local function split_fragment(uri)
  local base, frag = uri:match("^([^#]*)#(.*)$")
  if base then return base, frag end
  return uri, nil
end

local function remove_dots(path)
  local out = {}
  for seg in (path .. "/"):gmatch("([^/]*)/") do
    if seg == ".." then
      if #out > 1 then out[#out] = nil end
    elseif seg ~= "." then
      out[#out + 1] = seg
    end
  end
  local last = path:match("[^/]*$")
  out[#out] = nil
  if last ~= "." and last ~= ".." then out[#out + 1] = last else out[#out + 1] = "" end
  return table.concat(out, "/")
end

local function resolve(base, ref)
  if ref:match("^%a[%w+.-]*:") then return ref end
  local b = split_fragment(base)
  if ref == "" then return b end
  if ref:sub(1, 1) == "#" then return b .. ref end
  local scheme_auth = b:match("^(%a[%w+.-]*://[^/]*)")
  if ref:sub(1, 2) == "//" then return (b:match("^(%a[%w+.-]*:)") or "") .. ref end
  if ref:sub(1, 1) == "/" then return (scheme_auth or "") .. remove_dots(ref) end
  local dir = b:match("^(.*/)") or (scheme_auth and scheme_auth .. "/") or ""
  local path_part = dir .. ref
  if scheme_auth then
    local rest = path_part:sub(#scheme_auth + 1)
    return scheme_auth .. remove_dots(rest)
  end
  return path_part
end

local function unescape_pointer(tok)
  tok = tok:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  return (tok:gsub("~1", "/"):gsub("~0", "~"))
end

-- ECMA-262 patterns name Unicode properties in full (\p{Letter}); PCRE2
-- 10.42 knows the short names (\p{L}).
local PROPERTY = {
  Letter = "L", Cased_Letter = "L&", Uppercase_Letter = "Lu", Lowercase_Letter = "Ll", Titlecase_Letter = "Lt",
  Modifier_Letter = "Lm", Other_Letter = "Lo", Mark = "M", Number = "N", Decimal_Number = "Nd",
  digit = "Nd", Letter_Number = "Nl", Other_Number = "No", Punctuation = "P", Symbol = "S",
  Separator = "Z", Space_Separator = "Zs", Other = "C", Control = "Cc",
}
local function translate_pattern(p)
  return (p:gsub("\\([pP]){([%w_]+)}", function(kind, name)
    return "\\" .. kind .. "{" .. (PROPERTY[name] or name) .. "}"
  end))
end

-- not schemas: these keywords hold data, not subschemas
local DATA = { enum = true, const = true, default = true, examples = true }

-- Records every resource ($id), anchor and each schema's base URI.
local function index(doc, schema, base)
  if type(schema) ~= "table" or doc.base_of[schema] then return end
  if not is_array(schema) then
    if type(schema["$id"]) == "string" then
      base = resolve(base, (split_fragment(schema["$id"])))
      doc.resources[base] = schema
    end
    if type(schema["$anchor"]) == "string" then doc.anchors[base .. "#" .. schema["$anchor"]] = schema end
    doc.base_of[schema] = base
  end
  for k, v in pairs(schema) do
    if type(v) == "table" and not DATA[k] then index(doc, v, base) end
  end
end

-- ---- compiling ----

local compile

local function resolve_ref(doc, ref, base)
  local uri = resolve(base, ref)
  local res, frag = split_fragment(uri)
  local target = doc.resources[res]
  if not target then
    error("json_schema: cannot resolve $ref '" .. ref .. "' (references to other documents are not supported)", 0)
  end
  if frag and frag ~= "" then
    if frag:sub(1, 1) == "/" then
      for tok in frag:sub(2):gmatch("[^/]*") do
        local key = unescape_pointer(tok)
        if type(target) ~= "table" then target = nil break end
        if is_array(target) then target = target[(tonumber(key) or -1) + 1] else target = target[key] end
        if target == nil then break end
      end
    else
      target = doc.anchors[res .. "#" .. frag]
    end
    if target == nil then error("json_schema: $ref '" .. ref .. "' points at nothing", 0) end
  end
  return target
end

-- Returns validate(v, path, errs) -> bool for one schema.
compile = function(doc, schema, base)
  if schema == true then return function() return true end end
  if schema == false then
    return function(_, path, errs)
      if #errs < MAX_ERRORS then errs[#errs + 1] = { path = render(path), message = "no value is allowed here" } end
      return false
    end
  end
  if type(schema) ~= "table" or is_array(schema) then
    error("json_schema: a schema must be an object or a boolean (got " .. jtype(schema) .. ")", 0)
  end
  local cached = doc.compiled[schema]
  if cached then return cached end
  base = doc.base_of[schema] or base
  local checks = {}
  local function add(f) checks[#checks + 1] = f end
  -- a placeholder first, so a schema that refers to itself finds it
  local self_fn
  doc.compiled[schema] = function(v, path, errs) return self_fn(v, path, errs) end

  local function fail(errs, path, msg)
    if #errs < MAX_ERRORS then errs[#errs + 1] = { path = render(path), message = msg } end
    return false
  end
  local function fail_at(errs, path, k, msg)
    path[#path + 1] = k
    fail(errs, path, msg)
    path[#path] = nil
    return false
  end

  if schema["$ref"] ~= nil then
    local ref = schema["$ref"]
    if type(ref) ~= "string" then error("json_schema: $ref must be a string", 0) end
    local target_fn
    add(function(v, path, errs, vt)
      if not target_fn then target_fn = compile(doc, resolve_ref(doc, ref, base), base) end
      return target_fn(v, path, errs)
    end)
    -- resolve now, so a bad reference is a schema error, not a verdict
    resolve_ref(doc, ref, base)
  end

  local t = schema.type
  if t ~= nil then
    local allowed = {}
    for _, name in ipairs(type(t) == "table" and t or { t }) do allowed[name] = true end
    local want = type(t) == "table" and table.concat(t, " or ") or t
    add(function(v, path, errs, vt)
      if allowed[vt] or (vt == "integer" and allowed.number) then return true end
      return fail(errs, path, "must be " .. want .. ", not " .. vt)
    end)
  end
  if schema.enum ~= nil then
    local enum = schema.enum
    add(function(v, path, errs, vt)
      for _, e in ipairs(enum) do if equal(v, e) then return true end end
      return fail(errs, path, describe(v) .. " is not one of the allowed values")
    end)
  end
  if schema.const ~= nil then
    local c = schema.const
    add(function(v, path, errs, vt)
      if equal(v, c) then return true end
      return fail(errs, path, "must be " .. describe(c))
    end)
  end

  -- numbers
  local function numeric(key, test, msg)
    local limit = schema[key]
    if type(limit) ~= "number" then return end
    add(function(v, path, errs, vt)
      if type(v) ~= "number" or test(v, limit) then return true end
      return fail(errs, path, string.format(msg, describe(v), describe(limit)))
    end)
  end
  numeric("minimum", function(v, l) return v >= l end, "%s is less than the minimum %s")
  numeric("maximum", function(v, l) return v <= l end, "%s is greater than the maximum %s")
  numeric("exclusiveMinimum", function(v, l) return v > l end, "%s must be greater than %s")
  numeric("exclusiveMaximum", function(v, l) return v < l end, "%s must be less than %s")
  numeric("multipleOf", function(v, m)
    if mtype(v) == "integer" and mtype(m) == "integer" then return v % m == 0 end
    local q = v / m
    if q ~= q or q == huge or q == -huge then return false end
    return math.abs(q - floor(q + 0.5)) < 1e-9 * math.max(1, math.abs(q))
  end, "%s is not a multiple of %s")

  -- strings
  local function length(key, test, msg)
    local limit = schema[key]
    if type(limit) ~= "number" then return end
    add(function(v, path, errs, vt)
      if type(v) ~= "string" or test(slen(v), limit) then return true end
      return fail(errs, path, string.format(msg, slen(v), limit))
    end)
  end
  length("minLength", function(n, l) return n >= l end, "is %d characters long, shorter than %d")
  length("maxLength", function(n, l) return n <= l end, "is %d characters long, longer than %d")
  local function regex(p)
    local ok, re = pcall(rex.new, translate_pattern(p), rex.flags().UTF)
    if not ok then error("json_schema: pattern /" .. p .. "/ does not compile: " .. tostring(re), 0) end
    return re
  end
  if type(schema.pattern) == "string" then
    local re, p = regex(schema.pattern), schema.pattern
    add(function(v, path, errs, vt)
      if type(v) ~= "string" then return true end
      local ok, s = pcall(re.find, re, v)
      if ok and s then return true end
      return fail(errs, path, describe(v) .. " does not match /" .. p .. "/")
    end)
  end

  -- arrays
  local prefix = {}
  if type(schema.prefixItems) == "table" then
    for i, sub in ipairs(schema.prefixItems) do prefix[i] = compile(doc, sub, base) end
  end
  local items = schema.items ~= nil and compile(doc, schema.items, base) or nil
  if #prefix > 0 or items then
    add(function(v, path, errs, vt)
      if not (vt == "array") then return true end
      local ok = true
      for i = 1, #v do
        local f = prefix[i] or (i > #prefix and items)
        if f and not at(path, i, f, v[i], errs) then ok = false end
      end
      return ok
    end)
  end
  if schema.contains ~= nil then
    local f = compile(doc, schema.contains, base)
    local min = schema.minContains or 1
    local max = schema.maxContains
    add(function(v, path, errs, vt)
      if not (vt == "array") then return true end
      local n = 0
      for i = 1, #v do if f(v[i], path, {}) then n = n + 1 end end
      if n < min then return fail(errs, path, "has " .. n .. " items matching 'contains', fewer than " .. min) end
      if max and n > max then return fail(errs, path, "has " .. n .. " items matching 'contains', more than " .. max) end
      return true
    end)
  end
  local function count(key, test, msg, kind)
    local limit = schema[key]
    if type(limit) ~= "number" then return end
    add(function(v, path, errs, vt)
      if vt ~= kind then return true end
      local n = 0
      if kind == "array" then n = #v else for _ in pairs(v) do n = n + 1 end end
      if test(n, limit) then return true end
      return fail(errs, path, string.format(msg, n, limit))
    end)
  end
  count("minItems", function(n, l) return n >= l end, "has %d items, fewer than %d", "array")
  count("maxItems", function(n, l) return n <= l end, "has %d items, more than %d", "array")
  count("minProperties", function(n, l) return n >= l end, "has %d properties, fewer than %d", "object")
  count("maxProperties", function(n, l) return n <= l end, "has %d properties, more than %d", "object")
  if schema.uniqueItems == true then
    add(function(v, path, errs, vt)
      if not (vt == "array") then return true end
      for i = 1, #v do
        for j = i + 1, #v do
          if equal(v[i], v[j]) then
            return fail(errs, path, "items " .. (i - 1) .. " and " .. (j - 1) .. " are equal")
          end
        end
      end
      return true
    end)
  end

  -- objects
  local props = {}
  if type(schema.properties) == "table" then
    for k, sub in pairs(schema.properties) do props[k] = compile(doc, sub, base) end
  end
  local pprops = {}
  if type(schema.patternProperties) == "table" then
    for p, sub in pairs(schema.patternProperties) do pprops[#pprops + 1] = { re = regex(p), f = compile(doc, sub, base) } end
  end
  local additional = schema.additionalProperties ~= nil and compile(doc, schema.additionalProperties, base) or nil
  local additional_false = schema.additionalProperties == false
  if next(props) or #pprops > 0 or additional then
    add(function(v, path, errs, vt)
      if vt ~= "object" then return true end
      local ok = true
      for k, val in pairs(v) do
        local matched = false
        local f = props[k]
        if f then
          matched = true
          if not at(path, k, f, val, errs) then ok = false end
        end
        for _, pp in ipairs(pprops) do
          local okm, s = pcall(pp.re.find, pp.re, k)
          if okm and s then
            matched = true
            if not at(path, k, pp.f, val, errs) then ok = false end
          end
        end
        if not matched and additional then
          if additional_false then
            ok = fail_at(errs, path, k, "is not an allowed property") and ok
          elseif not at(path, k, additional, val, errs) then
            ok = false
          end
        end
      end
      return ok
    end)
  end
  if type(schema.required) == "table" then
    local req = schema.required
    add(function(v, path, errs, vt)
      if vt ~= "object" then return true end
      local ok = true
      for _, k in ipairs(req) do
        if v[k] == nil then ok = fail_at(errs, path, k, "is required") and ok end
      end
      return ok
    end)
  end
  if schema.propertyNames ~= nil then
    local f = compile(doc, schema.propertyNames, base)
    add(function(v, path, errs, vt)
      if vt ~= "object" then return true end
      local ok = true
      for k in pairs(v) do
        if not at(path, k, f, k, {}) then ok = fail_at(errs, path, k, "is not an allowed property name") and ok end
      end
      return ok
    end)
  end
  if type(schema.dependentRequired) == "table" then
    local deps = schema.dependentRequired
    add(function(v, path, errs, vt)
      if vt ~= "object" then return true end
      local ok = true
      for k, needs in pairs(deps) do
        if v[k] ~= nil then
          for _, n in ipairs(needs) do
            if v[n] == nil then ok = fail_at(errs, path, n, "is required when '" .. k .. "' is present") and ok end
          end
        end
      end
      return ok
    end)
  end
  if type(schema.dependentSchemas) == "table" then
    local deps = {}
    for k, sub in pairs(schema.dependentSchemas) do deps[k] = compile(doc, sub, base) end
    add(function(v, path, errs, vt)
      if vt ~= "object" then return true end
      local ok = true
      for k, f in pairs(deps) do
        if v[k] ~= nil and not f(v, path, errs) then ok = false end
      end
      return ok
    end)
  end

  -- combinators
  local function list(key)
    local l = schema[key]
    if type(l) ~= "table" then return nil end
    local fs = {}
    for i, sub in ipairs(l) do fs[i] = compile(doc, sub, base) end
    return fs
  end
  local all_of, any_of, one_of = list("allOf"), list("anyOf"), list("oneOf")
  if all_of then
    add(function(v, path, errs, vt)
      local ok = true
      for _, f in ipairs(all_of) do if not f(v, path, errs) then ok = false end end
      return ok
    end)
  end
  if any_of then
    add(function(v, path, errs, vt)
      for _, f in ipairs(any_of) do if f(v, path, {}) then return true end end
      return fail(errs, path, "matches none of the 'anyOf' schemas")
    end)
  end
  if one_of then
    add(function(v, path, errs, vt)
      local n = 0
      for _, f in ipairs(one_of) do if f(v, path, {}) then n = n + 1 end end
      if n == 1 then return true end
      return fail(errs, path, n == 0 and "matches none of the 'oneOf' schemas" or "matches " .. n .. " of the 'oneOf' schemas, not exactly one")
    end)
  end
  if schema["not"] ~= nil then
    local f = compile(doc, schema["not"], base)
    add(function(v, path, errs, vt)
      if f(v, path, {}) then return fail(errs, path, "must not match the 'not' schema") end
      return true
    end)
  end
  if schema["if"] ~= nil then
    local cond = compile(doc, schema["if"], base)
    local th = schema["then"] ~= nil and compile(doc, schema["then"], base)
    local el = schema["else"] ~= nil and compile(doc, schema["else"], base)
    add(function(v, path, errs, vt)
      if cond(v, path, {}) then return not th or th(v, path, errs) end
      return not el or el(v, path, errs)
    end)
  end
  -- compile $defs too, so an error in one shows at once
  if type(schema["$defs"]) == "table" then
    for _, sub in pairs(schema["$defs"]) do compile(doc, sub, base) end
  end

  local n = #checks
  self_fn = function(v, path, errs)
    local ok, vt = true, jtype(v)
    for i = 1, n do
      if not checks[i](v, path, errs, vt) then ok = false end
    end
    return ok
  end
  doc.compiled[schema] = self_fn
  return self_fn
end

-- compile(schema) -> validate(value) -> ok, errors
function M.compile(schema)
  local doc = { resources = {}, anchors = {}, base_of = {}, compiled = {} }
  local root_base = "urn:ratchet:root"
  if type(schema) == "table" then
    doc.resources[root_base] = schema
    index(doc, schema, root_base)
    if type(schema["$id"]) == "string" then root_base = resolve(root_base, (split_fragment(schema["$id"]))) end
  end
  local f = compile(doc, schema, root_base)
  return function(value)
    local errs = {}
    local ok = f(value, {}, errs)
    return ok, errs
  end
end

-- "$.a.b: message; $.c: message" (at most n errors)
function M.summary(errs, n)
  local parts = {}
  for i = 1, math.min(#errs, n or 3) do parts[i] = errs[i].path .. ": " .. errs[i].message end
  local s = table.concat(parts, "; ")
  if #errs > (n or 3) then s = s .. string.format(" (and %d more)", #errs - (n or 3)) end
  return s
end

return M
