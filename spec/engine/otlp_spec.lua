-- The OTLP/HTTP receiver (docs/otlp.md) through the real engine: spans sent
-- by the real OpenTelemetry exporters (spec/clients/*.mjs on node 22) become
-- traces on the ingest path, linked to a prompt and evaluated online; the
-- status codes exporters act on; hostile bodies.
local engine = require "spec.helpers.engine"
local node = require "spec.helpers.node"
local fake_llm = require "spec.helpers.fake_llm"

local TOKEN = "otlp-spec-ingest-token-0123456789"
local ADMIN = "otlp-spec-admin-token-0123456789ab"

local function config(extra)
  return string.format([[
ingest_token = %q
admin_token = %q
otlp = { listen = "127.0.0.1:0" }
prompt "support" {
  evaluators = { { "contains", options = { value = "refund" } } },
}
%s
]], TOKEN, ADMIN, extra or "")
end

local admin = { headers = { Authorization = "Bearer " .. ADMIN } }

local function otlp_url(e)
  local r = e:get("/v1/status", admin)
  assert.equal(200, r.status, r.body)
  assert.is_string(r.json.otlp.listen, r.body)
  return "http://" .. r.json.otlp.listen
end

local function decode_lines(out)
  local lines = {}
  for l in out:gmatch("[^\n]+") do lines[#lines + 1] = engine.json.decode(l) end
  return lines
end

local function get_trace(e, id)
  return engine.eventually(5, function()
    local r = e:get("/v1/traces/" .. id, admin)
    if r.status == 200 and r.json.verdict ~= "unevaluated" then return r.json end
  end)
end

describe("the OTLP receiver", function()
  local e
  after_each(function()
    if e then e:stop() end
    e = nil
  end)

  for _, mode in ipairs { "proto", "json" } do
    it("takes the current GenAI conventions from the real " .. mode .. " exporter into traces, evaluated online", function()
      e = engine.start { config = config() }
      local code, out, err = node.run("otlp_genai.mjs", { OTLP_URL = otlp_url(e), TOKEN = TOKEN, RUN = mode }, mode)
      assert.equal(0, code, err)
      local lines = decode_lines(out)
      local ids = lines[#lines]
      for i = 1, #lines - 1 do
        assert.equal(0, lines[i].code, out) -- ExportResultCode.SUCCESS for every export
      end
      local t = get_trace(e, ids.trace_id .. "-" .. ids.span_id)
      assert.is_table(t, "the LLM span was not stored as a trace; log:\n" .. e:log_text())
      assert.equal("support", t.prompt.name)
      assert.equal(1, t.prompt.version)
      assert.equal("We will refund you.", t.output)
      assert.equal("gpt-4o-mini-2024-07-18", t.model)
      assert.same({ input_tokens = 42, output_tokens = 7 }, t.usage)
      assert.same({ role = "system", content = "You answer support tickets." }, t.input.messages[1])
      assert.same({ role = "user", content = "I was charged twice (" .. mode .. ")" }, t.input.messages[2])
      assert.same({ ticket = "I was charged twice (" .. mode .. ")" }, t.input.variables)
      assert.same({ { id = "call_1", name = "refund", arguments = { amount = 10 } } }, t.tool_calls)
      assert.equal("conv-" .. mode, t.metadata.session_id)
      assert.equal("openai", t.metadata.otel.provider)
      assert.equal("support-app", t.metadata.otel.service)
      assert.equal("chatcmpl-" .. mode, t.metadata.otel.response_id)
      assert.equal("pass", t.verdict) -- online evaluation ran on it
      local failed = get_trace(e, ids.failed_trace_id .. "-" .. ids.failed_span_id)
      assert.equal("429 rate limited", failed.error)
      -- the database span is not a trace, and is counted
      local m = e:get("/metrics", admin).body
      assert.matches('ratchet_otlp_items_total{signal="traces",result="dropped"} 1', m, 1, true)
      assert.matches('ratchet_otlp_items_total{signal="traces",result="accepted"} 2', m, 1, true)
      -- the same spans again: duplicates by trace id + span id, nothing stored twice
      code, out, err = node.run("otlp_genai.mjs", { OTLP_URL = otlp_url(e), TOKEN = TOKEN, RUN = mode }, mode)
      assert.equal(0, code, err)
      local r = e:get("/v1/traces?prompt=support", admin)
      assert.equal(4, #r.json.items) -- two runs, two LLM spans each (new span ids)
    end)
  end

  -- An app calling the openai SDK (against ratchet fake-llm), instrumented by
  -- each convention's real library from npm, exporting with the real OTLP
  -- protobuf exporters: its LLM call shows as a trace linked to the prompt
  -- (ratchet.prompt.name as a resource attribute), evaluated online.
  local conventions = {
    -- @opentelemetry/instrumentation-openai: content as log records, model,
    -- usage and latency on the span, joined by trace id + span id in either order
    { lib = "otel", convention = "gen_ai-events", model = true },
    { lib = "otel", convention = "gen_ai-events", model = true, logs_first = true },
    { lib = "openinference", convention = "openinference", model = true },
    { lib = "openllmetry", convention = "gen_ai", model = true }, -- @traceloop 0.27 writes the current gen_ai.* attributes
    { lib = "vercel", convention = "vercel-ai", model = true },
  }
  for _, c in ipairs(conventions) do
    it("maps what " .. c.lib .. "'s instrumentation really emits into a trace, evaluated online"
        .. (c.logs_first and " (log records exported before the span)" or ""), function()
      local fake = fake_llm.start {}
      e = engine.start { config = config() }
      assert.equal(201, e:post("/v1/prompts", { name = "support" }, admin).status)
      assert.equal(201, e:post("/v1/prompts/support/versions",
        { messages = { { role = "system", content = "You answer support tickets." } } }, admin).status)
      local code, out, err = node.run("otlp_instrumented.mjs",
        { OTLP_URL = otlp_url(e), TOKEN = TOKEN, LLM_URL = fake:url("/v1"), PROMPT = "support", PROMPT_VERSION = "1",
          LOGS_FIRST = c.logs_first and "1" or "0" }, c.lib)
      fake:stop()
      assert.equal(0, code, err)
      local ids = engine.json.decode(out:match("[^\n]+\n?$"))
      assert.equal("echo: I was charged twice", ids.output)
      local t = engine.eventually(5, function()
        local r = e:get("/v1/traces?prompt=support", admin)
        local item = r.json.items[1]
        if item and item.verdict ~= "unevaluated" and item.id:sub(1, 32) == ids.trace_id
          and (item.model or not c.model) then return item end
      end)
      assert.is_table(t, "no evaluated trace of the app's trace " .. ids.trace_id .. "; log:\n" .. e:log_text())
      assert.equal(c.convention, t.metadata.otel.convention)
      assert.equal("support", t.prompt.name)
      assert.equal("echo: I was charged twice", t.output)
      assert.same({ role = "system", content = "You answer support tickets." }, t.input.messages[1])
      assert.same({ role = "user", content = "I was charged twice" }, t.input.messages[2])
      if c.model then
        assert.equal("gpt-4o-mini", t.model)
        assert.is_number(t.usage.input_tokens)
        assert.is_true(t.latency_ms > 0)
      end
      assert.equal("fail", t.verdict) -- the echo does not mention a refund: the contains evaluator failed it
      assert.equal("app-" .. c.lib, t.metadata.otel.service)
      -- and it feeds the loop: the prompt's window statistics count it
      assert.equal(1, t.prompt.version)
      local m = e:get("/v1/prompts/support/metrics?version=1", admin)
      assert.equal(200, m.status, m.body)
      assert.equal(1, m.json.versions[1].evaluated, m.body)
      assert.equal(1, m.json.versions[1].failures, m.body)
    end)
  end
end)
