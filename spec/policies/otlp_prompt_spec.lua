-- policies/otlp_prompt.lua, the OTLP receiver's default prompt rule, run in
-- the engine's sandbox.
local sandbox = require "spec.helpers.sandbox"

local policy = sandbox.policy("otlp_prompt")

local function span(fields)
  local s = { trace_id = string.rep("a", 32), span_id = string.rep("b", 16), name = "chat gpt-4o-mini",
              scope = "app", attributes = { ["gen_ai.operation.name"] = "chat" }, resource = { ["service.name"] = "svc" } }
  for k, v in pairs(fields or {}) do s[k] = v end
  return s
end

-- the shipped file with its settings edited, as an operator would
local function edited(settings)
  local f = assert(io.open("policies/otlp_prompt.lua"))
  local text = f:read("a")
  f:close()
  local changed, n = text:gsub("M%.settings = %b{}", function() return "M.settings = " .. settings end)
  assert.equal(1, n)
  local path = os.tmpname() .. ".lua"
  f = assert(io.open(path, "w"))
  f:write(changed)
  f:close()
  local p, err = sandbox.load_policy(path)
  os.remove(path)
  assert(p, err)
  return p
end

describe("policies/otlp_prompt.lua", function()
  it("links nothing with its shipped settings", function()
    assert.is_false(policy:call("prompt", span()))
  end)

  it("links by service, then by instrumentation scope, then by the first span-name pattern", function()
    policy = edited [[{ by_service = { svc = "support" }, by_scope = { app = "scoped" },
      by_span_name = { { pattern = "^embed", prompt = "no" }, { pattern = "^chat gpt%-4o", prompt = "triage" } } }]]
    assert.same({ name = "support" }, policy:call("prompt", span()))
    assert.same({ name = "scoped" }, policy:call("prompt", span { resource = { ["service.name"] = "other" } }))
    assert.same({ name = "triage" }, policy:call("prompt", span { resource = {}, scope = "x" }))
    assert.is_false(policy:call("prompt", span { resource = {}, scope = "x", name = "SELECT 1" }))
  end)
end)
