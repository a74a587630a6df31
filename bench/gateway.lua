-- wrk script for bench/gateway.sh: POST one chat completion per request.
-- MODE=plain (any OpenAI-compatible server: the upstream itself, nginx's
-- proxy_pass, Portkey with PORTKEY_HOST) or MODE=managed (ratchet's gateway,
-- model "ratchet:bench" with a variable and a fresh caller id each time).
-- STREAM=1 asks for a stream. Prints one RESULT line.
local mode = os.getenv("MODE") or "plain"
local stream = os.getenv("STREAM") == "1"
local portkey = os.getenv("PORTKEY_HOST")
local n = 0
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer bench-key" }
if portkey then
  headers["x-portkey-provider"] = "openai"
  headers["x-portkey-custom-host"] = portkey
end
local s = stream and ',"stream":true' or ""
local plain = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"Classify the ticket."},' ..
  '{"role":"user","content":"I was charged twice this month"}]' .. s .. '}'
local managed = '{"model":"ratchet:bench","ratchet_variables":{"ticket":"I was charged twice this month"},' ..
  '"messages":[]' .. s .. '}'

request = function()
  n = n + 1
  if mode == "managed" then
    headers["X-Ratchet-Caller"] = "user-" .. n
    return wrk.format("POST", "/v1/chat/completions", headers, managed)
  end
  return wrk.format("POST", "/v1/chat/completions", headers, plain)
end

local bad = 0
response = function(status, headers, body)
  if status ~= 200 then
    bad = bad + 1
    if bad <= 3 then io.stderr:write("unexpected status " .. status .. ": " .. body:sub(1, 300) .. "\n") end
  end
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non200=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
