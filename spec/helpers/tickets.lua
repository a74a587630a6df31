-- The ticket-triage prompt that the loop's end-to-end specs share: the engine's config
-- (provider "fake" at the fake LLM server running demo/model.lua, the SIMULATED target and
-- optimizer models; prompt "tickets" checked by demo/ticket.schema.json), its versions,
-- and the registry and golden dataset each spec starts from.
local engine = require "spec.helpers.engine"
local assert = require "luassert"

local M = {}

M.MODEL = engine.read_file("demo/model.lua")
M.V1 = "You turn support tickets into JSON. Answer with a JSON object with the fields category, priority and summary."
-- V1 with the fix for tickets that quote a name (demo/model.lua answers them with broken JSON without it)
M.V2 = M.V1 .. " Escape quotes in strings."

-- loop: the loop's fields after the shared ones (dataset, optimizer, check_interval_ms = 100,
-- k = 1, concurrency = 4), e.g. its trigger and rollout options; false: the prompt has no loop
-- (runs started through the API only)
function M.config(fake, loop)
  local loop_block = ""
  if loop ~= false then
    loop_block = string.format([[
  loop = {
    dataset = "golden", optimizer = { provider = "fake", model = "optimizer" },
    check_interval_ms = 100, k = 1, concurrency = 4,
    %s
  },
]], loop or "")
  end
  return string.format([[
scripts = { dirs = { %q } }
provider "fake" {
  kind = "openai", base_url = %q, default_model = "target",
  max_retries = 1, backoff_base_ms = 5, backoff_max_ms = 20, timeout_ms = 20000,
}
prompt "tickets" {
  evaluators = { { "json_schema", options = { schema = json(file(%q)) } } },
%s}
]], engine.root, "http://" .. fake.addr .. "/v1", engine.root .. "/demo/ticket.schema.json", loop_block)
end

function M.version(system)
  return { messages = { { role = "system", content = system }, { role = "user", content = "Ticket: {{ticket}}" } },
           model = { provider = "fake", model = "target" } }
end

-- "tickets" with version 1 (system: V1 unless given) in production, versions 2, 3, ... (the
-- systems of candidates, if given) added, and then the dataset "golden": an engine that sees
-- the dataset sees the versions too
function M.setup(e, system, candidates)
  assert.equal(201, e:post("/v1/prompts", { name = "tickets" }).status)
  assert.equal(201, e:post("/v1/prompts/tickets/versions", M.version(system or M.V1)).status)
  assert.equal(200, e:post("/v1/prompts/tickets/promote", { version = 1 }).status)
  for _, c in ipairs(candidates or {}) do
    assert.equal(201, e:post("/v1/prompts/tickets/versions", M.version(c)).status)
  end
  local r = e:post("/v1/datasets/golden/cases", engine.read_file("demo/golden.jsonl"),
    { content_type = "application/x-ndjson" })
  assert.equal(200, r.status, r.body)
end

function M.base(e) return "http://" .. e.addr end

-- version number -> status
function M.statuses(e)
  local out = {}
  for _, v in ipairs(e:get("/v1/prompts/tickets/versions").json.items) do out[v.version] = v.status end
  return out
end

return M
