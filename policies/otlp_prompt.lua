-- otlp_prompt.lua — the OTLP receiver's prompt rule: prompt(span) says which
-- registered prompt an LLM call belongs to when no attribute of the span
-- links it (docs/otlp.md#linking-to-a-prompt). Used only when the config
-- names it: otlp = { prompt_rule = "otlp_prompt" }. The engine calls it on
-- the loop thread for each such span, under scripts.policy_budget_ms.
--
-- span: the plain span (docs/otlp.md): { trace_id, span_id, name, start_ns,
--   end_ns, status_code, status_message, scope, attributes = { key = value },
--   resource = { key = value }, events = { ... } } (a log-formed call: its
--   records' merged attributes, name "").
-- returns { name = "prompt", version = n? }, or false: the span stays
-- unlinked and is rejected in partial_success (nil is an error, as for every
-- policy: a function that forgot to return).
--
-- This one reads its settings: a service (resource service.name) or an
-- OpenTelemetry instrumentation scope mapped to a prompt, else the first
-- span-name pattern (a Lua pattern) that matches. Edit the settings, or write
-- your own rule as another file of policies/ and name it in the config.
local M = {}

M.settings = {
  by_service = {},   -- e.g. { ["support-app"] = "support" }
  by_scope = {},     -- e.g. { ["@arizeai/openinference-instrumentation-openai"] = "support" }
  by_span_name = {}, -- e.g. { { pattern = "^chat gpt%-4o", prompt = "triage" } }
}

function M.prompt(span)
  local s = M.settings
  local service = span.resource and span.resource["service.name"]
  if service and s.by_service[service] then return { name = s.by_service[service] } end
  if span.scope and s.by_scope[span.scope] then return { name = s.by_scope[span.scope] } end
  for _, rule in ipairs(s.by_span_name) do
    if type(span.name) == "string" and span.name:find(rule.pattern) then return { name = rule.prompt } end
  end
  return false
end

return M
