-- An LLM call whose content comes as log records (GenAI events) and whose
-- model, usage and latency come on its span, on different requests in
-- either order (docs/otlp.md, "The older event form and log records"):
-- each request's 200 means its part is on disk, and the trace ends up with
-- both halves, joined by trace id + span id; sending either half again
-- stores nothing twice. Bodies are OTLP JSON built here (a test fixture; the
-- real instrumentation's run is in otlp_spec.lua).
local engine = require "spec.helpers.engine"

local TOKEN = "otlp-join-ingest-token-0123456789"
local ADMIN = "otlp-join-admin-token-0123456789"
local admin = { headers = { Authorization = "Bearer " .. ADMIN } }
local json = engine.json

local function sv(s) return { stringValue = s } end
local function kv(k, v) return { key = k, value = v } end
local RESOURCE = { attributes = { kv("service.name", sv("join-app")), kv("ratchet.prompt.name", sv("support")) } }

-- the resource without ratchet.prompt.name: the prompt only on the span (span_body's on_span)
local BARE = { attributes = { kv("service.name", sv("join-app")) } }

local function span_body(tid, sid, on_span)
  local attrs = { kv("gen_ai.operation.name", sv("chat")), kv("gen_ai.system", sv("openai")),
      kv("gen_ai.request.model", sv("gpt-4o-mini")), kv("gen_ai.response.model", sv("gpt-4o-mini-2024-07-18")),
      kv("gen_ai.usage.input_tokens", { intValue = "42" }), kv("gen_ai.usage.output_tokens", { intValue = "7" }),
      kv("gen_ai.response.id", sv("chatcmpl-join")) }
  if on_span then
    for k, v in pairs(on_span) do attrs[#attrs + 1] = kv(k, v) end
  end
  return json.encode { resourceSpans = { { resource = on_span and BARE or RESOURCE, scopeSpans = { { spans = { {
    traceId = tid, spanId = sid, name = "chat gpt-4o-mini", kind = 3,
    startTimeUnixNano = "1795507200000000000", endTimeUnixNano = "1795507200812000000",
    attributes = attrs,
  } } } } } } }
end

local function logs_body(tid, sid, bare)
  local function rec(event, body)
    return { traceId = tid, spanId = sid, timeUnixNano = "1795507200800000000",
      attributes = { kv("event.name", sv(event)), kv("gen_ai.system", sv("openai")) }, body = body }
  end
  return json.encode { resourceLogs = { { resource = bare and BARE or RESOURCE, scopeLogs = { { logRecords = {
    rec("gen_ai.user.message", { kvlistValue = { values = { kv("content", sv("I was charged twice")) } } }),
    rec("gen_ai.choice", { kvlistValue = { values = { kv("index", { intValue = "0" }), kv("finish_reason", sv("stop")),
      kv("message", { kvlistValue = { values = { kv("content", sv("We will refund you.")) } } }) } } }),
  } } } } } }
end

describe("the OTLP receiver joins a span and its log records", function()
  local e, otlp
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

  local function send(path, body)
    local r = otlp:request("POST", path, { body = body, content_type = "application/json",
      headers = { Authorization = "Bearer " .. TOKEN } })
    assert.equal(200, r.status, r.body)
    assert.same({}, r.json) -- no partial_success: nothing rejected
  end
  local function metric(result, signal)
    local m = e:get("/metrics", admin).body
    return tonumber(m:match('ratchet_otlp_items_total{signal="' .. signal .. '",result="' .. result .. '"} (%d+)'))
  end
  local function check(id)
    local r = e:get("/v1/traces/" .. id, admin)
    assert.equal(200, r.status, r.body)
    local t = r.json
    assert.equal("support", t.prompt.name)
    assert.same({ role = "user", content = "I was charged twice" }, t.input.messages[1])
    assert.equal("We will refund you.", t.output)
    assert.equal("gpt-4o-mini-2024-07-18", t.model)
    assert.same({ input_tokens = 42, output_tokens = 7 }, t.usage)
    assert.equal(812, t.latency_ms)
    assert.equal("gen_ai-events", t.metadata.otel.convention)
    assert.equal("openai", t.metadata.otel.provider)
    assert.equal("chatcmpl-join", t.metadata.otel.response_id)
    assert.equal("chat gpt-4o-mini", t.metadata.otel.span_name)
    assert.equal("join-app", t.metadata.otel.service)
    return t
  end

  for _, order in ipairs { "span first", "log records first" } do
    it("into one trace, " .. order .. ", and stores nothing twice when either comes again", function()
      local tid = order == "span first" and string.rep("a1", 16) or string.rep("b2", 16)
      local sid = "00000000000000" .. (order == "span first" and "01" or "02")
      local id = tid .. "-" .. sid
      local parts_before = metric("part", "traces")
      if order == "span first" then
        send("/v1/traces", span_body(tid, sid))
        assert.equal(404, e:get("/v1/traces/" .. id, admin).status) -- no content yet: no trace, a part on disk
        send("/v1/logs", logs_body(tid, sid))
      else
        send("/v1/logs", logs_body(tid, sid))
        local r = e:get("/v1/traces/" .. id, admin)
        assert.equal(200, r.status) -- the records' trace, stored at once
        assert.is_nil(r.json.model)
        send("/v1/traces", span_body(tid, sid))
      end
      assert.equal(parts_before + 1, metric("part", "traces"))
      check(id)
      -- both halves again: the same one trace
      local dup_before = metric("duplicate", "logs")
      send("/v1/traces", span_body(tid, sid))
      send("/v1/logs", logs_body(tid, sid))
      assert.equal(dup_before + 1, metric("duplicate", "logs"))
      check(id)
      local list = e:get("/v1/traces?prompt=support&limit=100", admin).json.items
      local n = 0
      for _, t in ipairs(list) do if t.id == id then n = n + 1 end end
      assert.equal(1, n)
      -- and it was evaluated online
      local t = engine.eventually(5, function()
        local r = e:get("/v1/traces/" .. id, admin)
        if r.json.verdict ~= "unevaluated" then return r.json end
      end)
      assert.equal("pass", t.verdict)
    end)
  end

  -- docs/otlp.md, "Joining a span and its log records": the prompt named
  -- only on the span (ratchet.prompt.name as a span attribute, the records
  -- and the resource naming none) links the records' trace, in either order
  for _, order in ipairs { "span first", "log records first" } do
    it("links the records' trace to the prompt named only on the span, " .. order, function()
      local tid = order == "span first" and string.rep("c3", 16) or string.rep("d4", 16)
      local sid = "00000000000000" .. (order == "span first" and "03" or "04")
      local id = tid .. "-" .. sid
      local on_span = { ["ratchet.prompt.name"] = sv("support"), ["ratchet.prompt.version"] = { intValue = "1" } }
      if order == "span first" then
        send("/v1/traces", span_body(tid, sid, on_span))
        assert.equal(404, e:get("/v1/traces/" .. id, admin).status)
        send("/v1/logs", logs_body(tid, sid, true))
      else
        send("/v1/logs", logs_body(tid, sid, true)) -- no prompt yet: it waits for its span, not rejected
        assert.equal(404, e:get("/v1/traces/" .. id, admin).status)
        send("/v1/traces", span_body(tid, sid, on_span))
      end
      local t = check(id)
      assert.same({ name = "support", version = 1 }, t.prompt)
      -- both halves again: one trace, the same
      send("/v1/traces", span_body(tid, sid, on_span))
      send("/v1/logs", logs_body(tid, sid, true))
      check(id)
      local n = 0
      for _, x in ipairs(e:get("/v1/traces?prompt=support&limit=100", admin).json.items) do
        if x.id == id then n = n + 1 end
      end
      assert.equal(1, n)
      t = engine.eventually(5 * engine.slow, function()
        local r = e:get("/v1/traces/" .. id, admin)
        if r.json.verdict ~= "unevaluated" then return r.json end
      end)
      assert.equal("pass", t.verdict)
    end)
  end

  -- docs/otlp.md, "Joining a span and its log records": the two requests
  -- in flight at once may each read the store before the other commits
  -- (both then wait as one part); the request that reads its part again
  -- after both commits forms the trace. 24 pairs, each pair's two requests
  -- started together by curl (before the fix about half of them never
  -- formed a trace); the outcome does not depend on who wins.
  it("forms the trace when the span and its records are sent at the same instant", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local on_span = { ["ratchet.prompt.name"] = sv("support") }
    local ids, script = {}, { "set -e" }
    for i = 1, 24 do
      local tid, sid = string.format("%032x", 0xf00 + i), string.format("%016x", 0x700 + i)
      ids[i] = tid .. "-" .. sid
      local f = assert(io.open(dir .. "/span" .. i, "w")); f:write(span_body(tid, sid, on_span)); f:close()
      f = assert(io.open(dir .. "/logs" .. i, "w")); f:write(logs_body(tid, sid, true)); f:close()
      for _, kind in ipairs { { "span", "traces" }, { "logs", "logs" } } do
        script[#script + 1] = string.format("curl -s -o /dev/null -w '%%{http_code}\\n' -H 'Authorization: Bearer %s' " ..
          "-H 'Content-Type: application/json' --data-binary @%s/%s%d http://%s/v1/%s >> %s/codes &",
          TOKEN, dir, kind[1], i, otlp.addr, kind[2], dir)
      end
    end
    script[#script + 1] = "wait"
    assert(os.execute(table.concat(script, "\n")))
    local codes = assert(io.open(dir .. "/codes")):read("a")
    os.execute("rm -rf " .. dir)
    local n200 = 0
    for c in codes:gmatch("%d+") do assert.equal("200", c); n200 = n200 + 1 end
    assert.equal(48, n200)
    for _, id in ipairs(ids) do
      local t = check(id)
      assert.same({ name = "support" }, t.prompt)
    end
    -- a trace formed after the commit is evaluated online like any other
    local t = engine.eventually(5 * engine.slow, function()
      local r = e:get("/v1/traces/" .. ids[1], admin)
      if r.json.verdict ~= "unevaluated" then return r.json end
    end)
    assert.equal("pass", t.verdict)
  end)

  it("rejects the records as unlinked when their span came first and names no prompt", function()
    local tid, sid = string.rep("e5", 16), "0000000000000005"
    send("/v1/traces", span_body(tid, sid, { ["app.feature"] = sv("x") })) -- no prompt anywhere
    local r = otlp:request("POST", "/v1/logs", { body = logs_body(tid, sid, true), content_type = "application/json",
      headers = { Authorization = "Bearer " .. TOKEN } })
    assert.equal(200, r.status, r.body)
    assert.equal("1", r.json.partialSuccess.rejectedLogRecords)
    assert.matches("linked to no prompt", r.json.partialSuccess.errorMessage)
    assert.equal(404, e:get("/v1/traces/" .. tid .. "-" .. sid, admin).status)
  end)
end)
