-- json_schema: the output is JSON valid against a JSON Schema (2020-12).
local text = require "lib.text"
local jsonschema = require "lib.jsonschema"

-- compiled validators by options table: the engine hands the same options
-- table to every case of an attachment (weak keys: dropped with it)
local compiled = setmetatable({}, { __mode = "k" })

return {
  name = "json_schema",
  description = "the output is JSON that validates against a JSON Schema (2020-12); reasons name the JSON path",
  options = {
    schema = { type = { "object", "boolean" }, required = true,
               description = "a JSON Schema; in the config, e.g. schema = json(file('invoice.schema.json'))" },
    field = { type = "string", nonempty = true,
              description = "validate output[field] instead of the whole output" },
  },
  -- a schema the validator cannot use is an error when the config loads
  check = function(opts) jsonschema.compile(opts.schema) end,
  evaluate = function(case, opts)
    local validate = compiled[opts]
    if not validate then
      validate = jsonschema.compile(opts.schema)
      compiled[opts] = validate
    end
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
