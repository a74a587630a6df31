-- `ratchet serve` fails one way (engine/main.c, serve_steps): each start-up
-- step made to fail in turn, with the real engine. Every failure names the
-- step and why, exits 3 promptly, and undoes what the steps before it did:
-- no sanitizer report (the helper checks the log, under `make asan` too), no
-- file descriptor or thread left after the teardown (the engine checks
-- /proc/self itself and names what it finds), no stray files, and the data
-- directory's lock free for the next engine.
local engine = require "spec.helpers.engine"
local socket = require "socket"

local function exists(path) return os.execute("test -e " .. engine.shell_quote(path)) == true end

local function listing(dir)
  local p = io.popen("ls -A " .. engine.shell_quote(dir) .. " 2>/dev/null")
  local names = {}
  for l in p:lines() do names[#names + 1] = l end
  p:close()
  table.sort(names)
  return names
end

local function is_root()
  local p = io.popen("id -u")
  local uid = p:read("l")
  p:close()
  return uid == "0"
end

-- Starts an engine that must fail; returns its log. Checks what every
-- failure must show: exit status 3, soon; the step named; every step undone;
-- nothing left behind in the process (the engine reports leftovers as
-- "teardown ..." errors); no sanitizer report (the helper).
local function fails_at(step, opts)
  local t0 = socket.gettime()
  local code, log = engine.start(opts)
  local took = socket.gettime() - t0
  assert.equal(3, code, "exit status; log:\n" .. log)
  assert.is_true(took < 5 * engine.slow, string.format("took %.1f s to fail", took))
  assert.matches("error%s+engine: start%-up failed at the " .. step:gsub("%p", "%%%0") .. ": ", log)
  assert.matches("not started: every step undone; exit status 3", log, 1, true)
  assert.is_nil(log:find("teardown", 1, true), "the teardown left something:\n" .. log)
  return log
end

local function cleanup(dir) os.execute("rm -rf " .. engine.shell_quote(dir)) end

describe("ratchet serve start-up", function()
  it("a configuration error: the file and line, before anything is created", function()
    local dir = engine.tmpdir()
    local log = fails_at("configuration", { dir = dir, expect_fail = true, config = 'log_level = "info"\nlisten_adress = "x"' })
    assert.matches("ratchet.conf:2: unknown key 'listen_adress'", log, 1, true)
    assert.is_false(exists(dir .. "/data"), "the data directory was created")
    cleanup(dir)
  end)

  it("a listen address that is not an address, in the config or on the command line", function()
    local dir = engine.tmpdir()
    local log = fails_at("configuration", { dir = dir, expect_fail = true, config = 'listen = "localhost:80"' })
    assert.matches("'listen' must be an IP address and port", log, 1, true)
    log = fails_at("configuration", { dir = dir, expect_fail = true, listen = "nowhere.invalid:7700" })
    assert.matches("--listen 'nowhere.invalid:7700' is not an address", log, 1, true)
    assert.is_false(exists(dir .. "/data"))
    cleanup(dir)
  end)

  it("a data directory that cannot be created", function()
    local dir = engine.tmpdir()
    engine.write_file(dir .. "/file", "not a directory\n")
    local log = fails_at("data directory", { dir = dir, expect_fail = true, data_dir = dir .. "/file/data" })
    assert.matches("cannot create the data directory '" .. dir .. "/file/data': Not a directory", log, 1, true)
    assert.same({ "engine.log", "exit", "file", "pid", "ratchet.conf" }, listing(dir))
    cleanup(dir)
  end)

  it("a data directory that cannot be written (it used to say 'in use by another ratchet')", function()
    local dir = engine.tmpdir()
    local data = dir .. "/data"
    if is_root() then
      data = "/sys/kernel" -- sysfs: no file can be created there, even by root
    else
      assert(os.execute("mkdir -m 0555 " .. engine.shell_quote(data)))
    end
    local log = fails_at("data directory", { dir = dir, expect_fail = true, data_dir = data })
    assert.matches("cannot write in the data directory '" .. data .. "' (creating " .. data .. "/ratchet.lock: Permission denied)",
      log, 1, true)
    assert.is_nil(log:find("in use by another", 1, true))
    os.execute("chmod 0755 " .. engine.shell_quote(dir .. "/data") .. " 2>/dev/null")
    cleanup(dir)
  end)

  it("the store locked by another engine: names its pid, leaves it serving and its lock alone", function()
    local first = engine.start()
    local lock = engine.read_file(first.data .. "/ratchet.lock")
    assert.equal(tostring(first.pid) .. "\n", lock)
    local dir = engine.tmpdir()
    local log = fails_at("data directory", { dir = dir, expect_fail = true, data_dir = first.data })
    assert.matches("the data directory '" .. first.data .. "' is in use by another ratchet (pid " .. first.pid .. " holds "
      .. first.data .. "/ratchet.lock)", log, 1, true)
    assert.equal(200, first:get("/healthz").status)
    assert.equal(lock, engine.read_file(first.data .. "/ratchet.lock"))
    first:stop()
    cleanup(dir)
  end)

  it("a store that cannot be opened: names the file, leaves it as it was", function()
    local dir = engine.tmpdir()
    os.execute("mkdir -p " .. engine.shell_quote(dir .. "/data"))
    engine.write_file(dir .. "/data/ratchet.db", ("not SQLite\n"):rep(200))
    local log = fails_at("store", { dir = dir, expect_fail = true })
    assert.matches("the store '" .. dir .. "/data/ratchet.db': file is not a database", log, 1, true)
    assert.same({ "ratchet.db", "ratchet.lock" }, listing(dir .. "/data"))
    assert.equal(("not SQLite\n"):rep(200), engine.read_file(dir .. "/data/ratchet.db"))
    cleanup(dir)
  end)

  it("a store from a newer engine", function()
    local e = engine.start()
    e:stop { keep = true }
    os.execute(string.format("sqlite3 %s 'PRAGMA user_version = 999'", engine.shell_quote(e.data .. "/ratchet.db")))
    local log = fails_at("store", { dir = e.dir, expect_fail = true })
    assert.matches("has schema version 999, newer than this engine's", log, 1, true)
    assert.same({ "ratchet.db", "ratchet.lock" }, listing(e.data))
    cleanup(e.dir)
  end)

  it("a script error: the file and line, then the step", function()
    local dir = engine.tmpdir()
    local scripts = dir .. "/scripts"
    os.execute("mkdir -p " .. engine.shell_quote(scripts .. "/evaluators"))
    engine.write_file(scripts .. "/evaluators/broken.lua", "return {\n  name = 'broken',\n  evaluate = function( end,\n}\n")
    local log = fails_at("scripts", { dir = dir, expect_fail = true,
      config = string.format("scripts = { dirs = { %q, %q } }", scripts, engine.root) })
    assert.matches("broken.lua:3:", log, 1, true)
    assert.matches("start-up failed at the scripts: 1 script or configuration error, listed above", log, 1, true)
    -- the store was open (its writer and checkpointer threads running): closed whole
    assert.same({ "ratchet.db", "ratchet.lock" }, listing(dir .. "/data"))
    cleanup(dir)
  end)

  it("the registry's state unreadable (the step after the store, scripts and LLM clients)", function()
    local e = engine.start()
    e:stop { keep = true }
    os.execute(string.format("sqlite3 %s 'DROP TABLE prompts'", engine.shell_quote(e.data .. "/ratchet.db")))
    local log = fails_at("registry and loop state", { dir = e.dir, expect_fail = true })
    assert.matches("cannot read the prompt registry: ", log, 1, true)
    assert.same({ "ratchet.db", "ratchet.lock" }, listing(e.data))
    cleanup(e.dir)
  end)

  it("a port already taken: every step before the listener undone; the next engine starts on the same store", function()
    local first = engine.start()
    local dir = engine.tmpdir()
    local log = fails_at("listener", { dir = dir, expect_fail = true, listen = first.addr })
    assert.matches("cannot listen on 127.0.0.1 port " .. first.port .. ": address already in use", log, 1, true)
    assert.is_false(exists(dir .. "/addr"), "an address file for an engine that never listened")
    assert.same({ "ratchet.db", "ratchet.lock" }, listing(dir .. "/data")) -- no -wal or -shm: the store closed whole
    first:stop()
    local again = engine.start { dir = dir }
    assert.equal(200, again:get("/healthz").status)
    again:stop()
  end)

  it("an engine stopped the moment its address file appears exits cleanly, every time", function()
    -- the address file is written last: its reader finds the SIGTERM handler in place
    -- (make test once saw status 143, the default action, when it came before the handlers)
    for _ = 1, 15 do
      local e = engine.start()
      assert.equal(0, e:stop())
    end
  end)

  it("an address file that cannot be written fails the last step, undoes every one and frees the port", function()
    local dir = engine.tmpdir()
    local code, log
    -- the helper waits on DIR/addr: run the engine directly with another address file
    local out = engine.tmpdir()
    local cmd = string.format("timeout %d %s serve --listen 127.0.0.1:0 --data-dir %s --address-file %s > %s 2>&1",
      20 * engine.slow, engine.bin, engine.shell_quote(dir .. "/data"), engine.shell_quote(dir .. "/no/such/dir/addr"),
      engine.shell_quote(out .. "/log"))
    local ok, _, status = os.execute(cmd)
    code = ok and 0 or status
    log = engine.read_file(out .. "/log") or ""
    engine.assert_no_sanitizer_report(log)
    assert.equal(3, code, log)
    assert.matches("start-up failed at the address file: cannot write the address file '" .. dir .. "/no/such/dir/addr'",
      log, 1, true)
    assert.is_nil(log:find("teardown", 1, true), log)
    cleanup(dir)
    cleanup(out)
  end)

  it("a clean stop goes through the same teardown: nothing left, the address file removed", function()
    local e = engine.start()
    assert.is_true(exists(e.addr_file))
    e:stop { keep = true }
    local log = e:log_text()
    assert.matches("info%s+engine: stopped", log)
    assert.is_nil(log:find("teardown", 1, true), log)
    assert.is_false(exists(e.addr_file), "the address file outlived the engine")
    assert.same({ "ratchet.db", "ratchet.lock" }, listing(e.data))
    cleanup(e.dir)
  end)
end)
