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

describe("hostile HTTP framing", function()
  local e
  setup(function()
    e = engine.start { config = 'ingest_token = "ingest-secret-0001"\nadmin_token = "admin-secret-00001"' }
  end)
  teardown(function() e:stop() end)

  it("refuses bare LF line endings with 400", function()
    for _, req in ipairs {
      "GET /healthz HTTP/1.1\nHost: x\n\n",
      "GET /healthz HTTP/1.1\r\nHost: x\n\r\n",
      "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\n\r\n",
    } do
      local res = raw(e, req)
      assert.equal(400, res.status, req)
      assert.matches("CRLF", res.json.error.message)
      assert.equal("close", res.headers.connection)
    end
  end)

  it("refuses obsolete line folding with 400", function()
    local res = raw(e, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n")
    assert.equal(400, res.status)
    assert.matches("folding", res.json.error.message)
    res = raw(e, "GET /healthz HTTP/1.1\r\nHost: x\r\n\tX-A: a\r\n\r\n")
    assert.equal(400, res.status)
  end)

  it("answers HTTP versions other than 1.0 and 1.1 with 505", function()
    for _, v in ipairs { "1.9", "2.0", "0.9", "9.9" } do
      local res = raw(e, "GET /healthz HTTP/" .. v .. "\r\nHost: x\r\n\r\n")
      assert.is_not_nil(res, v)
      assert.equal(505, res.status, v)
      assert.equal("http_version_not_supported", res.json.error.code)
    end
    local res = raw(e, "GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
    assert.equal(200, res.status)
  end)

  it("refuses a request with two Authorization headers (or two of another single field)", function()
    local res = raw(e, "GET /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-secret-00001\r\n" ..
      "Authorization: Bearer nope\r\n\r\n")
    assert.equal(400, res.status)
    assert.equal("authorization", res.json.error.field)
    res = raw(e, "GET /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n" ..
      "Authorization: Bearer admin-secret-00001\r\n\r\n")
    assert.equal(400, res.status)
    res = raw(e, "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
      "Content-Type: application/x-ndjson\r\nContent-Length: 2\r\n\r\n{}")
    assert.equal(400, res.status)
    assert.equal("content-type", res.json.error.field)
    res = raw(e, "GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
    assert.equal(400, res.status)
  end)

  it("answers a request whose 100 Continue is still being written, and the ones behind it", function()
    -- found by fuzz_http: the 100 Continue's write completing after the answer
    -- was taken for the answer's, and the parser was resumed twice
    local c = e:connect()
    c:send("POST /v1/x%ff HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n" ..
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" .. "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{bad")
    assert.equal("HTTP/1.1 100 Continue", c:receive("*l"))
    assert.equal("", c:receive("*l"))
    assert.equal(400, engine.read_response(c).status)
    assert.equal(200, engine.read_response(c).status)
    assert.equal(200, engine.read_response(c).status)
    assert.equal(400, engine.read_response(c).status)
    c:close()
    assert.equal(200, e:get("/healthz").status)
  end)

  it("answers pipelined requests behind a 400 for a malformed JSON body", function()
    local c = e:connect()
    local bad = "{not json"
    c:send("POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ingest-secret-0001\r\n" ..
      "Content-Type: application/json\r\nContent-Length: " .. #bad .. "\r\n\r\n" .. bad ..
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" ..
      "POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ingest-secret-0001\r\n" ..
      "Content-Type: application/json\r\nContent-Length: 0\r\n\r\n" ..
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    local r1 = engine.read_response(c)
    assert.equal(400, r1.status)
    assert.equal("malformed_json", r1.json.error.code)
    assert.equal("keep-alive", r1.headers.connection)
    assert.equal(200, engine.read_response(c).status)
    assert.equal(400, engine.read_response(c).status) -- the empty body
    assert.equal(200, engine.read_response(c).status)
    c:close()
  end)
end)

-- A client from `from` (another loopback address: 127.0.0.2 ...).
local function connect_from(e, from)
  local c = assert(socket.tcp())
  c:settimeout(10 * engine.slow)
  assert(c:bind(from, 0))
  assert(c:connect(e.host, e.port))
  return c
end

describe("connection limits", function()
  it("caps the connections of one address, so it cannot lock others out", function()
    local e = engine.start { config = "limits = { max_connections = 40, max_connections_per_address = 10 }" }
    local held = {}
    for i = 1, 10 do held[i] = connect_from(e, "127.0.0.5") end
    socket.sleep(0.1)
    local extra = connect_from(e, "127.0.0.5")
    local res = engine.read_response(extra)
    assert.equal(503, res.status)
    assert.equal("too_many_connections", res.json.error.code)
    assert.matches("127.0.0.5", res.json.error.message)
    extra:close()
    -- another address is served meanwhile
    local other = connect_from(e, "127.0.0.6")
    other:send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(200, engine.read_response(other).status)
    other:close()
    for _, c in ipairs(held) do c:close() end
    socket.sleep(0.2)
    local again = connect_from(e, "127.0.0.5")
    again:send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(200, engine.read_response(again).status)
    again:close()
    assert.matches("ratchet_http_connections_refused_total [1-9]", e:get("/metrics").body)
    e:stop()
  end)

  it("closes the longest-idle connection when the cap is reached, so a new client gets in", function()
    local e = engine.start { config = "limits = { max_connections = 20, max_connections_per_address = 5 }" }
    local idle = {}
    for a = 1, 4 do
      for _ = 1, 5 do idle[#idle + 1] = connect_from(e, "127.0.0." .. (10 + a)) end
    end
    socket.sleep(0.2)
    -- 20 idle connections from 4 addresses fill the cap; a new client still gets an answer
    for i = 1, 3 do
      local c = connect_from(e, "127.0.0.20")
      c:send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
      local res = engine.read_response(c)
      assert.equal(200, res.status, "attempt " .. i)
      c:close()
    end
    -- the oldest idle connections were the ones closed
    idle[1]:settimeout(2 * engine.slow)
    local _, err = idle[1]:receive(1)
    assert.equal("closed", err)
    for _, c in ipairs(idle) do c:close() end
    e:stop()
  end)
end)
