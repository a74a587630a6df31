-- Bearer tokens: one for ingest, one for admin and reads; health checks open.
local engine = require "spec.helpers.engine"

local INGEST = "ingest-secret-7f3a9c2e51"
local ADMIN = "admin-secret-0b8d4e6f7a"

describe("authentication", function()
  local e
  setup(function()
    e = engine.start { config = string.format("ingest_token = %q\nadmin_token = %q\n", INGEST, ADMIN) }
  end)
  teardown(function() e:stop() end)

  local function bearer(t) return { headers = { authorization = "Bearer " .. t } } end

  it("leaves health checks open", function()
    assert.equal(200, e:get("/healthz").status)
    assert.equal(200, e:get("/readyz").status)
  end)

  it("refuses ingest without a token, with 401 and WWW-Authenticate", function()
    local res = e:post("/v1/traces", engine.trace())
    assert.equal(401, res.status)
    assert.equal("unauthorized", res.json.error.code)
    assert.equal("Bearer", res.headers["www-authenticate"])
  end)

  it("refuses a wrong token and a non-bearer scheme", function()
    local res = e:post("/v1/traces", engine.trace(), bearer(INGEST .. "x"))
    assert.equal(401, res.status)
    assert.matches("not valid", res.json.error.message)
    res = e:post("/v1/traces", engine.trace(), { headers = { authorization = "Basic dXNlcjpwYXNz" } })
    assert.equal(401, res.status)
    assert.equal("authorization", res.json.error.field)
  end)

  it("lets the ingest token ingest but not read", function()
    assert.equal(200, e:post("/v1/traces", engine.trace { id = "auth-1" }, bearer(INGEST)).status)
    local res = e:get("/v1/traces/auth-1", bearer(INGEST))
    assert.equal(403, res.status)
    assert.matches("only ingest", res.json.error.message)
  end)

  it("lets the admin token read and ingest", function()
    assert.equal(200, e:get("/v1/traces/auth-1", bearer(ADMIN)).status)
    assert.equal(200, e:get("/v1/traces", bearer(ADMIN)).status)
    assert.equal(200, e:post("/v1/feedback", { trace_id = "auth-1", thumbs = "up" }, bearer(ADMIN)).status)
    assert.equal(401, e:get("/v1/traces").status)
  end)

  it("never writes a token into the log", function()
    e:post("/v1/traces", engine.trace(), bearer(INGEST .. "x"))
    local log = e:log_text()
    assert.is_nil(log:find(INGEST, 1, true))
    assert.is_nil(log:find(ADMIN, 1, true))
  end)
end)

describe("without tokens", function()
  it("serves loopback clients and says so at start-up", function()
    local e = engine.start()
    assert.equal(200, e:post("/v1/traces", engine.trace()).status)
    assert.equal(200, e:get("/v1/traces").status)
    assert.matches("no ingest_token is configured: only loopback clients may ingest", e:log_text())
    assert.matches("no admin_token is configured: only loopback clients may read", e:log_text())
    e:stop()
  end)
end)
