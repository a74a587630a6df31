-- wrk script: POST one ~1 KB trace per request, each with a fresh id so every
-- request is a real insert (not a duplicate). BATCH=N env var sends NDJSON
-- batches of N traces instead; EXPECT=204 takes 204 as the good answer (the
-- nginx baseline, which gets the same POSTs); RESOLVE=NAME sends GET /v1/prompts/NAME?key=<n>
-- with a fresh caller key each time (bench/gate.sh). Prints one RESULT line.
local batch = tonumber(os.getenv("BATCH") or "1")
local run = os.getenv("RUN") or (tostring(os.time()) .. tostring(math.random(1e9))) -- RUN: two wrks, distinct ids
local n = 0
local pad = string.rep("x", 640)
local fmt = '{"id":"%s-%d","prompt":{"name":"ticket-triage","version":3},' ..
  '"input":{"variables":{"ticket":"I was charged twice this month and want a refund"}},' ..
  '"output":"{\\"category\\":\\"billing\\",\\"urgency\\":\\"high\\"}","model":"gpt-4o-mini",' ..
  '"latency_ms":812,"usage":{"input_tokens":412,"output_tokens":31},"metadata":{"pad":"' .. pad .. '"}}'

local headers = { ["Content-Type"] = batch > 1 and "application/x-ndjson" or "application/json" }

local resolve = os.getenv("RESOLVE")
local expected = tonumber(os.getenv("EXPECT") or "200")

local function trace_request()
  local parts = {}
  for i = 1, batch do
    n = n + 1
    parts[i] = string.format(fmt, run, n)
  end
  return wrk.format("POST", "/v1/traces", headers, table.concat(parts, "\n"))
end
if resolve then
  request = function()
    n = n + 1
    return wrk.format("GET", "/v1/prompts/" .. resolve .. "?key=user-" .. n)
  end
else
  request = trace_request
end

local bad = 0
response = function(status, headers, body)
  if status ~= expected then
    bad = bad + 1
    if bad <= 3 then io.stderr:write("unexpected status " .. status .. ": " .. body:sub(1, 200) .. "\n") end
  end
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non200=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
