-- bench/otlp_bodies.lua — writes the request bodies of bench/otlp.sh: N
-- batches of 512 LLM calls with GenAI content, each call in three forms
-- carrying the same content: ratchet's own JSON (POST /v1/traces on the API
-- port), OTLP protobuf and OTLP JSON (current GenAI semantic conventions,
-- POST /v1/traces on the OTLP listener). Every call has its own ids, so every
-- request is a real durable insert.
-- Usage: lua5.4 bench/otlp_bodies.lua OUTDIR BATCHES [PER_BATCH]
local cjson = require "cjson"
local dir, batches, per = arg[1], tonumber(arg[2] or 50), tonumber(arg[3] or 512)

-- the protobuf writer (a benchmark fixture, as in spec/engine/otlp_hostile_spec.lua)
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
local function lf(num, p) return varint(num << 3 | 2) .. varint(#p) .. p end
local function f64(num, v) return varint(num << 3 | 1) .. string.pack("<I8", v) end
local function kv_s(k, v) return lf(9, lf(1, k) .. lf(2, lf(1, v))) end
local function kv_i(k, v) return lf(9, lf(1, k) .. lf(2, varint(3 << 3) .. varint(v))) end
local function jkv_s(k, v) return { key = k, value = { stringValue = v } } end
local function jkv_i(k, v) return { key = k, value = { intValue = tostring(v) } } end

local function write(name, text)
  local f = assert(io.open(dir .. "/" .. name, "wb"))
  f:write(text)
  f:close()
end

local T0 = 1795507200000 -- ms
for b = 1, batches do
  local native, pb, js = {}, {}, {}
  for i = 1, per do
    local n = (b - 1) * per + i
    local trace_hex, span_hex = string.format("%032x", n), string.format("%016x", n)
    local ticket = "Order " .. n .. ": I was charged twice for my subscription this month and want the duplicate refunded."
    local answer = '{"category":"billing","urgency":"high","reply":"We are sorry: the duplicate charge of order ' .. n ..
      ' will be refunded within 3 days."}'
    local system = "You triage support tickets. Answer with JSON: category, urgency, reply."
    local start_ns, end_ns = (T0 + n) * 1000000, (T0 + n) * 1000000 + 812000000
    -- ratchet's own form
    native[i] = cjson.encode {
      id = trace_hex .. "-" .. span_hex, prompt = { name = "triage", version = 1 },
      input = { variables = { ticket = ticket }, messages = { { role = "system", content = system }, { role = "user", content = ticket } } },
      output = answer, model = "gpt-4o-mini-2024-07-18", latency_ms = 812,
      usage = { input_tokens = 412, output_tokens = 31 }, timestamp = T0 + n,
      metadata = { session_id = "s-" .. n, otel = { provider = "openai", operation = "chat" } } }
    -- the same call as GenAI attributes
    local input = cjson.encode { { role = "user", parts = { { type = "text", content = ticket } } } }
    local output = cjson.encode { { role = "assistant", parts = { { type = "text", content = answer } }, finish_reason = "stop" } }
    local sys = cjson.encode { { type = "text", content = system } }
    local vars = cjson.encode { ticket = ticket }
    pb[i] = lf(2, lf(1, string.pack(">I8I8", 0, n)) .. lf(2, string.pack(">I8", n)) .. lf(5, "chat gpt-4o-mini")
      .. f64(7, start_ns) .. f64(8, end_ns)
      .. kv_s("gen_ai.operation.name", "chat") .. kv_s("gen_ai.provider.name", "openai")
      .. kv_s("gen_ai.request.model", "gpt-4o-mini") .. kv_s("gen_ai.response.model", "gpt-4o-mini-2024-07-18")
      .. kv_i("gen_ai.usage.input_tokens", 412) .. kv_i("gen_ai.usage.output_tokens", 31)
      .. kv_s("gen_ai.system_instructions", sys) .. kv_s("gen_ai.input.messages", input)
      .. kv_s("gen_ai.output.messages", output) .. kv_s("gen_ai.conversation.id", "s-" .. n)
      .. kv_s("ratchet.prompt.name", "triage") .. kv_i("ratchet.prompt.version", 1) .. kv_s("ratchet.prompt.variables", vars))
    js[i] = { traceId = trace_hex, spanId = span_hex, name = "chat gpt-4o-mini", kind = 3,
      startTimeUnixNano = tostring(start_ns), endTimeUnixNano = tostring(end_ns), attributes = {
        jkv_s("gen_ai.operation.name", "chat"), jkv_s("gen_ai.provider.name", "openai"),
        jkv_s("gen_ai.request.model", "gpt-4o-mini"), jkv_s("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
        jkv_i("gen_ai.usage.input_tokens", 412), jkv_i("gen_ai.usage.output_tokens", 31),
        jkv_s("gen_ai.system_instructions", sys), jkv_s("gen_ai.input.messages", input),
        jkv_s("gen_ai.output.messages", output), jkv_s("gen_ai.conversation.id", "s-" .. n),
        jkv_s("ratchet.prompt.name", "triage"), jkv_i("ratchet.prompt.version", 1), jkv_s("ratchet.prompt.variables", vars) } }
  end
  local res = lf(1, lf(9, lf(1, "service.name") .. lf(2, lf(1, "bench"))))
  write(string.format("native-%04d", b), "[" .. table.concat(native, ",") .. "]")
  write(string.format("proto-%04d", b), lf(1, res .. lf(2, lf(1, lf(1, "bench")) .. table.concat(pb))))
  write(string.format("json-%04d", b), cjson.encode { resourceSpans = { { resource = { attributes = { jkv_s("service.name", "bench") } },
    scopeSpans = { { scope = { name = "bench" }, spans = js } } } } })
end
