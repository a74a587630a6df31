-- bench/console_load.lua — fills an engine's store for bench/console.sh:
-- N traces of prompt "bench" (versions 1 and 2), NDJSON batches of 10,000,
-- timestamps spread over the last 23 hours, every third output not JSON (so
-- json_valid fails it), each tagged with a channel (half "channel:email"),
-- one in a thousand also "vip".
-- It waits while the evaluation backlog is over 50,000, so every trace is
-- evaluated (none dropped), and at the end until the backlog is empty.
--   lua5.4 bench/console_load.lua http://ADDR TOKEN FIRST N
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson"
local socket = require "socket"

local base, token, first, n = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])

local function backlog()
  local out = {}
  http.request { url = base .. "/v1/status", sink = ltn12.sink.table(out), headers = { authorization = "Bearer " .. token } }
  return cjson.decode(table.concat(out)).evaluation.backlog
end
local now = os.time() * 1000
local span = 23 * 3600 * 1000
local fmt = '{"id":"b-%d","prompt":{"name":"bench","version":%d},"timestamp":%d,' ..
  '"input":{"variables":{"ticket":"ticket number %d: I was charged twice this month"}},' ..
  '"output":%s,"latency_ms":%d,"usage":{"input_tokens":80,"output_tokens":20},"tags":["%s"%s]}'
local good, bad = '"{\\"category\\":\\"billing\\",\\"priority\\":\\"high\\"}"', '"category: billing"'

local sent, batch = 0, 10000
while sent < n do
  local parts = {}
  for i = 1, math.min(batch, n - sent) do
    local k = first + sent + i
    parts[i] = string.format(fmt, k, k % 10 == 0 and 2 or 1, now - span + ((sent + i) * span) // n, k,
      k % 3 == 0 and bad or good, 200 + k % 700, k % 2 == 0 and "channel:email" or "channel:chat",
      k % 1000 == 7 and ',"vip"' or "")
  end
  local body = table.concat(parts, "\n")
  local out = {}
  local ok, status = http.request {
    url = base .. "/v1/traces", method = "POST", sink = ltn12.sink.table(out),
    headers = { ["content-type"] = "application/x-ndjson", ["content-length"] = tostring(#body),
      authorization = "Bearer " .. token },
    source = ltn12.source.string(body),
  }
  if not ok or status ~= 200 then error("ingest failed: " .. tostring(status) .. " " .. table.concat(out):sub(1, 300)) end
  sent = sent + #parts
  while backlog() > 50000 do socket.sleep(0.2) end
end
while backlog() > 0 do socket.sleep(0.2) end
print("sent " .. sent)
