-- json_schema and tool_call, in the engine's own runtime. The first block
-- runs the public JSON-Schema-Test-Suite (draft 2020-12), read in place from
-- ../shared/testdata (or $RATCHET_JSON_SCHEMA_SUITE), and prints the pass
-- count per keyword file and every skipped group with its reason.
local sandbox = require "spec.helpers.sandbox"
local cjson = require "cjson"

local SKIP = {
  ["defs.json"] = {
    ["validate definition against metaschema"] = "needs the 2020-12 metaschema, a remote document",
  },
  ["ref.json"] = {
    ["remote ref, containing refs itself"] = "needs the 2020-12 metaschema, a remote document",
    ["ref creates new scope when adjacent to keywords"] = "uses unevaluatedProperties, which is not supported",
  },
  ["not.json"] = {
    ["collect annotations inside a 'not', even if collection is disabled"] =
      "uses unevaluatedProperties, which is not supported",
  },
}

-- the keywords docs/evaluators.md lists: every case of these files must pass
local REQUIRED = {
  "type", "enum", "const", "properties", "required", "additionalProperties", "items", "prefixItems",
  "minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minimum", "maximum",
  "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "pattern", "anyOf", "oneOf", "allOf", "not", "ref", "defs",
}

local function suite_dir()
  local candidates = { "../shared/testdata/json-schema-test-suite/draft2020-12",
    "/work/shared/testdata/json-schema-test-suite/draft2020-12" }
  local env = os.getenv("RATCHET_JSON_SCHEMA_SUITE")
  if env then table.insert(candidates, 1, env) end
  for _, d in ipairs(candidates) do
    local f = io.open(d .. "/type.json")
    if f then
      f:close()
      return d
    end
  end
end

describe("json_schema over the JSON-Schema-Test-Suite (draft 2020-12)", function()
  local dir = suite_dir()
  local runner = assert(sandbox.load_evaluator("spec/helpers/schema_suite.lua", { dirs = { "evaluators" } }))
  if not dir then
    -- the suite is shared test data beside the checkout, not part of it
    pending("JSON-Schema-Test-Suite not found beside the checkout; set RATCHET_JSON_SCHEMA_SUITE")
    return
  end
  local files = {}
  for f in io.popen("ls " .. dir):lines() do
    if f:match("%.json$") then files[#files + 1] = f end
  end
  local report = {}
  for _, f in ipairs(files) do
    it("passes every case of " .. f, function()
      local fh = assert(io.open(dir .. "/" .. f))
      local text = fh:read("a")
      fh:close()
      local r = runner:evaluate('{"output":' .. text .. '}', cjson.encode({ skip = SKIP[f] or {} }))
      assert.equal("ok", r.status, r.reason)
      local passed, total, skipped = r.reason:match("^(%d+) (%d+) (%d+)")
      report[#report + 1] = string.format("%-24s %3d/%-3d passed%s", f, passed, total,
        tonumber(skipped) > 0 and ("  (" .. skipped .. " skipped)") or "")
      assert.is_true(r.pass, f .. ": failures:\n" .. r.reason)
      assert.is_true(tonumber(total) + tonumber(skipped) > 0)
    end)
  end
  it("covers every keyword docs/evaluators.md lists", function()
    local have = {}
    for _, f in ipairs(files) do have[f:gsub("%.json$", "")] = true end
    for _, k in ipairs(REQUIRED) do assert.truthy(have[k], "no test file for " .. k) end
  end)
  teardown(function()
    io.stderr:write("\n# JSON-Schema-Test-Suite draft2020-12, per keyword:\n")
    for _, line in ipairs(report) do io.stderr:write("#   ", line, "\n") end
    for f, groups in pairs(SKIP) do
      for g, why in pairs(groups) do io.stderr:write(string.format("#   skipped %s / %s: %s\n", f, g, why)) end
    end
  end)
end)

describe("json_schema", function()
  local ev = sandbox.evaluator("json_schema")
  local schema = { type = "object", required = { "total", "lines" }, additionalProperties = false,
    properties = { total = { type = "number", minimum = 0 },
      lines = { type = "array", minItems = 1, items = { ["$ref"] = "#/$defs/line" } } },
    ["$defs"] = { line = { type = "object", required = { "sku" }, properties = { sku = { type = "string", pattern = "^[A-Z]{3}-\\d+$" } } } } }
  it("passes valid output and names the JSON path of each problem", function()
    assert.is_true(ev:evaluate({ output = '{"total":3,"lines":[{"sku":"ABC-1"}]}' }, { schema = schema }).pass)
    local r = ev:evaluate({ output = '{"total":-1,"lines":[{"sku":"abc"}],"x":1}' }, { schema = schema })
    assert.is_false(r.pass)
    assert.matches("%$%.total: %-1 is less than the minimum 0", r.reason)
    assert.matches("%$%.lines%[0%]%.sku: \"abc\" does not match", r.reason)
    assert.matches("%$%.x: is not an allowed property", r.reason)
  end)
  it("validates one field with field =", function()
    assert.is_true(ev:evaluate({ output = '{"data":{"total":1,"lines":[{"sku":"ABC-2"}]}}' }, { schema = schema, field = "data" }).pass)
    assert.matches("no field 'data'", ev:evaluate({ output = '{}' }, { schema = schema, field = "data" }).reason)
  end)
  it("fails hostile outputs without crashing", function()
    assert.is_false(ev:evaluate({ output = "{not json" }, { schema = schema }).pass)
    assert.is_false(ev:evaluate({ output = string.rep("[", 100000) .. string.rep("]", 100000) }, { schema = schema }).pass)
    local huge = '{"total":1,"lines":[' .. string.rep('{"sku":"ABC-1"},', 20000) .. '{"sku":"ABC-1"}]}'
    assert.is_true(ev:evaluate({ output = huge }, { schema = schema }).pass)
    local r = ev:evaluate({ output = '{"total":1,"lines":[{"sku":"caf\233"}]}' }, { schema = schema })
    assert.equal("ok", r.status)
    assert.is_false(r.pass)
  end)
  it("reports a bad schema or options as an evaluator error", function()
    local r = ev:evaluate({ output = "{}" }, {})
    assert.equal("error", r.status)
    assert.matches("option 'schema' is required", r.reason)
    r = ev:evaluate({ output = "{}" }, { schema = { ["$ref"] = "http://example.com/other.json" } })
    assert.equal("error", r.status)
    assert.matches("cannot resolve %$ref", r.reason)
    r = ev:evaluate({ output = "{}" }, { schema = { pattern = "(" } })
    assert.equal("error", r.status)
    assert.matches("does not compile", r.reason)
  end)
end)

describe("tool_call", function()
  local ev = sandbox.evaluator("tool_call")
  local tools = { lookup_customer = { type = "object", required = { "email" },
    properties = { email = { type = "string", pattern = "@" } } }, ping = true }
  local function case(calls) return '{"output":"","trace":{"tool_calls":' .. calls .. '}}' end
  local opts = cjson.encode({ tools = tools })
  it("passes allowed tools with valid arguments (objects or JSON strings)", function()
    local r = ev:evaluate(case('[{"name":"lookup_customer","arguments":{"email":"a@b.c"}},{"name":"ping"}]'), opts)
    assert.is_true(r.pass, r.reason)
    assert.is_true(ev:evaluate(case('[{"name":"lookup_customer","arguments":"{\\"email\\":\\"a@b.c\\"}"}]'), opts).pass)
    assert.is_true(ev:evaluate(case('[]'), opts).pass)
  end)
  it("fails unknown tools, bad arguments, missing calls, too many calls", function()
    local r = ev:evaluate(case('[{"name":"drop_table","arguments":{}}]'), opts)
    assert.is_false(r.pass)
    assert.matches("'drop_table', which is not an allowed tool", r.reason)
    r = ev:evaluate(case('[{"name":"lookup_customer","arguments":{"email":7}}]'), opts)
    assert.matches("tool_calls%[0%] %(lookup_customer%): arguments do not match the schema: %$%.email: must be string", r.reason)
    r = ev:evaluate(case('[{"name":"lookup_customer","arguments":"{oops"}]'), opts)
    assert.matches("arguments are not valid JSON", r.reason)
    r = ev:evaluate(case('[]'), cjson.encode({ tools = tools, required = true }))
    assert.matches("no tool call was made", r.reason)
    r = ev:evaluate(case('[{"name":"ping"},{"name":"ping"}]'), cjson.encode({ tools = tools, max_calls = 1 }))
    assert.matches("2 tool calls, more than 1", r.reason)
    r = ev:evaluate(case('[{"arguments":{}}]'), opts)
    assert.matches("has no name", r.reason)
  end)
  it("reports bad options as an evaluator error", function()
    local r = ev:evaluate(case('[]'), '{"tools":"lookup"}')
    assert.equal("error", r.status)
    assert.matches("option 'tools' must be a table", r.reason)
  end)
end)
