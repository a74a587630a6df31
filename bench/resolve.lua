-- wrk script: GET /v1/prompts/bench?key=<n> (a different caller key each
-- request, so the sticky canary split is computed every time). Prints one
-- RESULT line for bench/gate.sh.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/v1/prompts/bench?key=user-" .. n)
end
local bad = 0
response = function(status, headers, body)
  if status ~= 200 then
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
