-- The OTLP/HTTP receiver (docs/otlp.md) through the real engine: spans sent
-- by the real OpenTelemetry exporters (spec/clients/*.mjs on node 22) become
-- traces on the ingest path, linked to a prompt and evaluated online; the
-- status codes exporters act on; hostile bodies.
local engine = require "spec.helpers.engine"
local node = require "spec.helpers.node"

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
end)
