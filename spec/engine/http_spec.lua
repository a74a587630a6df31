-- The HTTP/1.1 server: keep-alive, pipelining, chunked bodies, limits,
-- timeouts for slow clients, the connection cap, and JSON errors.
local engine = require "spec.helpers.engine"
local socket = require "socket"

local function trace_body(id)
  return engine.json.encode(engine.trace { id = id })
end

local function post_raw(path, body, extra)
  return "POST " .. path .. " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" .. (extra or "") ..
    "Content-Length: " .. #body .. "\r\n\r\n" .. body
end

describe("HTTP server", function()
  local e
  setup(function()
    e = engine.start { config = [[
limits = {
  max_header_bytes = 16384,
  max_body_bytes = 65536,
  header_timeout_ms = 1500,
  body_timeout_ms = 1500,
  max_connections = 20,
}
]] }
  end)
  teardown(function() e:stop() end)

  it("answers JSON with a request id", function()
    local res = e:get("/healthz")
    assert.equal(200, res.status)
    assert.equal("ok", res.json.status)
    assert.matches("^%x+$", res.headers["x-request-id"])
    assert.equal(200, e:get("/readyz").status)
  end)

  it("answers unknown paths and methods with JSON errors", function()
    local res = e:get("/nope")
    assert.equal(404, res.status)
    assert.equal("not_found", res.json.error.code)
    assert.equal(res.headers["x-request-id"], res.json.error.request_id)
    res = e:request("DELETE", "/v1/traces")
    assert.equal(405, res.status)
    assert.equal("method_not_allowed", res.json.error.code)
    assert.equal("GET, POST", res.headers["allow"])
  end)

  it("keeps a connection alive across requests", function()
    local c = e:connect()
    for i = 1, 3 do
      c:send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
      local res = engine.read_response(c)
      assert.equal(200, res.status)
      assert.equal("keep-alive", res.headers.connection)
    end
    c:close()
  end)

  it("answers pipelined requests in order", function()
    local c = e:connect()
    c:send(post_raw("/v1/traces", trace_body("pipe-1")) .. "GET /v1/traces/pipe-1 HTTP/1.1\r\nHost: x\r\n\r\n" ..
      post_raw("/v1/traces", trace_body("pipe-2")) .. "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    local r1 = engine.read_response(c)
    local r2 = engine.read_response(c)
    local r3 = engine.read_response(c)
    local r4 = engine.read_response(c)
    assert.equal(200, r1.status)
    assert.equal("pipe-1", r1.json.items[1].id)
    assert.equal(200, r2.status)
    assert.equal("pipe-1", r2.json.id) -- the trace written by the request before it
    assert.equal("pipe-2", r3.json.items[1].id)
    assert.equal(404, r4.status)
    c:close()
  end)

  it("answers every pipelined request of a client that half-closes after sending", function()
    local c = e:connect()
    c:send(post_raw("/v1/traces", trace_body("half-close-1")) .. "GET /v1/traces/half-close-1 HTTP/1.1\r\nHost: x\r\n\r\n")
    c:shutdown("send")
    local r1 = engine.read_response(c)
    local r2 = engine.read_response(c)
    assert.equal(200, r1.status)
    assert.equal(200, r2.status)
    assert.equal("half-close-1", r2.json.id)
    local _, err = c:receive("*l")
    assert.equal("closed", err)
    c:close()
  end)

  it("accepts a chunked body", function()
    local body = trace_body("chunked-1")
    local half = math.floor(#body / 2)
    local c = e:connect()
    c:send("POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    c:send(string.format("%x\r\n%s\r\n", half, body:sub(1, half)))
    c:send(string.format("%x\r\n%s\r\n0\r\n\r\n", #body - half, body:sub(half + 1)))
    local res = engine.read_response(c)
    assert.equal(200, res.status)
    assert.equal("accepted", res.json.items[1].status)
    c:close()
  end)

  it("refuses a body over the limit with 413 (Content-Length)", function()
    local res = e:post("/v1/traces", string.rep("x", 70000), { content_type = "application/json" })
    assert.equal(413, res.status)
    assert.equal("body_too_large", res.json.error.code)
  end)

  it("refuses a chunked body over the limit with 413", function()
    local c = e:connect()
    c:send("POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    local chunk = string.rep("x", 30000)
    for _ = 1, 3 do c:send(string.format("%x\r\n%s\r\n", #chunk, chunk)) end
    local res = engine.read_response(c)
    assert.equal(413, res.status)
    c:close()
  end)

  it("refuses headers over the limit with 431", function()
    local c = e:connect()
    c:send("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " .. string.rep("a", 17000) .. "\r\n\r\n")
    local res = engine.read_response(c)
    assert.equal(431, res.status)
    assert.equal("headers_too_large", res.json.error.code)
    c:close()
  end)

  it("answers malformed HTTP with 400 and closes", function()
    local c = e:connect()
    c:send("GARBAGE\r\n\r\n")
    local res = engine.read_response(c)
    assert.equal(400, res.status)
    assert.equal("bad_request", res.json.error.code)
    assert.equal("close", res.headers.connection)
    c:close()
  end)

  it("times out a slowloris client with 408", function()
    local c = e:connect()
    local start = socket.gettime()
    local request = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " .. string.rep("a", 100)
    local res
    for i = 1, #request do
      local ok = c:send(request:sub(i, i))
      if not ok then break end
      c:settimeout(0.2)
      local line = c:receive("*l")
      if line then
        res = { status = tonumber(line:match("^HTTP/1%.1 (%d+)")) }
        break
      end
    end
    local elapsed = socket.gettime() - start
    assert.is_not_nil(res, "the server never timed the client out")
    assert.equal(408, res.status)
    assert.is_true(elapsed >= 1.4 and elapsed < 10, "timed out after " .. elapsed .. " s")
    c:close()
  end)

  it("times out a body that stops arriving with 408", function()
    local c = e:connect()
    c:send("POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    local res = engine.read_response(c)
    assert.equal(408, res.status)
    assert.matches("body", res.json.error.message)
    c:close()
  end)

  it("keeps nothing of a request whose client disconnects mid-body", function()
    local c = e:connect()
    local body = trace_body("half-sent")
    c:send("POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " .. #body ..
      "\r\n\r\n" .. body:sub(1, 20))
    c:close()
    socket.sleep(0.2)
    assert.equal(404, e:get("/v1/traces/half-sent").status)
    assert.equal(200, e:get("/healthz").status)
    assert.matches("closed the connection in the middle of a request", e:log_text())
  end)

  it("answers 503 past the connection cap and recovers", function()
    -- connections in the middle of a request (idle ones would make room: hostile_http_spec)
    local conns = {}
    for i = 1, 20 do
      conns[i] = e:connect()
      conns[i]:send("GET /healthz HTTP/1.1\r\n")
    end
    socket.sleep(0.1)
    local extra = e:connect()
    local res = engine.read_response(extra)
    assert.equal(503, res.status)
    assert.equal("too_many_connections", res.json.error.code)
    extra:close()
    for _, c in ipairs(conns) do c:close() end
    socket.sleep(0.2)
    assert.equal(200, e:get("/healthz").status)
  end)

  it("writes one access-log line per request", function()
    local res = e:get("/healthz?probe=accesslog")
    local id = res.headers["x-request-id"]
    local n = 0
    for line in e:log_text():gmatch("[^\n]+") do
      if line:find("id=" .. id, 1, true) then
        n = n + 1
        assert.matches("access: 127%.0%.0%.1 GET /healthz%?probe=accesslog 200", line)
      end
    end
    assert.equal(1, n)
  end)
end)
