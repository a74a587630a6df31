-- The web console (docs/console.md): its static files as the engine serves
-- them (types, ETag and 304, gzip, the Content-Security-Policy), the viewer
-- scope through the API, and every page in headless Chromium through the
-- demo's loop (spec/clients/console.mjs; #heavy: it runs in `make test`).
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local node = require "spec.helpers.node"

local ADMIN = "admin-token-console-7f3a9c21"
local VIEWER = "viewer-token-console-4b8e2d55"
local INGEST = "ingest-token-console-1c6f0a93"

local function bearer(tok, more)
  local h = { authorization = "Bearer " .. tok }
  for k, v in pairs(more or {}) do h[k] = v end
  return { headers = h }
end

describe("the console's static files", function()
  local e
  setup(function()
    e = engine.start { config = string.format("admin_token = %q\nviewer_token = %q\ningest_token = %q\n", ADMIN, VIEWER, INGEST) }
  end)
  teardown(function() e:stop() end)

  it("serves the page with its type, an ETag, no-cache and a strict Content-Security-Policy, with no token", function()
    local r = e:get("/console/")
    assert.equal(200, r.status)
    assert.equal("text/html; charset=utf-8", r.headers["content-type"])
    assert.matches("^\"%x+\"$", r.headers["etag"])
    assert.equal("no-cache", r.headers["cache-control"])
    assert.equal("nosniff", r.headers["x-content-type-options"])
    local csp = r.headers["content-security-policy"]
    assert.matches("default%-src 'none'", csp)
    assert.matches("script%-src 'self';", csp)
    assert.matches("frame%-ancestors 'none'", csp)
    assert.is_nil(csp:find("unsafe", 1, true))
    assert.matches("<script type=\"module\" src=\"app.js\">", r.body)
    assert.equal(engine.read_file(engine.root .. "/console/index.html"), r.body)
    local js = e:get("/console/app.js")
    assert.equal("text/javascript; charset=utf-8", js.headers["content-type"])
    assert.equal("text/css; charset=utf-8", e:get("/console/style.css").headers["content-type"])
  end)

  it("serves Chart.js from Debian's libjs-chart.js", function()
    local r = e:get("/console/chart.js")
    assert.equal(200, r.status)
    assert.equal(engine.read_file("/usr/share/javascript/chart.js/chart.min.js"), r.body)
  end)

  it("answers 304 to If-None-Match with the ETag, and the file to another", function()
    local etag = e:get("/console/app.js").headers["etag"]
    local r = e:get("/console/app.js", { headers = { ["if-none-match"] = etag } })
    assert.equal(304, r.status)
    assert.equal("", r.body)
    assert.equal(etag, r.headers["etag"])
    r = e:get("/console/app.js", { headers = { ["if-none-match"] = "\"0000\", W/" .. etag } })
    assert.equal(304, r.status)
    r = e:get("/console/app.js", { headers = { ["if-none-match"] = "\"0000\"" } })
    assert.equal(200, r.status)
  end)

  it("gzips for a client that takes it, and not for one that refuses it", function()
    local plain = e:get("/console/app.js")
    local r = e:get("/console/app.js", { headers = { ["accept-encoding"] = "br, gzip" } })
    assert.equal("gzip", r.headers["content-encoding"])
    assert.equal("Accept-Encoding", r.headers["vary"])
    assert.is_true(#r.body < #plain.body / 2)
    local dir = engine.tmpdir()
    engine.write_file(dir .. "/a.gz", r.body)
    local f = io.popen("gzip -dc " .. dir .. "/a.gz")
    assert.equal(plain.body, f:read("a"))
    f:close()
    r = e:get("/console/app.js", { headers = { ["accept-encoding"] = "gzip;q=0, identity" } })
    assert.is_nil(r.headers["content-encoding"])
    assert.equal(plain.body, r.body)
  end)

  it("answers 404 for a file it does not have, and never reads outside its folder", function()
    for _, p in ipairs { "/console/nope.js", "/console/..%2fREADME.md", "/console/%2e%2e", "/console/.gitignore" } do
      local r = e:get(p)
      assert.equal(404, r.status, p)
      assert.equal("not_found", r.json.error.code, p)
    end
    assert.equal(405, e:post("/console/app.js", {}).status)
  end)
end)

describe("the viewer scope", function()
  local e
  setup(function()
    e = engine.start { config = string.format("admin_token = %q\nviewer_token = %q\ningest_token = %q\n", ADMIN, VIEWER, INGEST) }
    assert.equal(201, e:post("/v1/prompts", { name = "p" }, bearer(ADMIN)).status)
  end)
  teardown(function() e:stop() end)

  it("reads every GET of the API", function()
    local code, out = engine.run("routes --json")
    assert.equal(0, code)
    local wrong = {}
    for _, r in ipairs(engine.json.decode(out).routes) do
      if r.method == "GET" and r.scope ~= "none" and r.scope ~= "ingest" and r.scope ~= "metrics" and r.scope ~= "gateway" then
        if r.scope ~= "viewer" then wrong[#wrong + 1] = r.path .. " has scope " .. r.scope end
        local res = e:get((r.path:gsub("{[^}]+}", "p")), bearer(VIEWER))
        if res.status == 401 or res.status == 403 then wrong[#wrong + 1] = r.path .. ": " .. res.status end
      end
    end
    assert.same({}, wrong)
    assert.equal(200, e:get("/v1/prompts", bearer(VIEWER)).status)
  end)

  it("is refused every action, 403 naming the admin token, and changes nothing", function()
    local code, out = engine.run("routes --json")
    assert.equal(0, code)
    local wrong = {}
    for _, r in ipairs(engine.json.decode(out).routes) do
      if r.method ~= "GET" and r.scope == "admin" and r.path ~= "/v1/debug/sleep" then
        local res = e:request(r.method, (r.path:gsub("{[^}]+}", "p")), { body = {}, headers = bearer(VIEWER).headers })
        if res.status ~= 403 or not res.json.error.message:find("read%-only %(viewer%)") then
          wrong[#wrong + 1] = r.method .. " " .. r.path .. ": " .. res.status
        end
      end
    end
    assert.same({}, wrong)
    local r = e:post("/v1/prompts/p/pin", { reason = "x" }, bearer(VIEWER))
    assert.equal(403, r.status)
    assert.equal("this token is read-only (viewer): actions need the admin token", r.json.error.message)
    assert.is_false(e:get("/v1/prompts", bearer(ADMIN)).json.items[1].pinned)
    -- nor ingest, nor the metrics scrape
    assert.equal(403, e:post("/v1/traces", engine.trace {}, bearer(VIEWER)).status)
    assert.equal(403, e:get("/metrics", bearer(VIEWER)).status)
  end)

  it("says which scope a token opens (GET /v1/session), and refuses others", function()
    assert.same({ scope = "viewer", actions = false }, e:get("/v1/session", bearer(VIEWER)).json)
    assert.same({ scope = "admin", actions = true }, e:get("/v1/session", bearer(ADMIN)).json)
    assert.equal(401, e:get("/v1/session").status)
    assert.equal(401, e:get("/v1/session", bearer("not-a-token-at-all-000")).status)
    local r = e:get("/v1/session", bearer(INGEST))
    assert.equal(403, r.status)
    assert.equal(400, e:get("/v1/session?x=1", bearer(ADMIN)).status)
  end)

  it("on an engine with a viewer token and no admin token, a loopback viewer is still a viewer", function()
    local e2 = engine.start { config = string.format("viewer_token = %q\n", VIEWER) }
    assert.same({ scope = "viewer", actions = false }, e2:get("/v1/session", bearer(VIEWER)).json)
    assert.equal(403, e2:post("/v1/prompts", { name = "q" }, bearer(VIEWER)).status)
    -- with no token, reads need the viewer token that is set; actions stay open to loopback (no admin token)
    assert.equal(401, e2:get("/v1/session").status)
    assert.equal(201, e2:post("/v1/prompts", { name = "q" }).status)
    e2:stop()
  end)

  it("a viewer token shorter than 16 characters is refused at load time, naming the setting", function()
    local code, log = engine.start { config = "viewer_token = \"short\"\n", expect_fail = true }
    assert.are_not.equal(0, code)
    assert.matches("viewer_token", log)
  end)
end)

describe("the prompt's pass rate over time (GET /v1/prompts/{name}/series)", function()
  local e
  setup(function()
    e = engine.start { config = "" }
    assert.equal(201, e:post("/v1/prompts", { name = "p" }).status)
  end)
  teardown(function() e:stop() end)

  it("answers one point per bucket, null where nothing was evaluated", function()
    local r = e:get("/v1/prompts/p/series?buckets=4&since=2026-01-01T00:00:00Z&until=2026-01-01T04:00:00Z")
    assert.equal(200, r.status, r.body)
    assert.equal(4, #r.json.points)
    assert.equal(3600000, r.json.bucket_ms)
    assert.equal("2026-01-01T01:00:00.000Z", r.json.points[2].t)
    assert.equal(engine.json.null, r.json.points[1].pass_rate)
    assert.equal(0, r.json.points[1].negative)
  end)

  it("tags each GET's answer with an ETag, and answers 304 to it until the answer changes (the console's polling)", function()
    local r = e:get("/v1/prompts")
    local etag = r.headers["etag"]
    assert.matches("^\"%x+\"$", etag)
    r = e:get("/v1/prompts", { headers = { ["if-none-match"] = etag } })
    assert.equal(304, r.status)
    assert.equal("", r.body)
    assert.equal(200, e:post("/v1/prompts/p/pin", { reason = "x" }).status)
    r = e:get("/v1/prompts", { headers = { ["if-none-match"] = etag } })
    assert.equal(200, r.status)
    assert.are_not.equal(etag, r.headers["etag"])
    assert.is_true(r.json.items[1].pinned)
    assert.is_nil(e:post("/v1/prompts/p/unpin", {}).headers["etag"]) -- an action's answer has none
    -- answers from the thread pool too
    local t = e:get("/v1/traces")
    assert.equal(304, e:get("/v1/traces", { headers = { ["if-none-match"] = t.headers["etag"] } }).status)
  end)

  it("refuses what it does not take, naming the parameter", function()
    local r = e:get("/v1/prompts/p/series?buckets=0")
    assert.equal(400, r.status)
    assert.equal("buckets", r.json.error.field)
    assert.equal("buckets", e:get("/v1/prompts/p/series?buckets=97").json.error.field)
    assert.equal("until", e:get("/v1/prompts/p/series?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z").json.error.field)
    assert.equal("since", e:get("/v1/prompts/p/series?since=yesterday").json.error.field)
    assert.equal(404, e:get("/v1/prompts/nope/series").status)
    assert.equal("x", e:get("/v1/prompts/p/series?x=1").json.error.field)
  end)
end)

describe("the console in headless Chromium", function()
  it("shows the demo's loop on every page, approves the held winner, and gives a viewer no button #heavy", function()
    local f = assert(io.open(engine.root .. "/demo/model.lua"))
    local model = f:read("a")
    f:close()
    local fake = fake_llm.start { model = model }
    f = assert(io.open(engine.root .. "/demo/ratchet.conf"))
    local conf = f:read("a")
    f:close()
    conf = conf:gsub("  loop = {\n", "  loop = {\n    require_approval = true,\n", 1)
    assert.matches("require_approval = true", conf)
    local e = engine.start {
      config = string.format("admin_token = %q\nviewer_token = %q\n", ADMIN, VIEWER) .. conf,
      env = { RATCHET_DEMO_ROOT = engine.root, RATCHET_DEMO_BASE_URL = fake:url("/v1"), RATCHET_DEMO_MODEL = "target",
        RATCHET_DEMO_OPTIMIZER_MODEL = "optimizer" },
    }
    local dir = engine.tmpdir()
    local out_dir = engine.root .. "/build/console-screenshots"
    os.execute("mkdir -p " .. engine.shell_quote(out_dir))
    -- the demo's application: traffic, then it waits on the loop (the approval comes from the browser)
    assert(os.execute(string.format("cd %s && RATCHET_DEMO_TOKEN=%s timeout %d lua5.4 demo/run.lua %s 1 > %s/demo.out 2>&1 &",
      engine.shell_quote(engine.root), ADMIN, 200 * engine.slow, engine.shell_quote("http://" .. e.addr), dir)))
    local code, out, err = node.run("console.mjs", { BASE_URL = "http://" .. e.addr, ADMIN_TOKEN = ADMIN,
      VIEWER_TOKEN = VIEWER, PROMPT = "ticket-triage", OUT_DIR = out_dir, WAIT_MS = tostring(90000 * engine.slow) }, nil, 240)
    local demo
    engine.eventually(30, function()
      demo = engine.read_file(dir .. "/demo.out") or ""
      return demo:find("[result]", 1, true) ~= nil
    end)
    -- ratchet eval --html against the same engine: the same compare page, self-contained, opened from disk
    local rcode, rout, rerr = engine.run(string.format("eval --url %s --prompt ticket-triage --dataset ticket-golden " ..
      "--baseline 1 --candidate 3 -q --html %s/report.html", engine.shell_quote("http://" .. e.addr), dir),
      { RATCHET_ADMIN_TOKEN = ADMIN })
    e:stop()
    fake:stop()
    assert.equal(0, code, "console.mjs failed:\n" .. out .. "\n" .. err .. "\n--- demo:\n" .. (demo or ""))
    assert.is_truthy(rcode == 0 or rcode == 2, "ratchet eval: " .. tostring(rcode) .. "\n" .. rout .. rerr)
    local pcode, pout, perr = node.run("console_report.mjs", { REPORT = dir .. "/report.html", SHOT = out_dir .. "/eval-report.png" })
    assert.equal(0, pcode, "console_report.mjs failed:\n" .. pout .. "\n" .. perr)
    assert.matches("console ok", out)
    assert.matches("%[promote%]", demo)
    for _, name in ipairs { "overview", "prompt", "loop", "loop-awaiting-approval", "run-compare", "traces", "trace", "datasets", "viewer-prompt-phone", "eval-report" } do
      assert.is_truthy(engine.read_file(out_dir .. "/" .. name .. ".png"), name .. ".png")
    end
  end)
end)

describe("the trace explorer's filters (GET /v1/traces?evaluator=&feedback=&q=)", function()
  local e
  setup(function()
    e = engine.start { config = 'prompt "ticket-triage" { evaluators = { "json_valid" } }\n' }
    local items = {}
    for i = 1, 30 do
      items[i] = engine.trace { id = "t" .. i, output = i % 3 == 0 and "not json " .. i or '{"n":' .. i .. '}' }
    end
    local r = e:post("/v1/traces", items)
    assert.equal(200, r.status, r.body)
    assert.equal(200, e:post("/v1/feedback", { trace_id = "t4", thumbs = "down" }).status)
    assert.equal(200, e:post("/v1/feedback", { trace_id = "t5", thumbs = "up" }).status)
    engine.eventually(10, function()
      return #e:get("/v1/traces?evaluator=json_valid&limit=100").json.items == 10
    end)
  end)
  teardown(function() e:stop() end)

  local function ids(path)
    local r = e:get(path)
    assert.equal(200, r.status, r.body)
    local out = {}
    for _, t in ipairs(r.json.items) do out[#out + 1] = t.id end
    table.sort(out)
    return out, r.json
  end

  it("keeps the traces an evaluator failed, with negative feedback, with any feedback, or holding a text", function()
    local failed = ids("/v1/traces?evaluator=json_valid&limit=100")
    assert.equal(10, #failed)
    assert.same({}, ids("/v1/traces?evaluator=no_such_evaluator"))
    assert.same({ "t4" }, ids("/v1/traces?feedback=negative"))
    assert.same({ "t4", "t5" }, ids("/v1/traces?feedback=any"))
    assert.same({ "t21" }, ids("/v1/traces?q=not%20json%2021"))
    assert.same({ "t21" }, ids("/v1/traces?evaluator=json_valid&q=21&prompt=ticket-triage"))
  end)

  it("pages through a filter with the cursor, each trace once", function()
    local seen, cursor, pages = {}, nil, 0
    repeat
      local _, j = ids("/v1/traces?evaluator=json_valid&limit=3" .. (cursor and ("&cursor=" .. cursor) or ""))
      for _, t in ipairs(j.items) do
        assert.is_nil(seen[t.id], t.id)
        seen[t.id] = true
      end
      cursor = j.next_cursor ~= engine.json.null and j.next_cursor or nil
      pages = pages + 1
    until not cursor
    assert.equal(4, pages)
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.equal(10, n)
  end)

  it("ratchet traces shows the same page, with the filters and the next page's cursor", function()
    local url = engine.shell_quote("http://" .. e.addr)
    local code, out, err = engine.run("traces --url " .. url .. " --evaluator json_valid --text 'not json 2' --limit 2")
    assert.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(3, #lines, out)
    assert.matches("t27%s+ticket%-triage v1%s+fail%s+not json 27", lines[1])
    assert.matches("t24%s+ticket%-triage v1%s+fail%s+not json 24", lines[2])
    local cursor = lines[3]:match("^next page: %-%-cursor (%S+)$")
    assert.is_truthy(cursor, lines[3])
    code, out = engine.run("traces --url " .. url .. " --evaluator json_valid --text 'not json 2' --cursor " .. cursor)
    assert.equal(0, code)
    assert.matches("t21 ", out)
    assert.is_nil(out:find("next page", 1, true))
    code, out = engine.run("traces --url " .. url .. " --feedback negative --json")
    assert.equal(0, code)
    assert.equal("t4", engine.json.decode(out).items[1].id)
    code, out, err = engine.run("traces --url " .. url .. " --feedback maybe")
    assert.equal(3, code)
    assert.matches("%-%-feedback must be negative or any", err)
    code, out, err = engine.run("traces --url " .. url .. " --since yesterday")
    assert.equal(3, code)
    assert.matches("since", err)
  end)

  it("refuses a filter it cannot take, naming it", function()
    assert.equal("feedback", e:get("/v1/traces?feedback=yes").json.error.field)
    assert.equal("evaluator", e:get("/v1/traces?evaluator=").json.error.field)
    assert.equal("q", e:get("/v1/traces?q=").json.error.field)
    assert.equal("q", e:get("/v1/traces?q=" .. string.rep("x", 300)).json.error.field)
  end)
end)
