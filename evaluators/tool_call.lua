-- tool_call: the tool calls in the trace name allowed tools, with arguments
-- valid against each tool's JSON Schema.
local text = require "lib.text"
local jsonschema = require "lib.jsonschema"

local cache = setmetatable({}, { __mode = "k" })

local function validators(tools)
  local v = cache[tools]
  if v then return v end
  v = {}
  for name, schema in pairs(tools) do
    local ok, err = pcall(jsonschema.compile, schema)
    if not ok then error("option 'tools': the schema of '" .. tostring(name) .. "': " .. tostring(err), 0) end
    v[name] = err
  end
  cache[tools] = v
  return v
end

return {
  name = "tool_call",
  description = "every tool call names an allowed tool and its arguments validate against that tool's schema",
  options = {
    tools = { type = "object", items = { "object", "boolean" }, required = true,
              description = "tool name -> JSON Schema of its arguments (true accepts any arguments)" },
    required = { type = "boolean", default = false, description = "the trace must make at least one tool call" },
    max_calls = { type = "integer", min = 0, description = "at most this many tool calls" },
  },
  -- every tool's schema must compile: checked when the config loads
  check = function(opts) validators(opts.tools) end,
  evaluate = function(case, opts)
    local check = validators(opts.tools)
    local calls = (case.trace or {}).tool_calls
    if calls == nil or calls == ratchet.json.null then calls = {} end
    if type(calls) ~= "table" then return text.fail("trace.tool_calls is not a list") end
    if #calls == 0 then
      if opts.required then return text.fail("no tool call was made") end
      return text.pass("no tool calls")
    end
    if opts.max_calls and #calls > opts.max_calls then
      return text.fail(string.format("%d tool calls, more than %d", #calls, opts.max_calls))
    end
    for i, call in ipairs(calls) do
      local where = string.format("tool_calls[%d]", i - 1)
      local name = type(call) == "table" and call.name
      if type(name) ~= "string" then return text.fail(where .. " has no name") end
      local validate = check[name]
      if not validate then
        return text.fail(where .. " calls '" .. text.excerpt(name, 60) .. "', which is not an allowed tool", 0)
      end
      local args = call.arguments
      if type(args) == "string" then
        local decoded, err = ratchet.json.decode(args)
        if decoded == nil then return text.fail(where .. " (" .. name .. "): arguments are not valid JSON: " .. text.excerpt(err)) end
        args = decoded
      elseif args == nil then
        args = {}
      end
      local ok, errs = validate(args)
      if not ok then
        return text.fail(where .. " (" .. name .. "): arguments do not match the schema: " .. jsonschema.summary(errs), 0)
      end
    end
    return text.pass(#calls .. " tool call" .. (#calls == 1 and "" or "s") .. ", all valid")
  end,
}
