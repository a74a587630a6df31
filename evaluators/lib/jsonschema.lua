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
local type, next, pairs, ipairs, pcall = type, next, pairs, ipairs, pcall
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

-- a pattern compiled once per document, for both paths below
local function regex_cached(doc, p)
  local re = doc.regex[p]
  if not re then
    local ok
    ok, re = pcall(rex.new, translate_pattern(p), rex.flags().UTF)
    if not ok then error("json_schema: pattern /" .. p .. "/ does not compile: " .. tostring(re), 0) end
    doc.regex[p] = re
  end
  return re
end

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
  local function regex(p) return regex_cached(doc, p) end
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

-- ---- the fast path: yes or no, no paths, no messages ----
-- Most values pass, so validation first runs these checks, which stop at
-- the first failure and build nothing; only a value they reject goes
-- through the checks above, which say where and why. One closure per
-- schema node, with every keyword of the node inline; the spec puts the
-- whole JSON-Schema-Test-Suite through both and requires they agree.

local function always() return true end
local function never() return false end

local function matches(re, s)
  local ok, found = pcall(re.find, re, s)
  return ok and found ~= nil
end

local function num(x) return type(x) == "number" and x or nil end

local compile_fast
compile_fast = function(doc, schema, base)
  if schema == true then return always end
  if schema == false then return never end
  local cached = doc.fast[schema]
  if cached then return cached end
  base = doc.base_of[schema] or base
  local function sub(s) return compile_fast(doc, s, base) end
  local self_fn
  doc.fast[schema] = function(v) return self_fn(v) end -- for schemas that refer to themselves
  local only_ref = type(schema["$ref"]) == "string"
  for k in pairs(schema) do if k ~= "$ref" then only_ref = false break end end
  if only_ref then -- the common { $ref = ... } node: its target's check itself
    local trampoline = doc.fast[schema]
    local target = sub(resolve_ref(doc, schema["$ref"], base))
    if target ~= trampoline then
      self_fn = target -- for whatever took the trampoline meanwhile
      doc.fast[schema] = target
      return target
    end
  end

  -- type: which kinds pass (nil: all)
  local allow
  if schema.type ~= nil then
    allow = {}
    for _, name in ipairs(type(schema.type) == "table" and schema.type or { schema.type }) do allow[name] = true end
  end
  local any_string = not allow or allow.string
  local any_number = not allow or allow.number
  local any_int = any_number or allow.integer
  local any_bool = not allow or allow.boolean
  local any_null = not allow or allow.null
  local any_array = not allow or allow.array
  local any_object = not allow or allow.object

  -- strings
  local min_len, max_len = num(schema.minLength), num(schema.maxLength)
  local re = type(schema.pattern) == "string" and regex_cached(doc, schema.pattern) or nil
  -- numbers
  local minimum, maximum = num(schema.minimum), num(schema.maximum)
  local xmin, xmax, mult = num(schema.exclusiveMinimum), num(schema.exclusiveMaximum), num(schema.multipleOf)
  -- arrays
  local prefix, nprefix = nil, 0
  if type(schema.prefixItems) == "table" and #schema.prefixItems > 0 then
    prefix = {}
    for i, s in ipairs(schema.prefixItems) do prefix[i] = sub(s) end
    nprefix = #prefix
  end
  local items = schema.items ~= nil and sub(schema.items) or nil
  local contains = schema.contains ~= nil and sub(schema.contains) or nil
  local min_contains, max_contains = num(schema.minContains) or 1, num(schema.maxContains)
  local min_items, max_items = num(schema.minItems), num(schema.maxItems)
  local unique = schema.uniqueItems == true
  -- objects
  local props
  if type(schema.properties) == "table" and next(schema.properties) then
    props = {}
    for k, s in pairs(schema.properties) do props[k] = sub(s) end
  end
  local pprops
  if type(schema.patternProperties) == "table" and next(schema.patternProperties) then
    pprops = {}
    for p, s in pairs(schema.patternProperties) do pprops[#pprops + 1] = { re = regex_cached(doc, p), f = sub(s) } end
  end
  local additional = schema.additionalProperties ~= nil and sub(schema.additionalProperties) or nil
  local names = schema.propertyNames ~= nil and sub(schema.propertyNames) or nil
  local min_props, max_props = num(schema.minProperties), num(schema.maxProperties)
  local each_prop = props or pprops or additional or names or min_props or max_props
  local req = type(schema.required) == "table" and #schema.required > 0 and schema.required or nil
  local dep_req = type(schema.dependentRequired) == "table" and next(schema.dependentRequired) and schema.dependentRequired
  local dep_schemas
  if type(schema.dependentSchemas) == "table" and next(schema.dependentSchemas) then
    dep_schemas = {}
    for k, s in pairs(schema.dependentSchemas) do dep_schemas[k] = sub(s) end
  end
  -- any kind of value: $ref, enum, const and the combinators, each a check
  local rest = {}
  if type(schema["$ref"]) == "string" then
    local target = sub(resolve_ref(doc, schema["$ref"], base))
    rest[#rest + 1] = function(v) return target(v) end
  end
  if schema.enum ~= nil then
    local enum, scalar = schema.enum, {} -- strings and numbers found by table lookup
    local others = {}
    for _, e in ipairs(enum) do
      if type(e) == "string" or type(e) == "number" then scalar[e] = true else others[#others + 1] = e end
    end
    rest[#rest + 1] = function(v)
      local t = type(v)
      if t == "string" or t == "number" then
        if scalar[v] then return true end
      end
      for i = 1, #others do if equal(v, others[i]) then return true end end
      return false
    end
  end
  if schema.const ~= nil then
    local c = schema.const
    rest[#rest + 1] = function(v) return equal(v, c) end
  end
  local function list(key)
    local l = schema[key]
    if type(l) ~= "table" then return nil end
    local fs = {}
    for i, s in ipairs(l) do fs[i] = sub(s) end
    return fs
  end
  local all_of, any_of, one_of = list("allOf"), list("anyOf"), list("oneOf")
  if all_of then
    rest[#rest + 1] = function(v)
      for i = 1, #all_of do if not all_of[i](v) then return false end end
      return true
    end
  end
  if any_of then
    rest[#rest + 1] = function(v)
      for i = 1, #any_of do if any_of[i](v) then return true end end
      return false
    end
  end
  if one_of then
    rest[#rest + 1] = function(v)
      local n = 0
      for i = 1, #one_of do if one_of[i](v) then n = n + 1 end end
      return n == 1
    end
  end
  if schema["not"] ~= nil then
    local f = sub(schema["not"])
    rest[#rest + 1] = function(v) return not f(v) end
  end
  if schema["if"] ~= nil then
    local cond = sub(schema["if"])
    local th = schema["then"] ~= nil and sub(schema["then"]) or always
    local el = schema["else"] ~= nil and sub(schema["else"]) or always
    rest[#rest + 1] = function(v)
      if cond(v) then return th(v) end
      return el(v)
    end
  end
  local nrest = #rest

  local function object_deps(v)
    if dep_req then
      for k, needs in pairs(dep_req) do
        if v[k] ~= nil then
          for i = 1, #needs do if v[needs[i]] == nil then return false end end
        end
      end
    end
    if dep_schemas then
      for k, f in pairs(dep_schemas) do
        if v[k] ~= nil and not f(v) then return false end
      end
    end
    return true
  end

  local function object_general(v)
    if each_prop then
      local n = 0
      for k, val in next, v do
        n = n + 1
        local f = props and props[k]
        if f and not f(val) then return false end
        local matched = f ~= nil
        if pprops then
          for i = 1, #pprops do
            local pp = pprops[i]
            if matches(pp.re, k) then
              matched = true
              if not pp.f(val) then return false end
            end
          end
        end
        if not matched and additional and not additional(val) then return false end
        if names and not names(k) then return false end
      end
      if min_props and n < min_props then return false end
      if max_props and n > max_props then return false end
    end
    if req then
      for i = 1, #req do if v[req[i]] == nil then return false end end
    end
    return object_deps(v)
  end
  local object
  if props and not pprops and not names then
    -- the usual object: declared properties, maybe additionalProperties
    object = function(v)
      local n = 0
      for k, val in next, v do
        n = n + 1
        local f = props[k]
        if f then
          if not f(val) then return false end
        elseif additional and not additional(val) then
          return false
        end
      end
      if min_props and n < min_props then return false end
      if max_props and n > max_props then return false end
      if req then
        for i = 1, #req do if v[req[i]] == nil then return false end end
      end
      if dep_req or dep_schemas then return object_deps(v) end
      return true
    end
  else
    object = object_general
  end

  local function array(v)
    local n = #v
    if min_items and n < min_items then return false end
    if max_items and n > max_items then return false end
    if prefix then
      for i = 1, n < nprefix and n or nprefix do if not prefix[i](v[i]) then return false end end
    end
    if items then
      for i = nprefix + 1, n do if not items(v[i]) then return false end end
    end
    if contains then
      local c = 0
      for i = 1, n do if contains(v[i]) then c = c + 1 end end
      if c < min_contains or (max_contains and c > max_contains) then return false end
    end
    if unique then
      for i = 1, n do
        for j = i + 1, n do if equal(v[i], v[j]) then return false end end
      end
    end
    return true
  end

  -- the commonest leaves get a check of their own
  local only_type = allow and nrest == 0
  for k in pairs(schema) do
    if k ~= "type" then only_type = false break end
  end
  if only_type and type(schema.type) == "string" then
    local want = schema.type
    if want == "integer" then
      self_fn = function(v) return type(v) == "number" and v % 1 == 0 end
    elseif want == "array" then
      self_fn = function(v) return type(v) == "table" and is_array(v) end
    elseif want == "object" then
      self_fn = function(v) return type(v) == "table" and not is_array(v) end
    elseif want == "null" then
      self_fn = function(v) return v == null end
    else -- string, number, boolean
      self_fn = function(v) return type(v) == want end
    end
    doc.fast[schema] = self_fn
    return self_fn
  end

  local function generic(v)
    local t = type(v)
    if t == "string" then
      if not any_string then return false end
      if max_len and #v > max_len and slen(v) > max_len then return false end -- never fewer characters than bytes / 4
      if min_len and (#v + 3) // 4 < min_len and slen(v) < min_len then return false end
      if re and not matches(re, v) then return false end
    elseif t == "number" then
      if not any_number and not (any_int and v % 1 == 0) then return false end
      if minimum and v < minimum then return false end
      if maximum and v > maximum then return false end
      if xmin and v <= xmin then return false end
      if xmax and v >= xmax then return false end
      if mult then
        if mtype(v) == "integer" and mtype(mult) == "integer" then
          if v % mult ~= 0 then return false end
        else
          local q = v / mult
          if q ~= q or q == huge or q == -huge then return false end
          if math.abs(q - floor(q + 0.5)) >= 1e-9 * math.max(1, math.abs(q)) then return false end
        end
      end
    elseif t == "table" then
      if is_array(v) then
        if not any_array or not array(v) then return false end
      elseif not any_object or not object(v) then
        return false
      end
    elseif t == "boolean" then
      if not any_bool then return false end
    elseif v == null then
      if not any_null then return false end
    elseif allow then
      return false
    end
    for i = 1, nrest do if not rest[i](v) then return false end end
    return true
  end

  if allow and nrest == 0 and schema.type == "object" then
    self_fn = function(v) return type(v) == "table" and not is_array(v) and object(v) end
  elseif allow and nrest == 0 and schema.type == "array" then
    self_fn = function(v) return type(v) == "table" and is_array(v) and array(v) end
  else
    self_fn = generic
  end
  doc.fast[schema] = self_fn
  return self_fn
end

-- compile(schema) -> validate(value) -> ok, errors
-- (and, for the specs, the two paths it takes: fast(value) -> ok, and
-- detailed(value) -> ok, errors)
function M.compile(schema)
  local doc = { resources = {}, anchors = {}, base_of = {}, compiled = {}, fast = {}, regex = {} }
  local root_base = "urn:ratchet:root"
  if type(schema) == "table" then
    doc.resources[root_base] = schema
    index(doc, schema, root_base)
    if type(schema["$id"]) == "string" then root_base = resolve(root_base, (split_fragment(schema["$id"]))) end
  end
  local f = compile(doc, schema, root_base) -- raises on a schema it cannot use
  local yes = compile_fast(doc, schema, root_base)
  local function detailed(value)
    local errs = {}
    local ok = f(value, {}, errs)
    return ok, errs
  end
  return function(value)
    if yes(value) then return true, {} end
    return detailed(value)
  end, yes, detailed
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
