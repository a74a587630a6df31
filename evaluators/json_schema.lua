-- json_schema: the output is JSON valid against a JSON Schema (2020-12).
local text = require "lib.text"
local jsonschema = require "lib.jsonschema"

-- compiled validators by schema text; options arrive decoded for every
-- case, so the cache keys on their JSON
local cache, cached = {}, 0

local function validator(schema)
  local key = ratchet.json.encode(schema)
  local v = cache[key]
  if v then return v end
  v = jsonschema.compile(schema) -- raises on a schema it cannot use
  if cached >= 64 then cache, cached = {}, 0 end
  cache[key], cached = v, cached + 1
  return v
end

return {
  name = "json_schema",
  description = "the output is JSON that validates against a JSON Schema (2020-12); reasons name the JSON path",
  options = {
    schema = "a JSON Schema (object or boolean); in the config, e.g. schema = json(file('invoice.schema.json'))",
    field = "string: validate output[field] instead of the whole output (optional)",
  },
  evaluate = function(case, opts)
    if opts.schema == nil then error("json_schema: option 'schema' is required (a JSON Schema)", 0) end
    text.check_opts("json_schema", opts, { schema = opts.schema == true and "boolean" or opts.schema == false and "boolean" or "table", field = "string?" })
    local validate = validator(opts.schema)
    local value, err = text.output_json(case)
    if value == nil and err then return text.fail("output is not valid JSON: " .. text.excerpt(err)) end
    if opts.field then
      if jsonschema.type_of(value) ~= "object" then return text.fail("output is not a JSON object, so it has no '" .. opts.field .. "'") end
      value = value[opts.field]
      if value == nil then return text.fail("output has no field '" .. opts.field .. "'") end
    end
    local ok, errs = validate(value)
    if ok then return text.pass("output matches the schema") end
    return text.fail("output does not match the schema: " .. jsonschema.summary(errs))
  end,
}
