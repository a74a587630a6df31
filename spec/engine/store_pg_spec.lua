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
