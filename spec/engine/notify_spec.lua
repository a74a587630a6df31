-- The systemd notify protocol, against a real datagram socket the spec owns:
-- READY (only once listening), STATUS, WATCHDOG pings at the configured
-- interval, STOPPING on SIGTERM.
local engine = require "spec.helpers.engine"
local socket = require "socket"
local unix = require "socket.unix"

describe("sd_notify", function()
  local dir, path, sock
  before_each(function()
    dir = engine.tmpdir()
    path = dir .. "/notify.sock"
    sock = assert(unix.dgram())
    assert(sock:bind(path))
    sock:settimeout(0.05)
  end)
  after_each(function()
    sock:close()
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)

  -- every datagram received within `seconds`, with its arrival time
  local function collect(seconds, until_pattern)
    local got = {}
    local deadline = socket.gettime() + seconds
    while socket.gettime() < deadline do
      local msg = sock:receive()
      if msg then
        got[#got + 1] = { at = socket.gettime(), msg = msg }
        if until_pattern and msg:find(until_pattern) then break end
      end
    end
    return got
  end

  it("sends READY with a STATUS once listening, watchdog pings, and STOPPING", function()
    local e = engine.start { env = { NOTIFY_SOCKET = path, WATCHDOG_USEC = "200000" } }
    local msgs = collect(5 * engine.slow, "READY=1")
    assert.is_true(#msgs >= 1, "no notify message")
    local ready = msgs[#msgs].msg
    assert.matches("READY=1", ready)
    assert.matches("STATUS=listening on 127%.0%.0%.1:" .. e.port, ready)
    -- the engine answers by the time READY has been sent
    assert.equal(200, e:get("/healthz").status)

    local pings = {}
    for _, m in ipairs(collect(1.05)) do
      if m.msg == "WATCHDOG=1" then pings[#pings + 1] = m.at end
    end
    -- every 100 ms (half of WATCHDOG_USEC): about 10 in a second; the
    -- bounds leave room for a loaded machine, not for a wrong interval
    assert.is_true(#pings >= 5 and #pings <= 15, #pings .. " pings in 1 s")
    for i = 2, #pings do
      assert.is_true(pings[i] - pings[i - 1] < 0.4 * engine.slow, "a gap of " .. (pings[i] - pings[i - 1]) .. " s")
    end

    e:signal("TERM")
    local stopping = false
    for _, m in ipairs(collect(5 * engine.slow, "STOPPING=1")) do
      if m.msg:find("STOPPING=1", 1, true) then stopping = true end
    end
    assert.is_true(stopping)
    assert.equal(0, e:wait_exit(10 * engine.slow))
    os.execute("rm -rf " .. engine.shell_quote(e.dir))
  end)

  it("sends no watchdog pings when the watchdog is off", function()
    local e = engine.start { env = { NOTIFY_SOCKET = path } }
    collect(5 * engine.slow, "READY=1")
    for _, m in ipairs(collect(0.5)) do
      assert.are_not.equal("WATCHDOG=1", m.msg)
    end
    e:stop()
  end)

  it("sends RELOADING=1 then READY=1 around a SIGHUP reload", function()
    local e = engine.start { env = { NOTIFY_SOCKET = path } }
    collect(5 * engine.slow, "READY=1")
    e:signal("HUP")
    local msgs = collect(5 * engine.slow, "READY=1")
    local reloading, ready
    for i, m in ipairs(msgs) do
      if m.msg:find("RELOADING=1", 1, true) then
        reloading = i
        assert.matches("MONOTONIC_USEC=%d+", m.msg)
      end
      if m.msg:find("READY=1", 1, true) then ready = i end
    end
    assert.truthy(reloading, "no RELOADING=1")
    assert.truthy(ready, "no READY=1 after the reload")
    assert.is_true(reloading < ready)
    assert.matches("STATUS=listening on .* reloaded %(SIGHUP%)", msgs[ready].msg)
    e:stop()
  end)

  it("stops the watchdog pings while the event loop is blocked, and resumes after", function()
    local e = engine.start { config = "debug_endpoints = true", env = { NOTIFY_SOCKET = path, WATCHDOG_USEC = "200000" } }
    collect(5 * engine.slow, "READY=1")
    local pings = {}
    for _, m in ipairs(collect(0.5)) do
      if m.msg == "WATCHDOG=1" then pings[#pings + 1] = m.at end
    end
    local before = #pings
    assert.is_true(before >= 2, "no pings before the block")
    -- block the loop for 1.2 s (POST /v1/debug/sleep), without waiting for the answer here
    local c = e:connect()
    local body = '{"ms":1200}'
    c:send("POST /v1/debug/sleep HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " ..
      #body .. "\r\n\r\n" .. body)
    for _, m in ipairs(collect(2.0)) do
      if m.msg == "WATCHDOG=1" then pings[#pings + 1] = m.at end
    end
    local answer = engine.read_response(c)
    c:close()
    assert.equal(200, answer.status)
    local longest = 0
    for i = 2, #pings do longest = math.max(longest, pings[i] - pings[i - 1]) end
    -- pings every 100 ms, none while the loop slept 1.2 s, then again
    assert.is_true(longest >= 1.0, "the longest gap between pings was " .. longest .. " s")
    assert.is_true(#pings > before + 1, "no pings after the block")
    assert.matches("blocking the event loop for 1200 ms", e:log_text())
    e:stop()
  end)

  it("keeps STATUS= current: traces in and the evaluation backlog", function()
    local e = engine.start { env = { NOTIFY_SOCKET = path } }
    collect(5 * engine.slow, "READY=1")
    assert.equal(200, e:post("/v1/traces", { engine.trace(), engine.trace(), engine.trace() }).status)
    local seen
    for _, m in ipairs(collect(4 * engine.slow, "3 traces in")) do
      if m.msg:find("3 traces in", 1, true) then seen = m.msg end
    end
    assert.is_not_nil(seen, "no STATUS= with the traces")
    assert.matches("^STATUS=listening on 127%.0%.0%.1:" .. e.port .. "; 3 traces in, evaluation backlog 0", seen)
    e:stop()
  end)

  it("keeps the debug endpoint off unless configured, and checks its body", function()
    local e = engine.start {}
    local r = e:post("/v1/debug/sleep", { ms = 10 })
    assert.equal(404, r.status)
    assert.matches("debug_endpoints = true", r.json.error.message)
    e:stop()
    e = engine.start { config = "debug_endpoints = true" }
    for _, bad in ipairs { { ms = 0 }, { ms = 60001 }, { ms = "5" }, { ms = 5, x = 1 }, {} } do
      r = e:post("/v1/debug/sleep", bad)
      assert.equal(400, r.status)
      assert.equal("ms", r.json.error.field)
    end
    assert.equal(400, e:post("/v1/debug/sleep", "not json", { content_type = "application/json" }).status)
    assert.equal(405, e:get("/v1/debug/sleep").status)
    assert.equal(200, e:post("/v1/debug/sleep", { ms = 5 }).status)
    e:stop()
  end)
end)
