-- The OTLP receiver against hostile and broken bodies (docs/otlp.md): each
-- is refused with the status OTLP/HTTP exporters act on, or its bad spans
-- rejected in partial_success while the good ones are kept; the engine
-- stays up. The protobuf bodies are built here byte by byte (a test
-- fixture: the smallest encoder that can also write what no real exporter
-- would).
local engine = require "spec.helpers.engine"

-- ---- a protobuf writer for the test bodies ----
local function varint(n)
  local t = {}
  repeat
    local b = n % 128
    n = n // 128
    if n > 0 then b = b + 128 end
    t[#t + 1] = string.char(b)
  until n == 0
  return table.concat(t)
end
local function len_field(num, payload) return varint(num << 3 | 2) .. varint(#payload) .. payload end
local function varint_field(num, v) return varint(num << 3) .. varint(v) end
local function fixed64_field(num, v) return varint(num << 3 | 1) .. string.pack("<I8", v) end
local function str(s) return len_field(1, s) end                     -- AnyValue.string_value
local function kv(k, any) return len_field(1, k) .. len_field(2, any) end
local function span(p)
  local parts = { len_field(1, p.trace or string.rep("\1", 16)), len_field(2, p.span), len_field(5, p.name or "chat"),
    fixed64_field(7, 1700000000000000000), fixed64_field(8, 1700000000250000000) }
  for _, a in ipairs(p.attrs or {}) do parts[#parts + 1] = len_field(9, a) end
  return table.concat(parts)
end
local function request(spans)
  local ss = {}
  for _, s in ipairs(spans) do ss[#ss + 1] = len_field(2, s) end
  return len_field(1, len_field(2, table.concat(ss)))  -- resource_spans { scope_spans { spans... } }
end
local function llm_attrs(extra)
  local a = {
    kv("gen_ai.operation.name", str("chat")), kv("gen_ai.request.model", str("m")),
    kv("gen_ai.input.messages", str('[{"role":"user","parts":[{"type":"text","content":"hi"}]}]')),
    kv("gen_ai.output.messages", str('[{"role":"assistant","parts":[{"type":"text","content":"refund"}]}]')),
    kv("ratchet.prompt.name", str("support")),
  }
  for _, x in ipairs(extra or {}) do a[#a + 1] = x end
  return a
end

-- ---- reading answers: ExportTraceServiceResponse / google.rpc.Status ----
local function read_varint(s, i)
  local n, shift = 0, 0
  repeat
    local b = s:byte(i)
    n = n | ((b & 127) << shift)
    shift, i = shift + 7, i + 1
  until b < 128
  return n, i
end
local function fields(s)
  local out, i = {}, 1
  while i <= #s do
    local key
    key, i = read_varint(s, i)
    local num, wt = key >> 3, key & 7
    if wt == 0 then
      out[num], i = read_varint(s, i)
    else
      assert(wt == 2, "unexpected wire type " .. wt)
      local n
      n, i = read_varint(s, i)
      out[num] = s:sub(i, i + n - 1)
      i = i + n
    end
  end
  return out
end
local function partial(body) -- rejected_spans, error_message (nil, nil when none)
  local ps = fields(body)[1]
  if not ps then return nil, nil end
  local f = fields(ps)
  return f[1], f[2]
end

local TOKEN = "otlp-hostile-ingest-token-0123456789"
local ADMIN = "otlp-hostile-admin-token-0123456789"
local admin = { headers = { Authorization = "Bearer " .. ADMIN } }

describe("the OTLP receiver with hostile input", function()
  local e, otlp
  setup(function()
    e = engine.start { config = string.format([[
ingest_token = %q
admin_token = %q
otlp = { listen = "127.0.0.1:0" }
limits = { max_body_bytes = 4194304, max_pending_writes = 100 }
prompt "support" { evaluators = { { "contains", options = { value = "refund" } } } }
]], TOKEN, ADMIN) }
    otlp = setmetatable({ addr = e:get("/v1/status", admin).json.otlp.listen }, engine.Engine)
  end)
  teardown(function() e:stop() end)

  local function send(body, ct, headers)
    local h = { Authorization = "Bearer " .. TOKEN }
    for k, v in pairs(headers or {}) do h[k] = v end
    local r = otlp:request("POST", "/v1/traces", { body = body, headers = h, content_type = ct or "application/x-protobuf" })
    return r
  end
  local function stored(id) return e:get("/v1/traces/" .. id, admin).status == 200 end
  local TRACE_HEX = string.rep("01", 16)

  it("answers a truncated body 400 with a google.rpc.Status, and stays up", function()
    local body = request { span { span = "\0\0\0\0\0\0\0\1", attrs = llm_attrs() } }
    local r = send(body:sub(1, #body - 7))
    assert.equal(400, r.status)
    assert.equal("application/x-protobuf", r.headers["content-type"])
    local st = fields(r.body)
    assert.equal(3, st[1]) -- INVALID_ARGUMENT
    assert.matches("not a protobuf ExportTraceServiceRequest", st[2])
    assert.equal(200, e:get("/healthz").status)
  end)

  it("answers a field of the wrong wire type 400", function()
    local r = send(varint_field(1, 5)) -- resource_spans as a varint
    assert.equal(400, r.status)
    -- and in JSON: a body that is not an export request
    r = send('{"resourceSpans": 5}', "application/json")
    assert.equal(400, r.status)
    assert.matches("resourceSpans", r.json.message)
  end)

  it("rejects a deeply nested value, an invalid UTF-8 string and 100k attributes in their spans, keeping the valid span", function()
    local deep = str("x")
    for _ = 1, 200 do deep = len_field(5, len_field(1, deep)) end -- array_value { values: [ ... ] }
    local many = {}
    for i = 1, 100000 do many[i] = kv("a" .. i, str("v")) end
    local body = request {
      span { span = "\0\0\0\0\0\0\0\2", attrs = llm_attrs { kv("deep", deep) } },
      span { span = "\0\0\0\0\0\0\0\3", attrs = llm_attrs { kv("bad", str("caf\xc3\x28")) } },
      span { span = "\0\0\0\0\0\0\0\4", attrs = llm_attrs(many) },
      span { span = "\0\0\0\0\0\0\0\5", attrs = llm_attrs() },
      span { span = "\0\0\0\0\0\0\6", attrs = llm_attrs() }, -- a span id of 7 bytes
    }
    local r = send(body)
    assert.equal(200, r.status, r.body)
    local rejected, msg = partial(r.body)
    assert.equal(4, rejected)
    assert.matches("nested deeper than 32", msg)
    assert.is_true(stored(TRACE_HEX .. "-0000000000000005"))
    for _, sid in ipairs { "0000000000000002", "0000000000000003", "0000000000000004" } do
      assert.is_false(stored(TRACE_HEX .. "-" .. sid), sid)
    end
    local m = e:get("/metrics", admin).body
    assert.matches('ratchet_otlp_items_total{signal="traces",result="rejected"} 4', m, 1, true)
  end)

  it("names the invalid UTF-8 attribute and the attribute count in partial_success", function()
    local r = send(request { span { span = "\0\0\0\0\0\0\1\3", attrs = llm_attrs { kv("bad", str("\xff")) } } })
    local _, msg = partial(r.body)
    assert.matches("attribute 'bad' is not valid UTF%-8", msg)
    local many = {}
    for i = 1, 5000 do many[i] = kv("k" .. i, str("v")) end
    r = send(request { span { span = "\0\0\0\0\0\0\1\4", attrs = llm_attrs(many) } })
    _, msg = partial(r.body)
    assert.matches("5005 attributes; at most 4096", msg)
  end)

  it("answers a gzip bomb 413 once it inflates past the body limit", function()
    local dir = engine.tmpdir()
    os.execute("head -c 50000000 /dev/zero | gzip -c > " .. dir .. "/bomb.gz")
    local bomb = engine.read_file(dir .. "/bomb.gz")
    os.execute("rm -rf " .. dir)
    assert.is_true(#bomb < 100000)
    local r = send(bomb, nil, { ["Content-Encoding"] = "gzip" })
    assert.equal(413, r.status)
    assert.matches("inflates past 4194304 bytes", fields(r.body)[2])
    -- corrupt gzip is a 400
    r = send("\31\139\8\0garbage", nil, { ["Content-Encoding"] = "gzip" })
    assert.equal(400, r.status)
  end)

  it("takes gzip bodies", function()
    local dir = engine.tmpdir()
    engine.write_file(dir .. "/b", request { span { span = "\0\0\0\0\0\0\2\1", attrs = llm_attrs() } })
    os.execute("gzip -c " .. dir .. "/b > " .. dir .. "/b.gz")
    local r = send(engine.read_file(dir .. "/b.gz"), nil, { ["Content-Encoding"] = "gzip" })
    os.execute("rm -rf " .. dir)
    assert.equal(200, r.status)
    assert.is_nil(partial(r.body))
    assert.is_true(stored(TRACE_HEX .. "-0000000000000201"))
  end)

  it("takes OTLP JSON with mixed valid and invalid spans, and duplicates store nothing twice", function()
    local function jspan(sid, attrs)
      return { traceId = string.rep("ab", 16), spanId = sid, name = "chat", startTimeUnixNano = "1700000000000000000",
        endTimeUnixNano = "1700000000500000000", attributes = attrs }
    end
    local good = {
      { key = "gen_ai.operation.name", value = { stringValue = "chat" } },
      { key = "gen_ai.usage.input_tokens", value = { intValue = "12" } },
      { key = "gen_ai.output.messages", value = { stringValue = '[{"role":"assistant","parts":[{"type":"text","content":"ok"}]}]' } },
      { key = "ratchet.prompt.name", value = { stringValue = "support" } },
    }
    local body = engine.json.encode { resourceSpans = { { scopeSpans = { { spans = {
      jspan("00000000000000a1", good),
      jspan("zz", good),                                               -- not hex
      jspan("00000000000000a3", { good[1], good[3] }),                 -- linked to no prompt
      jspan("00000000000000a4", { { key = "x", value = { weird = 1 } } }), -- not an AnyValue
      jspan("00000000000000a5", { { key = "http.method", value = { stringValue = "GET" } } }), -- not an LLM call
    } } } } } }
    local r = send(body, "application/json")
    assert.equal(200, r.status, r.body)
    assert.equal("3", r.json.partialSuccess.rejectedSpans)
    assert.matches("spanId must be 16 hex digits", r.json.partialSuccess.errorMessage)
    local t = e:get("/v1/traces/" .. string.rep("ab", 16) .. "-00000000000000a1", admin).json
    assert.equal("ok", t.output)
    assert.equal(12, t.usage.input_tokens)
    assert.equal(500, t.latency_ms)
    local before = #e:get("/v1/traces?prompt=support&limit=1000", admin).json.items
    r = send(body, "application/json")
    assert.equal(200, r.status)
    assert.equal(before, #e:get("/v1/traces?prompt=support&limit=1000", admin).json.items)
    assert.matches('ratchet_otlp_items_total{signal="traces",result="duplicate"} 1', e:get("/metrics", admin).body, 1, true)
    assert.matches('ratchet_otlp_items_total{signal="traces",result="unlinked"} 2', e:get("/metrics", admin).body, 1, true)
  end)

  it("refuses what is not OTLP: content type, encoding, method, path, token", function()
    local body = request { span { span = "\0\0\0\0\0\0\3\1", attrs = llm_attrs() } }
    assert.equal(415, send(body, "text/plain").status)
    assert.equal(415, send(body, nil, { ["Content-Encoding"] = "br" }).status)
    assert.equal(405, otlp:request("GET", "/v1/traces").status)
    assert.equal(404, otlp:request("POST", "/v1/metrics", { body = body }).status)
    local r = otlp:request("POST", "/v1/traces", { body = body, content_type = "application/x-protobuf",
      headers = { Authorization = "Bearer wrong-token-wrong-token" } })
    assert.equal(401, r.status)
    assert.is_false(stored(TRACE_HEX .. "-0000000000000301"))
  end)

  it("answers 429 with Retry-After when the store's write queue cannot take the batch, storing nothing", function()
    local spans = {}
    for i = 1, 101 do -- limits.max_pending_writes = 100
      spans[i] = span { span = string.pack(">I8", 0x1000 + i), attrs = llm_attrs() }
    end
    local r = send(request(spans))
    assert.equal(429, r.status) -- OTLP/HTTP throttling: retryable, with the delay to wait
    assert.equal("1", r.headers["retry-after"])
    assert.equal("application/x-protobuf", r.headers["content-type"])
    assert.equal(8, fields(r.body)[1]) -- RESOURCE_EXHAUSTED
    assert.matches("write queue is full", fields(r.body)[2])
    assert.is_false(stored(TRACE_HEX .. "-0000000000001001"))
    -- and in JSON, a google.rpc.Status in JSON
    local jspans = {}
    for i = 1, 101 do
      jspans[i] = { traceId = string.rep("cd", 16), spanId = string.format("%016x", 0x2000 + i), name = "chat",
        startTimeUnixNano = "1700000000000000000", endTimeUnixNano = "1700000000500000000", attributes = {
          { key = "gen_ai.operation.name", value = { stringValue = "chat" } },
          { key = "gen_ai.output.messages", value = { stringValue = '[{"role":"assistant","parts":[{"type":"text","content":"ok"}]}]' } },
          { key = "ratchet.prompt.name", value = { stringValue = "support" } } } }
    end
    r = send(engine.json.encode { resourceSpans = { { scopeSpans = { { spans = jspans } } } } }, "application/json")
    assert.equal(429, r.status)
    assert.equal("1", r.headers["retry-after"])
    assert.equal("application/json", r.headers["content-type"])
    assert.equal(8, r.json.code)
    assert.matches("write queue is full", r.json.message)
    assert.is_false(stored(string.rep("cd", 16) .. "-0000000000002001"))
  end)
end)

-- OTLP/HTTP: an error's body is a google.rpc.Status in the request's
-- encoding. Every status the listener answers, in both encodings (the 429
-- of a full write queue is above; the 503 of a store that is down is in
-- store_pg_spec.lua).
describe("the OTLP listener's errors", function()
  local e, otlp
  local METRICS = "otlp-errors-metrics-token-0123456789"
  setup(function()
    e = engine.start { config = string.format([[
ingest_token = %q
admin_token = %q
metrics_token = %q
otlp = { listen = "127.0.0.1:0" }
limits = { max_body_bytes = 2048 }
]], TOKEN, ADMIN, METRICS) }
    otlp = setmetatable({ addr = e:get("/v1/status", admin).json.otlp.listen }, engine.Engine)
  end)
  teardown(function() e:stop() end)

  local TYPES = { proto = "application/x-protobuf", json = "application/json" }
  -- a body of each encoding that decodes (bodies[enc]) and one that does not
  local bodies = { proto = request { span { span = "\0\0\0\0\0\0\9\1", attrs = llm_attrs() } }, json = "{}" }
  local broken = { proto = varint_field(1, 5), json = '{"resourceSpans": 5}' }

  -- the answer is a google.rpc.Status in enc: returns its code and message
  local function status_of(r, enc)
    assert.equal(TYPES[enc], r.headers["content-type"], r.status .. " " .. r.body)
    if enc == "json" then
      assert.is_table(r.json, r.body)
      assert.is_nil(r.json.error) -- not the API's error shape
      return r.json.code, r.json.message
    end
    local f = fields(r.body)
    return f[1], f[2]
  end

  for _, enc in ipairs { "proto", "json" } do
    it("are google.rpc.Status in " .. enc .. ": 400, 401, 403, 404, 405, 413 (sent and inflated), 415", function()
      local ct = TYPES[enc]
      local auth = { Authorization = "Bearer " .. TOKEN }
      local function post(path, body, headers, ctype)
        return otlp:request("POST", path, { body = body, content_type = ctype or ct, headers = headers or auth })
      end
      local cases = {
        { 400, 3, enc == "json" and "resourceSpans" or "ExportTraceServiceRequest", post("/v1/traces", broken[enc]) },
        { 401, 16, "Bearer", post("/v1/traces", bodies[enc], {}) },
        { 401, 16, "not valid", post("/v1/logs", bodies[enc], { Authorization = "Bearer wrong-token-wrong-token" }) },
        { 403, 7, "metrics", post("/v1/traces", bodies[enc], { Authorization = "Bearer " .. METRICS }) },
        { 404, 5, "no endpoint at /v1/metrics", post("/v1/metrics", bodies[enc]) },
        { 405, 12, "use POST", otlp:request("PUT", "/v1/traces", { body = bodies[enc], content_type = ct, headers = auth }) },
        { 413, 11, "over the limit of 2048 bytes", post("/v1/traces", bodies[enc] .. string.rep(" ", 3000)) },
        { 415, 3, "Content-Encoding", post("/v1/traces", bodies[enc], { Authorization = auth.Authorization, ["Content-Encoding"] = "br" }) },
      }
      local dir = engine.tmpdir()
      os.execute("head -c 100000 /dev/zero | gzip -c > " .. dir .. "/bomb.gz")
      local bomb = engine.read_file(dir .. "/bomb.gz")
      os.execute("rm -rf " .. dir)
      cases[#cases + 1] = { 413, 11, "inflates past 2048 bytes",
        post("/v1/traces", bomb, { Authorization = auth.Authorization, ["Content-Encoding"] = "gzip" }) }
      for _, c in ipairs(cases) do
        local want, grpc, msg, r = c[1], c[2], c[3], c[4]
        assert.equal(want, r.status, r.body)
        local code, message = status_of(r, enc)
        assert.equal(grpc, code, want .. ": " .. tostring(message))
        assert.is_truthy(message and message:find(msg, 1, true), want .. ": " .. tostring(message))
        if want == 405 then assert.equal("POST", r.headers["allow"]) end
        if want == 401 then assert.equal("Bearer", r.headers["www-authenticate"]) end
      end
    end)
  end

  it("answers a content type it does not take 415, as a google.rpc.Status in JSON", function()
    local r = otlp:request("POST", "/v1/traces", { body = "x", content_type = "text/plain",
      headers = { Authorization = "Bearer " .. TOKEN } })
    assert.equal(415, r.status)
    local code, message = status_of(r, "json")
    assert.equal(3, code)
    assert.matches("application/x%-protobuf or application/json", message)
  end)
end)

-- The older GenAI event form, hand-built (no maintained npm library emits
-- it on span events any more): the events and their fields as the GenAI
-- semantic conventions' event list gave them (gen_ai.system.message,
-- gen_ai.user.message, gen_ai.assistant.message, gen_ai.tool.message with
-- `content`; gen_ai.choice with `index`, `finish_reason`, `message`
-- {content, tool_calls}); gen_ai.evaluation.result with
-- gen_ai.evaluation.name, gen_ai.evaluation.score.value / .score.label,
-- gen_ai.evaluation.explanation. Source: the OpenTelemetry semantic
-- conventions, "Semantic conventions for Generative AI events"
-- (opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-events/, the event
-- form before gen_ai.input.messages / gen_ai.output.messages replaced it).
describe("the OTLP receiver with the older GenAI event form", function()
  local e, otlp
  local function s(k, v) return { key = k, value = { stringValue = v } } end
  setup(function()
    e = engine.start { config = string.format([[
ingest_token = %q
admin_token = %q
otlp = { listen = "127.0.0.1:0" }
prompt "support" { evaluators = { { "contains", options = { value = "refund" } } } }
]], TOKEN, ADMIN) }
    otlp = setmetatable({ addr = e:get("/v1/status", admin).json.otlp.listen }, engine.Engine)
  end)
  teardown(function() e:stop() end)
  local function post(path, body)
    return otlp:request("POST", path, { body = engine.json.encode(body), content_type = "application/json",
      headers = { Authorization = "Bearer " .. TOKEN } })
  end

  it("reads span events into the trace, and gen_ai.evaluation.result into its feedback", function()
    local r = post("/v1/traces", { resourceSpans = { { resource = { attributes = { s("ratchet.prompt.name", "support") } },
      scopeSpans = { { spans = { {
        traceId = string.rep("c1", 16), spanId = "00000000000000e1", name = "chat m",
        startTimeUnixNano = "1700000000000000000", endTimeUnixNano = "1700000000300000000",
        attributes = { s("gen_ai.system", "openai"), s("gen_ai.request.model", "m") },
        events = {
          { name = "gen_ai.system.message", timeUnixNano = "1700000000000000000", attributes = { s("content", "Be brief.") } },
          { name = "gen_ai.user.message", timeUnixNano = "1700000000000000000", attributes = { s("content", "charged twice") } },
          { name = "gen_ai.choice", timeUnixNano = "1700000000300000000", attributes = {
            s("finish_reason", "stop"), s("message", '{"content":"We will refund you.","tool_calls":[{"id":"t1","type":"function","function":{"name":"refund","arguments":"{\\"n\\":1}"}}]}') } },
          { name = "gen_ai.evaluation.result", timeUnixNano = "1700000000400000000", attributes = {
            s("gen_ai.evaluation.name", "helpfulness"), { key = "gen_ai.evaluation.score.value", value = { doubleValue = 0.25 } },
            s("gen_ai.evaluation.score.label", "unhelpful"), s("gen_ai.evaluation.explanation", "too short") } },
        } } } } } } } })
    assert.equal(200, r.status, r.body)
    assert.is_nil(r.json.partialSuccess)
    local t = e:get("/v1/traces/" .. string.rep("c1", 16) .. "-00000000000000e1", admin).json
    assert.same({ { role = "system", content = "Be brief." }, { role = "user", content = "charged twice" } }, t.input.messages)
    assert.equal("We will refund you.", t.output)
    assert.same({ { id = "t1", name = "refund", arguments = '{"n":1}' } }, t.tool_calls)
    assert.equal(300, t.latency_ms)
    assert.equal(1, #t.feedback)
    assert.equal(0.25, t.feedback[1].score)
    assert.equal("unhelpful", t.feedback[1].label)
    assert.equal("too short", t.feedback[1].comment)
    assert.equal("helpfulness", t.feedback[1].who)
  end)

  it("links a gen_ai.evaluation.result log record to the trace sent earlier, and rejects one for an unknown span", function()
    local function rec(sid, label)
      return { eventName = "gen_ai.evaluation.result", timeUnixNano = "1700000001000000000",
        traceId = string.rep("c1", 16), spanId = sid, attributes = { s("gen_ai.evaluation.score.label", label) } }
    end
    local r = post("/v1/logs", { resourceLogs = { { scopeLogs = { { logRecords = {
      rec("00000000000000e1", "wrong tone"), rec("00000000000000ff", "lost") } } } } } })
    assert.equal(200, r.status, r.body)
    assert.equal("1", r.json.partialSuccess.rejectedLogRecords)
    assert.matches("names a span ratchet has no trace of", r.json.partialSuccess.errorMessage)
    local t = e:get("/v1/traces/" .. string.rep("c1", 16) .. "-00000000000000e1", admin).json
    local labels = {}
    for _, f in ipairs(t.feedback) do labels[#labels + 1] = f.label end
    table.sort(labels)
    assert.same({ "unhelpful", "wrong tone" }, labels)
  end)
end)

describe("the OTLP receiver's prompt rule (otlp.prompt_rule)", function()
  local function s(k, v) return { key = k, value = { stringValue = v } } end
  local RULE = [[
return {
  prompt = function(span)
    local f = span.attributes["app.feature"]
    if f == "triage" then return { name = "support", version = 1 } end
    if f == "boom" then error("no table for " .. f) end
    if f == "bad" then return 42 end
    return false
  end,
}
]]
  local function start(rule_name, rule_text)
    local dir = engine.tmpdir()
    os.execute("mkdir -p " .. dir .. "/extra/policies")
    if rule_text then engine.write_file(dir .. "/extra/policies/" .. rule_name .. ".lua", rule_text) end
    return engine.start { dir = dir, expect_fail = rule_name == "nope" or rule_name == "no_fn", config = string.format([[
ingest_token = %q
admin_token = %q
scripts = { dirs = { "extra", %q } }
otlp = { listen = "127.0.0.1:0", prompt_rule = %q }
prompt "support" { evaluators = { { "contains", options = { value = "refund" } } } }
]], TOKEN, ADMIN, engine.root, rule_name) }
  end

  it("links the spans no attribute links by the rule's answer, and rejects those it cannot link, naming why", function()
    local e = start("my_rule", RULE)
    local otlp = setmetatable({ addr = e:get("/v1/status", admin).json.otlp.listen }, engine.Engine)
    local function sp(sid, feature)
      return { traceId = string.rep("d1", 16), spanId = sid, name = "chat", startTimeUnixNano = "1700000000000000000",
        endTimeUnixNano = "1700000000100000000", attributes = { s("gen_ai.operation.name", "chat"), s("app.feature", feature),
          s("gen_ai.output.messages", '[{"role":"assistant","parts":[{"type":"text","content":"refund"}]}]') } }
    end
    local function post(spans)
      return otlp:request("POST", "/v1/traces", { content_type = "application/json",
        headers = { Authorization = "Bearer " .. TOKEN },
        body = engine.json.encode { resourceSpans = { { scopeSpans = { { spans = spans } } } } } })
    end
    local r = post { sp("00000000000000d1", "triage"), sp("00000000000000d2", "other") }
    assert.equal(200, r.status, r.body)
    assert.equal("1", r.json.partialSuccess.rejectedSpans)
    assert.matches("linked to no prompt: no attribute links it and otlp.prompt_rule returned false", r.json.partialSuccess.errorMessage)
    local t = e:get("/v1/traces/" .. string.rep("d1", 16) .. "-00000000000000d1", admin).json
    assert.same({ name = "support", version = 1 }, t.prompt)
    r = post { sp("00000000000000d3", "boom") }
    assert.matches("otlp.prompt_rule failed on a span: .*no table for boom", r.json.partialSuccess.errorMessage)
    r = post { sp("00000000000000d4", "bad") }
    assert.matches("my_rule.prompt%(span%) must return false or { name", r.json.partialSuccess.errorMessage)
    assert.equal(404, e:get("/v1/traces/" .. string.rep("d1", 16) .. "-00000000000000d4", admin).status)
    e:stop()
  end)

  it("links the log records of a span without its content by the rule's answer for the span, in either order", function()
    local e = start("my_rule", RULE)
    local otlp = setmetatable({ addr = e:get("/v1/status", admin).json.otlp.listen }, engine.Engine)
    local function send(path, body)
      local r = otlp:request("POST", path, { content_type = "application/json",
        headers = { Authorization = "Bearer " .. TOKEN }, body = engine.json.encode(body) })
      assert.equal(200, r.status, r.body)
      assert.is_nil(r.json.partialSuccess, r.body)
    end
    local function span(tid, sid) -- the call's span, its content off (sent as log records)
      return { resourceSpans = { { scopeSpans = { { spans = { { traceId = tid, spanId = sid, name = "chat",
        startTimeUnixNano = "1700000000000000000", endTimeUnixNano = "1700000000100000000",
        attributes = { s("gen_ai.operation.name", "chat"), s("gen_ai.request.model", "m"), s("app.feature", "triage") } } } } } } } }
    end
    local function records(tid, sid) -- naming no prompt, nor a feature the rule knows
      local function rec(event, fields)
        return { traceId = tid, spanId = sid, timeUnixNano = "1700000000050000000", eventName = event,
          body = { kvlistValue = { values = fields } } }
      end
      return { resourceLogs = { { scopeLogs = { { logRecords = {
        rec("gen_ai.user.message", { s("content", "charged twice") }),
        rec("gen_ai.choice", { { key = "message", value = { kvlistValue = { values = { s("content", "a refund") } } } } }) } } } } } }
    end
    for k, first in ipairs { "span", "records" } do
      local tid, sid = string.rep("e" .. k, 16), "00000000000000e" .. k
      if first == "span" then
        send("/v1/traces", span(tid, sid))
        send("/v1/logs", records(tid, sid))
      else
        send("/v1/logs", records(tid, sid))
        send("/v1/traces", span(tid, sid))
      end
      local r = e:get("/v1/traces/" .. tid .. "-" .. sid, admin)
      assert.equal(200, r.status, first .. " first: " .. r.body)
      assert.same({ name = "support", version = 1 }, r.json.prompt)
      assert.equal("a refund", r.json.output)
      assert.equal("m", r.json.model)
    end
    e:stop()
  end)

  it("refuses to start when the rule names no policy, or one without prompt(span)", function()
    local code, log = start("nope")
    assert.equal(3, code) -- EXIT_ERROR: not started
    assert.matches("otlp.prompt_rule: .*nope", log)
    code, log = start("no_fn", "return { settings = {} }")
    assert.equal(3, code)
    assert.matches("otlp.prompt_rule: .*prompt%(span%)", log)
  end)
end)

describe("the OTLP receiver with large bodies at once", function()
  it("decodes them in turn, answering every one 200 with all its spans stored", function()
    -- bodies over 64 KiB decode in the thread pool, a bounded number at
    -- once: more than that sent at once wait their turn, none is lost
    local e = engine.start { config = string.format([[
ingest_token = %q
admin_token = %q
otlp = { listen = "127.0.0.1:0" }
prompt "support" { evaluators = { { "contains", options = { value = "refund" } } } }
]], TOKEN, ADMIN) }
    local listen = e:get("/v1/status", admin).json.otlp.listen
    local dir, n, per = engine.tmpdir(), 6, 300
    local function id(b, i) return string.rep("01", 16) .. "-" .. string.format("%016x", 0x7000000 + b * 1000 + i) end
    local sh = {}
    for b = 1, n do
      local spans = {}
      for i = 1, per do spans[i] = span { span = string.pack(">I8", 0x7000000 + b * 1000 + i), attrs = llm_attrs() } end
      local body = request(spans)
      assert.is_true(#body > 64 * 1024)
      engine.write_file(dir .. "/b" .. b, body)
      sh[#sh + 1] = string.format("curl -s -o /dev/null -w '%%{http_code}\\n' -m %d -H 'Authorization: Bearer %s' "
        .. "-H 'Content-Type: application/x-protobuf' --data-binary @%s/b%d http://%s/v1/traces > %s/code%d &",
        30 * engine.slow, TOKEN, dir, b, listen, dir, b)
    end
    os.execute(table.concat(sh, "\n") .. "\nwait")
    for b = 1, n do
      assert.equal("200\n", engine.read_file(dir .. "/code" .. b), "body " .. b)
      assert.equal(200, e:get("/v1/traces/" .. id(b, 1), admin).status, "body " .. b)
      assert.equal(200, e:get("/v1/traces/" .. id(b, per), admin).status, "body " .. b)
    end
    os.execute("rm -rf " .. dir)
    e:stop()
  end)
end)

describe("the OTLP receiver's configuration", function()
  it("is refused at load with the setting named: a bad address, an unknown key, a port already taken", function()
    local code, log = engine.start { expect_fail = true, config = 'otlp = { listen = "nope" }' }
    assert.equal(3, code)
    assert.matches("'otlp.listen' must be an IP address and port", log)
    code, log = engine.start { expect_fail = true, config = 'otlp = { lisen = "127.0.0.1:4318" }' }
    assert.equal(3, code)
    assert.matches("unknown key 'otlp.lisen'", log)
    local e = engine.start {}
    code, log = engine.start { expect_fail = true, config = string.format('otlp = { listen = %q }', e.addr) }
    e:stop()
    assert.equal(3, code)
    assert.matches("start%-up failed at the OTLP listener: otlp.listen: ", log)
  end)

  it("is off when absent: no listener, status says so", function()
    local e = engine.start {}
    local st = e:get("/v1/status").json
    assert.equal(engine.json.null, st.otlp.listen)
    e:stop()
  end)
end)
