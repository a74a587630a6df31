-- The PostgreSQL store (docs/scale-out.md): its config errors at load, a database that cannot
-- be reached at start, the database restarted under ingest (no false ack, recovery), and two
-- engines on one database. The cluster is spec/helpers/postgres.lua's throwaway one.
local engine = require "spec.helpers.engine"
local pg = require "spec.helpers.postgres"
local socket = require "socket"

describe("the store setting", function()
  local function refused(config)
    return engine.start { config = config, expect_fail = true, store = "sqlite" }
  end

  it("names each mistake at load", function()
    local code, log = refused('store = { kind = "mysql" }')
    assert.equal(3, code)
    assert.matches("ratchet.conf:1: 'store.kind' must be \"sqlite\" or \"postgres\" %(got 'mysql'%)", log)
    code, log = refused('store = { kind = "postgres" }')
    assert.equal(3, code)
    assert.matches("'store.dsn' is needed with store.kind = \"postgres\"", log)
    code, log = refused('store = { dsn = "host=x" }')
    assert.equal(3, code)
    assert.matches("'store.dsn' is only for store.kind = \"postgres\"", log)
    code, log = refused('store = { kind = "postgres", dsn = 42 }')
    assert.equal(3, code)
    assert.matches("'store.dsn' must be a string %(got number%)", log)
    code, log = refused('store = { kind = "postgres", dsn = "host=x bogus_key=1" }')
    assert.equal(3, code)
    assert.matches("'store.dsn' is not a libpq connection string: invalid connection option \"bogus_key\"", log)
    code, log = refused('store = { kind = "postgres", dsn = "host=x", read_pool = 0 }')
    assert.equal(3, code)
    assert.matches("'store.read_pool' must be between 1 and 64", log)
    code, log = refused('store = { kind = "postgres", dsn = "host=x", pool = 1 }')
    assert.equal(3, code)
    assert.matches("unknown key 'store.pool'", log)
  end)

  it("refuses to start when the database cannot be reached, naming why and never the password", function()
    local port = (function()
      local s = assert(socket.bind("127.0.0.1", 0))
      local _, p = s:getsockname()
      s:close()
      return p
    end)()
    local code, log = refused(string.format(
      'store = { kind = "postgres", dsn = "host=127.0.0.1 port=%d dbname=x user=u password=hunter2-secret connect_timeout=2" }',
      port))
    assert.is_not.equal(0, code)
    assert.matches("cannot connect to PostgreSQL", log)
    assert.matches("Connection refused", log)
    assert.is_nil(log:find("hunter2", 1, true), log)
  end)
end)

describe("the PostgreSQL store #heavy", function()
  local ADMIN = "admin-token-store-0123456789ab"
  local auth = { headers = { authorization = "Bearer " .. ADMIN } }

  local function ingest(e, ids)
    local items = {}
    for _, id in ipairs(ids) do items[#items + 1] = engine.trace { id = id } end
    return e:post("/v1/traces", items)
  end

  it("answers no false ack while the database is away, says so in /readyz and status, and recovers", function()
    local e = engine.start { store = "postgres", config = string.format("admin_token = %q", ADMIN) }
    finally(pg.ensure_running)
    local acked = {}
    local function try(ids)
      local res = ingest(e, ids)
      if res.status == 200 then
        for _, item in ipairs(res.json.items) do
          if item.status == "accepted" or item.status == "duplicate" then acked[#acked + 1] = item.id end
        end
      end
      return res
    end
    for i = 1, 5 do assert.equal(200, try({ "before-" .. i }).status) end
    assert.equal(200, e:get("/readyz").status)

    pg.stop_server("fast")
    -- every write now fails: answered 503, none with a 2xx
    for i = 1, 5 do
      local res = try({ "during-" .. i })
      assert.equal(503, res.status, res.body)
    end
    local ready = e:get("/readyz")
    assert.equal(503, ready.status)
    assert.matches("the store is down", ready.body)
    local code, out = engine.run("status --url http://" .. e.addr, { RATCHET_ADMIN_TOKEN = ADMIN })
    assert.equal(3, code, out) -- something needs a look
    assert.matches("store postgres FAILING: cannot connect to PostgreSQL", out)

    pg.start_server()
    -- the writer reconnects on its own (backoff up to 5 s); ingest works again
    assert.is_truthy(engine.eventually(20 * engine.slow, function() return e:get("/readyz").status == 200 end))
    for i = 1, 5 do assert.equal(200, try({ "after-" .. i }).status) end
    for _, id in ipairs(acked) do
      assert.equal(200, e:get("/v1/traces/" .. id, auth).status, "acked trace " .. id .. " is missing")
    end
    assert.equal(10, #acked)
    -- nothing refused was stored either: a 503 means not stored
    for i = 1, 5 do assert.equal(404, e:get("/v1/traces/during-" .. i, auth).status) end
    -- the coordinator's session (non-blocking, on the event loop) lost the leadership with
    -- the server and reconnected on its own: the engine leads again
    assert.matches("no longer leads the loop: its database session was lost", e:log_text(), 1, true)
    assert.is_truthy(engine.eventually(20 * engine.slow, function()
      return e:get("/v1/status", auth).json.store.role == "leader"
    end), e:log_text())
    assert.matches("the coordinator's session is connected again", e:log_text(), 1, true)
    e:stop()
  end)

  it("notices a database gone while idle within seconds", function()
    local e = engine.start { store = "postgres" }
    finally(pg.ensure_running)
    assert.equal(200, e:get("/readyz").status)
    pg.stop_server("fast")
    assert.is_truthy(engine.eventually(10 * engine.slow, function() return e:get("/readyz").status == 503 end))
    pg.start_server()
    assert.is_truthy(engine.eventually(20 * engine.slow, function() return e:get("/readyz").status == 200 end))
    e:stop()
  end)
end)

describe("a database behind a stalling network #heavy", function()
  it("leaves the event loop responsive: /healthz keeps answering while every store call waits", function()
    pg.start()
    local dir = engine.tmpdir()
    local port = (function()
      local s = assert(socket.bind("127.0.0.1", 0))
      local _, p = s:getsockname()
      s:close()
      return tonumber(p)
    end)()
    local stall, stop = dir .. "/stall", dir .. "/stop"
    os.execute(string.format("lua5.4 spec/helpers/stall_proxy.lua %d %d %s %s 120 >/dev/null 2>&1 &", port,
      pg.port(), engine.shell_quote(stall), engine.shell_quote(stop)))
    finally(function()
      engine.write_file(stop, "")
    end)
    local _, db = pg.new_database()
    local dsn = string.format("host=127.0.0.1 port=%d dbname=%s user=postgres", port, db)
    local e = assert(engine.eventually(5, function()
      local ok, started = pcall(engine.start, { store = "postgres", dsn = dsn })
      return ok and started
    end))
    assert.equal(200, e:post("/v1/traces", engine.trace { id = "before-stall" }).status)

    local function healthz_times(n)
      local worst = 0
      for _ = 1, n do
        local t0 = socket.gettime()
        assert.equal(200, e:get("/healthz").status)
        worst = math.max(worst, socket.gettime() - t0)
      end
      return worst
    end
    local before = healthz_times(20)

    engine.write_file(stall, "")
    -- an ingest now waits on the stalled database: sent on a raw connection, its answer read later
    local c = e:connect()
    local body = engine.json.encode(engine.trace { id = "during-stall" })
    c:send("POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " .. #body
      .. "\r\n\r\n" .. body)
    -- past two beats: the coordinator's session (on the event loop) has a statement in flight too
    engine.sleep(1.2)
    local during = healthz_times(20)
    print(string.format("# healthz worst of 20: %.1f ms before the stall, %.1f ms during it", before * 1000,
      during * 1000))
    assert.is_true(during < 1 * engine.slow, string.format("healthz took %.2f s during the stall", during))
    local t0 = socket.gettime()
    assert.equal(200, e:get("/v1/status").status)
    assert.is_true(socket.gettime() - t0 < 1 * engine.slow, "status waited on the stalled database")

    os.remove(stall)
    -- the stalled ingest completes once the network moves again: never a 2xx without the commit
    c:settimeout(30 * engine.slow)
    local res = engine.read_response(c)
    c:close()
    assert.is_true(res.status == 200 or res.status == 503, res.body)
    if res.status == 200 then assert.equal(200, e:get("/v1/traces/during-stall").status) end
    e:stop({ timeout = 30 })
  end)
end)
