-- The API's one route table (engine/api/api.c, printed by `ratchet routes`)
-- against the docs' endpoint tables, both ways; the same for the OTLP
-- listener's table (engine/api/api_otlp.c) and docs/otlp.md; the engine
-- answering as its tables say (scopes, 404, 405 with Allow); GET
-- /v1/version; and no circle of calls between the files of engine/api/.
local engine = require "spec.helpers.engine"

local INGEST = "ingest-token-5d1e9a7c33"
local ADMIN = "admin-token-8b2f4c6e10"
local METRICS = "metrics-token-3a7d9e1f42"
local VIEWER = "viewer-token-6c0b8a2e77"
local GATEWAY = "gateway-key-6c0b1e9d77"

-- the pages whose endpoint tables are checked
local DOCS = { "docs/api.md", "docs/gate.md", "docs/loop.md", "docs/gateway.md", "docs/console.md", "README.md" }
local ORDER = { "GET", "POST", "PUT", "DELETE" } -- the order an Allow header names them

-- the API's routes as t.routes, the OTLP listener's as t.otlp, all as t.all
local function routes()
  local code, out, err = engine.run("routes --json")
  assert.equal(0, code, err)
  local t = engine.json.decode(out)
  t.all, t.routes, t.otlp = t.routes, {}, {}
  for _, r in ipairs(t.all) do
    if r.listener == "otlp" then t.otlp[#t.otlp + 1] = r else t.routes[#t.routes + 1] = r end
  end
  return t
end

local function key(method, path) return method .. " " .. path end

-- A table row's cells; `\|` inside a cell (code spans) is a literal bar.
local function cells(line)
  local out = {}
  local bars = line:gsub("\\|", "\1"):match("^%s*|(.*)$")
  for c in bars:gmatch("([^|]*)|") do
    out[#out + 1] = (c:gsub("\1", "|"):match("^%s*(.-)%s*$"))
  end
  return out
end

-- "GET|POST /v1/prompts/{name}/promote|canary?x=" -> every method x path it names
local function expand(span, where)
  local methods, path, rest = span:match("^([A-Z|]+) (/[%w%-%._/{}|]*)(.*)$")
  if not methods then return nil end
  assert(rest == "" or rest:match("^%?"), where .. ": `" .. span .. "` is not METHOD /path[?query]: write each route out")
  local paths = { "" }
  for seg in path:gmatch("/([^/]*)") do
    local next = {}
    for _, p in ipairs(paths) do
      for alt in seg:gmatch("[^|]+") do next[#next + 1] = p .. "/" .. alt end
      if seg == "" then next[#next + 1] = p .. "/" end -- a trailing slash (`GET /console/`)
    end
    paths = next
  end
  local out = {}
  for m in methods:gmatch("[^|]+") do
    for _, p in ipairs(paths) do out[#out + 1] = { method = m, path = p } end
  end
  return out
end

-- Every route a page's endpoint tables name (a table whose first column is
-- `endpoint` and that has a `scope` column): { method, path, scope, row, where }.
local function documented(file)
  local text = assert(engine.read_file(engine.root .. "/" .. file), file)
  local out, header, n = {}, nil, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if not line:match("^|") then
      header = nil
    elseif not header then
      header = cells(line)
      header.scope = nil
      for i, h in ipairs(header) do if h:lower() == "scope" then header.scope = i end end
      header.endpoints = header[1]:lower() == "endpoint" and header.scope
    elseif header.endpoints and not line:match("^|%s*%-%-%-") then
      local row = cells(line)
      local where = file .. ":" .. n
      local scope = row[header.scope]:gsub("`", "")
      local found = false
      for span in row[1]:gmatch("`([^`]+)`") do
        for _, r in ipairs(expand(span, where) or {}) do
          r.scope, r.row, r.where = scope, row, where
          out[#out + 1] = r
          found = true
        end
      end
      assert(found, where .. ": an endpoint row that names no `METHOD /path`")
    end
  end
  return out
end

-- GitHub's anchors of a page's headings
local function anchors(file)
  local out = {}
  for h in ("\n" .. engine.read_file(engine.root .. "/" .. file)):gmatch("\n#+ ([^\n]+)") do
    out[(h:lower():gsub("[^%w%- _]", ""):gsub(" ", "-"))] = true
  end
  return out
end

describe("ratchet routes", function()
  it("prints the route table, as text and as JSON, with no engine running", function()
    local code, out = engine.run("routes")
    assert.equal(0, code)
    local t = routes()
    assert.equal("v1", t.api)
    local lines = 0
    for _ in out:gmatch("[^\n]+") do lines = lines + 1 end
    assert.equal(#t.all, lines)
    for _, r in ipairs(t.all) do
      assert.is_truthy(r.listener == "api" or r.listener == "otlp", r.listener)
    end
    assert.is_true(#t.otlp > 0, "no OTLP listener route")
    assert.matches("\nPOST%s+/v1/logs%s+ingest%s+docs/otlp.md%s+%(on the OTLP listener, otlp.listen%)\n", out)
    assert.matches("\nGET%s+/v1/prompts/{name}%s+ingest%s+docs/gate.md\n", out)
    assert.matches("\nPOST%s+/v1/debug/sleep%s+admin%s+docs/api.md%s+%(only with debug_endpoints = true%)", out)
    local seen = {}
    for _, r in ipairs(t.routes) do
      assert.is_nil(seen[key(r.method, r.path)], "declared twice: " .. key(r.method, r.path))
      seen[key(r.method, r.path)] = true
      assert.is_truthy(({ none = 1, ingest = 1, admin = 1, metrics = 1, gateway = 1, viewer = 1 })[r.scope], r.scope)
      assert.is_truthy(engine.read_file(engine.root .. "/" .. r.doc), r.doc)
    end
  end)

  it("refuses what it does not take, exit 3", function()
    local code, _, err = engine.run("routes --jsn")
    assert.equal(3, code)
    assert.matches("unknown option '%-%-jsn'", err)
    code, _, err = engine.run("routes extra")
    assert.equal(3, code)
    assert.matches("unexpected argument 'extra'", err)
    code = engine.run("routes --help")
    assert.equal(0, code)
  end)
end)

describe("the docs' endpoint tables", function()
  local t, docs
  setup(function()
    t = routes()
    docs = {}
    for _, f in ipairs(DOCS) do docs[f] = documented(f) end
  end)

  it("name only routes that exist, with the scope they have", function()
    local by = {}
    for _, r in ipairs(t.routes) do by[key(r.method, r.path)] = r end
    local wrong = {}
    for _, f in ipairs(DOCS) do
      assert.is_true(#docs[f] > 0, f .. " has no endpoint table")
      for _, d in ipairs(docs[f]) do
        local r = by[key(d.method, d.path)]
        if not r then
          wrong[#wrong + 1] = d.where .. ": " .. key(d.method, d.path) .. " is no route"
        elseif r.scope ~= d.scope then
          wrong[#wrong + 1] = string.format("%s: %s has scope %s, documented %s", d.where, key(d.method, d.path),
            r.scope, d.scope)
        end
      end
    end
    assert.same({}, wrong)
  end)

  it("name every route: in api.md's index (with its page), on its page, in the README", function()
    local in_doc = {}
    for _, f in ipairs(DOCS) do
      in_doc[f] = {}
      for _, d in ipairs(docs[f]) do in_doc[f][key(d.method, d.path)] = d end
    end
    local missing = {}
    for _, r in ipairs(t.routes) do
      local k = key(r.method, r.path)
      for _, f in ipairs { "docs/api.md", r.doc, "README.md" } do
        if not in_doc[f][k] then missing[#missing + 1] = k .. " is not in " .. f end
      end
      -- the index links where the route is described, as the table says
      local idx = in_doc["docs/api.md"][k]
      if idx then
        local target = (idx.row[3] or ""):match("%]%(([^)]+)%)") or ""
        local page, anchor = target:match("^([%w%-%.]*)#([%w%-_]+)$")
        local file = (page == nil or page == "") and "docs/api.md" or page == "README.md" and page or "docs/" .. page
        if file ~= r.doc then
          missing[#missing + 1] = k .. ": api.md's index links '" .. target .. "', the table says " .. r.doc
        elseif not anchors(file)[anchor] then
          missing[#missing + 1] = k .. ": api.md's index links '" .. target .. "', which is no heading of " .. file
        end
      end
      -- a route api.md describes has its own heading there
      if r.doc == "docs/api.md" then
        local text = engine.read_file(engine.root .. "/docs/api.md")
        local heading = false
        for h in text:gmatch("\n## ([^\n]+)") do
          for span in (h .. ","):gmatch("%s*([^,]+),") do
            if span == k then heading = true end
          end
        end
        if not heading then missing[#missing + 1] = k .. " has no '## " .. k .. "' heading in docs/api.md" end
      end
    end
    assert.same({}, missing)
  end)
end)

describe("the OTLP listener's route table", function()
  it("is docs/otlp.md's endpoint table, both ways, with the same scopes", function()
    local t = routes()
    local doc = documented("docs/otlp.md")
    local by, wrong = {}, {}
    for _, r in ipairs(t.otlp) do
      by[key(r.method, r.path)] = r
      if r.doc ~= "docs/otlp.md" then wrong[#wrong + 1] = key(r.method, r.path) .. " names " .. r.doc end
    end
    local seen = {}
    for _, d in ipairs(doc) do
      local r = by[key(d.method, d.path)]
      seen[key(d.method, d.path)] = true
      if not r then
        wrong[#wrong + 1] = d.where .. ": " .. key(d.method, d.path) .. " is no route of the OTLP listener"
      elseif r.scope ~= d.scope then
        wrong[#wrong + 1] = string.format("%s: %s has scope %s, documented %s", d.where, key(d.method, d.path),
          r.scope, d.scope)
      end
    end
    for k in pairs(by) do
      if not seen[k] then wrong[#wrong + 1] = k .. " (OTLP listener) is not in docs/otlp.md" end
    end
    assert.same({}, wrong)
  end)

  it("is what the listener answers: its scope's token, 405 with Allow, 404 for any other path", function()
    local e = engine.start { config = string.format("ingest_token = %q\nadmin_token = %q\notlp = { listen = \"127.0.0.1:0\" }\n",
      INGEST, ADMIN) }
    local otlp = setmetatable({ addr = e:get("/v1/status", { headers = { authorization = "Bearer " .. ADMIN } }).json.otlp.listen },
      engine.Engine)
    local t = routes()
    local wrong = {}
    for _, r in ipairs(t.otlp) do
      local k = key(r.method, r.path)
      local res = otlp:request(r.method, r.path, { body = "{}", content_type = "application/json" })
      if res.status ~= 401 then wrong[#wrong + 1] = k .. " without a token: " .. res.status end
      res = otlp:request(r.method, r.path, { body = "{}", content_type = "application/json",
        headers = { authorization = "Bearer " .. INGEST } })
      if res.status ~= 200 then wrong[#wrong + 1] = k .. " with its token: " .. res.status .. " " .. res.body end
      res = otlp:request("GET", r.path, { headers = { authorization = "Bearer " .. INGEST } })
      if res.status ~= 405 or res.headers["allow"] ~= "POST" then
        wrong[#wrong + 1] = "GET " .. r.path .. ": " .. res.status .. ", Allow " .. tostring(res.headers["allow"])
      end
    end
    local res = otlp:request("POST", "/v1/metrics", { body = "{}", content_type = "application/json",
      headers = { authorization = "Bearer " .. INGEST } })
    if res.status ~= 404 then wrong[#wrong + 1] = "POST /v1/metrics: " .. res.status end
    e:stop()
    assert.same({}, wrong)
  end)
end)

describe("the engine answers as its route table says", function()
  local e, t
  setup(function()
    t = routes()
    e = engine.start { config = string.format("ingest_token = %q\nadmin_token = %q\nmetrics_token = %q\nviewer_token = %q\ndebug_endpoints = true\n"
      .. "gateway = { keys = { %q } }\n", INGEST, ADMIN, METRICS, VIEWER, GATEWAY) }
  end)
  teardown(function() e:stop() end)

  local function bearer(tok) return { headers = { authorization = "Bearer " .. tok } } end
  -- the console's files are served with no token: a file it has stands for its {file}
  local function concrete(pattern)
    if pattern == "/console/{file}" then return "/console/app.js" end
    return (pattern:gsub("{[^}]+}", "x"))
  end
  local function matches(pattern, path)
    local p, q = {}, {}
    for s in pattern:gmatch("/([^/]*)") do p[#p + 1] = s end
    for s in path:gmatch("/([^/]*)") do q[#q + 1] = s end
    if #p ~= #q then return false end
    for i = 1, #p do
      if not p[i]:match("^{") and p[i] ~= q[i] then return false end
    end
    return true
  end

  it("asks each route's scope for its token, and takes it", function()
    local own = { ingest = INGEST, admin = ADMIN, metrics = METRICS, gateway = GATEWAY, viewer = VIEWER }
    local wrong = {}
    for _, r in ipairs(t.routes) do
      local path, k = concrete(r.path), key(r.method, r.path)
      local res = e:request(r.method, path)
      if r.scope == "none" then
        if res.status ~= 200 then wrong[#wrong + 1] = k .. " without a token: " .. res.status end
      else
        if res.status ~= 401 then wrong[#wrong + 1] = k .. " without a token: " .. res.status end
        -- another scope's token: 403 saying what that token may do
        local other = r.scope == "metrics" and INGEST or METRICS
        res = e:request(r.method, path, bearer(other))
        if res.status ~= 403 then wrong[#wrong + 1] = k .. " with another scope's token: " .. res.status end
        -- its own token (an empty request: refused for what it lacks, never for the token or the route)
        res = e:request(r.method, path, bearer(own[r.scope]))
        if res.status == 401 or res.status == 403 or res.status == 405 or
          (res.json and res.json.error and res.json.error.message:match("^no endpoint")) then
          wrong[#wrong + 1] = k .. " with its own token: " .. res.status .. " " .. res.body
        end
      end
    end
    assert.same({}, wrong)
  end)

  it("answers a method a path does not take 405, with Allow listing those it takes", function()
    local wrong = {}
    for _, r in ipairs(t.routes) do
      local path = concrete(r.path)
      local takes = {}
      for _, o in ipairs(t.routes) do
        if matches(o.path, path) then takes[o.method] = true end
      end
      local allow = {}
      for _, m in ipairs(ORDER) do if takes[m] then allow[#allow + 1] = m end end
      allow = table.concat(allow, ", ")
      local res = e:request("PATCH", path, bearer(ADMIN))
      if res.status ~= 405 or res.headers["allow"] ~= allow or res.json.error.code ~= "method_not_allowed" then
        wrong[#wrong + 1] = string.format("PATCH %s: %d, Allow %s (want %s)", path, res.status,
          tostring(res.headers["allow"]), allow)
      end
    end
    assert.same({}, wrong)
  end)

  it("answers a path no route has 404 in the API's error shape, before any token", function()
    for _, path in ipairs { "/v1/nope", "/v1/traces/x/y", "/v1/prompts/", "/v1/prompts/x/versions/1/x", "/v2/traces" } do
      local res = e:get(path)
      assert.equal(404, res.status, path)
      assert.equal("not_found", res.json.error.code)
      assert.equal("no endpoint at " .. path, res.json.error.message)
      assert.equal(res.headers["x-request-id"], res.json.error.request_id)
    end
    local res = e:get("/v1/traces/" .. ("a"):rep(1100), bearer(ADMIN))
    assert.equal(414, res.status)
    assert.equal("uri_too_long", res.json.error.code)
  end)
end)

describe("GET /v1/version", function()
  it("names the engine's and the API's versions, with no token", function()
    local e = engine.start { config = string.format("admin_token = %q\ningest_token = %q\n", ADMIN, INGEST) }
    local res = e:get("/v1/version")
    assert.equal(200, res.status)
    local _, out = engine.run("version")
    assert.equal(out:match("^ratchet (%S+)"), res.json.engine)
    assert.equal("v1", res.json.api)
    if res.json.commit ~= nil then assert.matches("^%x+$", res.json.commit) end
    assert.equal(res.json.engine, e:get("/v1/status", { headers = { authorization = "Bearer " .. ADMIN } }).json.version)
    local post = e:post("/v1/version", {})
    assert.equal(405, post.status)
    assert.equal("GET", post.headers["allow"])
    e:stop()
  end)
end)

describe("the files of engine/api/", function()
  -- a file uses another when it names a function the other defines
  local function uses()
    local files = {}
    local p = io.popen("cd " .. engine.shell_quote(engine.root) .. " && ls engine/api/*.c")
    for f in p:lines() do files[#files + 1] = f end
    p:close()
    local text, defs = {}, {}
    for _, f in ipairs(files) do
      text[f] = engine.read_file(engine.root .. "/" .. f):gsub("/%*.-%*/", ""):gsub("//[^\n]*", "")
      for line in text[f]:gmatch("[^\n]+") do
        local name = line:match("^[%a_][%w_ %*]-%f[%w_]([%a_][%w_]*)%(")
        if name and not line:match("^static") and not line:match("^typedef") and not line:match(";%s*$") then
          defs[name] = f
        end
      end
    end
    local edges = {}
    for _, f in ipairs(files) do
      edges[f] = {}
      for name, where in pairs(defs) do
        if where ~= f and text[f]:find("%f[%w_]" .. name .. "%f[^%w_]") then edges[f][where] = name end
      end
    end
    return files, edges
  end

  it("call one another in one direction only: no circle, and api_request.c calls none", function()
    local files, edges = uses()
    assert.same({}, edges["engine/api/api_request.c"])
    local state, circle = {}, nil
    local function visit(f, path)
      if state[f] == "done" or circle then return end
      if state[f] == "open" then circle = table.concat(path, " -> ") return end
      state[f] = "open"
      for g in pairs(edges[f]) do
        path[#path + 1] = g .. " (" .. edges[f][g] .. ")"
        visit(g, path)
        path[#path] = nil
      end
      state[f] = "done"
    end
    for _, f in ipairs(files) do visit(f, { f }) end
    assert.is_nil(circle)
    -- the check sees what it should: the dispatcher uses an area, an area the helpers
    assert.is_not_nil(edges["engine/api/api.c"]["engine/api/api_ingest.c"])
    assert.is_not_nil(edges["engine/api/api_ingest.c"]["engine/api/api_request.c"])
  end)
end)
