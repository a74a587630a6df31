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
end)
