-- Hostile requests (issue 21): nothing a client sends may crash the engine
-- or leave an error unanswered. Each case failed before its fix.
local engine = require "spec.helpers.engine"
local socket = require "socket"

-- Sends raw bytes on a fresh connection and reads one answer.
local function raw(e, bytes)
  local c = e:connect()
  c:send(bytes)
  local res, err = engine.read_response(c)
  c:close()
  return res, err
end

-- Every path form the attack tried: non-UTF-8 once percent-decoded, in
-- every route family, and raw bytes past 0x7f (http-parser lets them in).
local bad_targets = {
  { "GET", "/%ff" },
  { "GET", "/%c0%af" },
  { "GET", "/v1/traces/%ff%fe" },
  { "GET", "/v1/prompts/%ff" },
  { "GET", "/v1/prompts/%ff/versions" },
  { "GET", "/v1/prompts/%ff/history" },
  { "GET", "/v1/prompts/%ff/metrics" },
  { "POST", "/v1/prompts/%ff/optimize" },
  { "POST", "/v1/prompts/%ff/promote" },
  { "GET", "/v1/datasets/%ff" },
  { "GET", "/v1/datasets/%ff/cases" },
  { "GET", "/v1/runs/%ff" },
  { "GET", "/v1/runs/%ff/results" },
  { "GET", "/v1/loop/%ff" },
  { "GET", "/\xff\xfe" },
  { "GET", "/v1/traces?prompt=%ff" },
  { "GET", "/v1/traces?\xff=1" },
  { "GET", "/v1/traces?%ff=1" },
  { "GET", "/v1/prompts/x?var.a=%ff" },
  { "GET", "/v1/prompts/x?key=%ff%fe" },
  { "GET", "/v1/runs?prompt=%ff" },
}

local function check_all_answered(e, headers)
  for _, t in ipairs(bad_targets) do
    local res = raw(e, t[1] .. " " .. t[2] .. " HTTP/1.1\r\nHost: x\r\n" .. (headers or "") ..
      "Content-Length: 0\r\n\r\n")
    assert.is_not_nil(res, t[1] .. " " .. t[2] .. ": no answer (the engine died?)")
    assert.is_true(res.status >= 400 and res.status < 500, t[2] .. ": status " .. tostring(res.status))
    assert.is_table(res.json, t[2] .. ": the error is not JSON: " .. res.body)
    assert.is_string(res.json.error.code)
    assert.is_string(res.json.error.message)
    assert.equal(200, e:get("/healthz").status)
  end
end

describe("hostile requests", function()
  it("answers every non-UTF-8 path and query with a JSON error, without tokens", function()
    local e = engine.start()
    check_all_answered(e)
    -- a decoded path that is not UTF-8 is refused before routing, naming it
    local res = raw(e, "GET /v1/traces/%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(400, res.status)
    assert.equal("path", res.json.error.field)
    res = raw(e, "GET /v1/traces?prompt=%ff HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(400, res.status)
    assert.equal("prompt", res.json.error.field)
    e:stop()
  end)

  it("answers them with tokens configured, before and after authentication", function()
    local e = engine.start { config = 'ingest_token = "ingest-secret-0001"\nadmin_token = "admin-secret-00001"' }
    check_all_answered(e)
    check_all_answered(e, "Authorization: Bearer admin-secret-00001\r\n")
    e:stop()
  end)
end)
