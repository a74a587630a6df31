-- The command line: help, version, exit codes, and configuration errors.
local engine = require "spec.helpers.engine"

describe("ratchet CLI", function()
  it("prints help with --help and exits 0", function()
    local code, out = engine.run("--help")
    assert.equal(0, code)
    assert.matches("usage: ratchet <command>", out)
    assert.matches("serve", out)
  end)

  it("prints each command's help", function()
    for _, cmd in ipairs { "serve", "version" } do
      local code, out = engine.run(cmd .. " --help")
      assert.equal(0, code)
      assert.matches("usage: ratchet " .. cmd, out)
      local code2, out2 = engine.run("help " .. cmd)
      assert.equal(0, code2)
      assert.equal(out, out2)
    end
  end)

  it("prints the version", function()
    local code, out = engine.run("version")
    assert.equal(0, code)
    assert.matches("^ratchet %S+ %(libuv", out)
    -- the allocator in use: mimalloc's malloc, proven by where a malloc'd block lies (sanitizer builds keep theirs)
    assert.matches(engine.sanitized and "system malloc%)\n$" or "mimalloc %d+%.%d+%.%d+%)\n$", out)
  end)

  it("rejects an unknown command with exit 3", function()
    local code, _, err = engine.run("frobnicate")
    assert.equal(3, code)
    assert.matches("no command 'frobnicate'", err)
  end)

  it("rejects an unknown option with exit 3", function()
    local code, _, err = engine.run("serve --bogus")
    assert.equal(3, code)
    assert.matches("usage: ratchet serve", err)
  end)

  it("rejects a bad --listen address", function()
    local code, _, err = engine.run("serve --listen nonsense")
    assert.equal(3, code)
    assert.matches("%-%-listen 'nonsense'", err)
  end)
end)

describe("configuration", function()
  local function refused(config)
    local code, log = engine.start { config = config, expect_fail = true }
    return code, log
  end

  it("refuses an unknown key, naming the key and the line", function()
    local code, log = refused('log_level = "info"\nlisten_adress = "127.0.0.1:1"\n')
    assert.equal(3, code)
    assert.matches("ratchet.conf:2: unknown key 'listen_adress'", log)
  end)

  it("refuses an unknown key inside limits", function()
    local code, log = refused('limits = {\n  max_body_bytes = 2048,\n  max_bodybytes = 1,\n}\n')
    assert.equal(3, code)
    assert.matches("ratchet.conf:%d: unknown key 'limits.max_bodybytes'", log)
  end)

  it("refuses a wrong type, naming key, line and types", function()
    local code, log = refused('\n\naccess_log = "yes"\n')
    assert.equal(3, code)
    assert.matches("ratchet.conf:3: 'access_log' must be true or false %(got string%)", log)
    code, log = refused('limits = { max_connections = 1.5 }')
    assert.equal(3, code)
    assert.matches("'limits.max_connections' must be an integer %(got a fractional number%)", log)
  end)

  it("refuses out-of-range values and bad enums", function()
    local code, log = refused('limits = { max_body_bytes = 10 }')
    assert.equal(3, code)
    assert.matches("'limits.max_body_bytes' must be between 1024 and", log)
    code, log = refused('log_level = "loud"')
    assert.equal(3, code)
    assert.matches("'log_level' must be one of debug, info, warn, error", log)
  end)

  it("refuses short tokens", function()
    local code, log = refused('ingest_token = "short"')
    assert.equal(3, code)
    assert.matches("'ingest_token' must be at least 16 characters", log)
    assert.not_matches("short", log:gsub("'ingest_token'", ""):gsub("16 characters", ""), 1, true)
  end)

  it("refuses a syntax error with file and line", function()
    local code, log = refused('log_level = "info"\nlimits = {')
    assert.equal(3, code)
    assert.matches("ratchet.conf:%d+:", log)
  end)

  it("has no io, os or require in the sandbox, and unknown names are errors", function()
    for _, text in ipairs { 'x = io.open("/etc/passwd")', 'os.exit(1)', 'require("socket")', 'load("return 1")' } do
      local code, log = refused(text)
      assert.equal(3, code)
      assert.matches("unknown name", log)
    end
  end)

  it("stops a runaway config", function()
    local code, log = refused('while true do end')
    assert.equal(3, code)
    assert.matches("too long", log)
  end)

  it("reads tokens from env() and file(), and settings can be read back", function()
    local dir = engine.tmpdir()
    engine.write_file(dir .. "/admin.token", "admin-token-0123456789\n")
    local e = engine.start { config = string.format([[
ingest_token = env("RATCHET_TEST_INGEST")
admin_token = file(%q)
limits = { max_body_bytes = 4096 }
log_level = log_level or "info"
]], dir .. "/admin.token"), env = { RATCHET_TEST_INGEST = "ingest-token-0123456789" } }
    local res = e:post("/v1/traces", engine.trace(), { headers = { authorization = "Bearer ingest-token-0123456789" } })
    assert.equal(200, res.status)
    res = e:get("/v1/traces", { headers = { authorization = "Bearer admin-token-0123456789" } })
    assert.equal(200, res.status)
    res = e:post("/v1/traces", string.rep(" ", 5000), { content_type = "application/json" })
    assert.equal(413, res.status)
    e:stop()
  end)
end)

describe("logs", function()
  it("writes one JSON object per line with log_format = \"json\"", function()
    local e = engine.start { config = 'log_format = "json"' }
    local id = e:get("/healthz").headers["x-request-id"]
    e:stop { keep = true }
    local n, access = 0, nil
    for line in e:log_text():gmatch("[^\n]+") do
      local obj = assert(engine.json.decode(line), "not JSON: " .. line)
      assert.is_string(obj.time)
      assert.is_string(obj.level)
      assert.is_string(obj.subsystem)
      assert.is_string(obj.message)
      if obj.subsystem == "access" and obj.message:find(id, 1, true) then access = obj end
      n = n + 1
    end
    assert.is_true(n >= 4)
    assert.is_not_nil(access)
    assert.matches("GET /healthz 200", access.message)
    os.execute("rm -rf " .. engine.shell_quote(e.dir))
  end)

  it("carries the <N> syslog priority and no timestamp when stderr is the journal", function()
    -- JOURNAL_STREAM names the device and inode of the stream systemd gave
    -- as stderr; here, the log file the engine appends to
    local dir = engine.tmpdir()
    engine.write_file(dir .. "/engine.log", "")
    local id = io.popen("stat -c %d:%i " .. engine.shell_quote(dir .. "/engine.log")):read("l")
    local e = engine.start { dir = dir, env = { JOURNAL_STREAM = id } }
    e:get("/healthz")
    e:post("/v1/traces", "nope", { content_type = "text/plain" })
    e:stop { keep = true }
    local lines = 0
    for line in e:log_text():gmatch("[^\n]+") do
      assert.matches("^<[3467]>%a+: ", line)
      lines = lines + 1
    end
    assert.is_true(lines >= 4)
    assert.matches("<4>engine: no ingest_token", e:log_text())
    assert.matches("<6>access: 127%.0%.0%.1 GET /healthz 200", e:log_text())
    -- a stream that is not the journal (another inode) gets readable text
    e = engine.start { env = { JOURNAL_STREAM = "1:1" } }
    e:stop { keep = true }
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ info  ", e:log_text())
    os.execute("rm -rf " .. engine.shell_quote(dir) .. " " .. engine.shell_quote(e.dir))
  end)

  it("refuses an unknown log_format", function()
    local code, log = engine.start { config = 'log_format = "xml"', expect_fail = true }
    assert.equal(3, code)
    assert.matches("'log_format' must be \"text\" or \"json\"", log)
  end)
end)

describe("data directory", function()
  it("refuses a second engine on the same data directory", function()
    local e = engine.start()
    local rc, _, err = engine.run(string.format("serve --listen 127.0.0.1:0 --data-dir %s", engine.shell_quote(e.data)))
    assert.equal(3, rc)
    assert.matches("in use by another ratchet", err)
    assert.equal(200, e:get("/healthz").status)
    e:stop()
  end)

  it("says so when it cannot create the data directory", function()
    local rc, _, err = engine.run("serve --listen 127.0.0.1:0 --data-dir /proc/ratchet-cannot-be-here")
    assert.equal(3, rc)
    assert.matches("cannot create the data directory", err)
  end)
end)

