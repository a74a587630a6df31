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

-- A real non-loopback client: a network namespace joined to this one by a
-- veth pair (198.18.0.0/15, the benchmarking range, private to this test).
-- Needs root and iproute2; reported as pending otherwise.
describe("a non-loopback client", function()
  local tag = tostring(math.random(1000, 9999))
  local ns, host_if, ns_if = "ratchet-" .. tag, "rtv" .. tag .. "a", "rtv" .. tag .. "b"
  local host_ip, ns_ip = "198.18.7.1", "198.18.7.2"
  local ready = false

  local function sh(cmd) return os.execute(cmd .. " >/dev/null 2>&1") end

  setup(function()
    ready = sh("ip netns add " .. ns)
      and sh(string.format("ip link add %s type veth peer name %s", host_if, ns_if))
      and sh(string.format("ip link set %s netns %s", ns_if, ns))
      and sh(string.format("ip addr add %s/30 dev %s && ip link set %s up", host_ip, host_if, host_if))
      and sh(string.format("ip netns exec %s sh -c 'ip addr add %s/30 dev %s && ip link set %s up && ip link set lo up'",
        ns, ns_ip, ns_if, ns_if))
      and true or false
  end)
  teardown(function()
    sh("ip netns del " .. ns)
    sh("ip link del " .. host_if)
  end)

  -- status code of a request made from inside the namespace
  local function from_outside(e, method, path, token)
    local auth = token and ("-H " .. engine.shell_quote("Authorization: Bearer " .. token)) or ""
    local body = method == "POST" and ("-H 'Content-Type: application/json' -d " ..
      engine.shell_quote(engine.json.encode(engine.trace()))) or ""
    local p = io.popen(string.format("ip netns exec %s curl -s -o /dev/null -m 5 -w '%%{http_code}' -X %s %s %s http://%s:%d%s",
      ns, method, auth, body, host_ip, e.port, path))
    local code = p:read("a")
    p:close()
    return tonumber(code)
  end

  it("is refused (403) where no token is configured", function()
    if not ready then return pending("needs root and ip netns") end
    local e = engine.start { listen = host_ip .. ":0" }
    assert.equal(403, from_outside(e, "POST", "/v1/traces"))
    assert.equal(403, from_outside(e, "GET", "/v1/traces"))
    assert.equal(200, from_outside(e, "GET", "/healthz"))
    e:stop()
  end)

  it("is served with the right token", function()
    if not ready then return pending("needs root and ip netns") end
    local e = engine.start { listen = host_ip .. ":0",
      config = string.format("ingest_token = %q\nadmin_token = %q\n", INGEST, ADMIN) }
    assert.equal(200, from_outside(e, "POST", "/v1/traces", INGEST))
    assert.equal(401, from_outside(e, "POST", "/v1/traces"))
    assert.equal(200, from_outside(e, "GET", "/v1/traces", ADMIN))
    assert.equal(403, from_outside(e, "GET", "/v1/traces", INGEST))
    e:stop()
  end)
end)
