-- spec/helpers/engine.lua — starts the real `ratchet` binary on an ephemeral
-- port with a temporary data directory, and talks HTTP to it.
--
--   local engine = require "spec.helpers.engine"
--   local e = engine.start { config = 'ingest_token = "..."' }
--   local res = e:post("/v1/traces", { prompt = { name = "x" }, output = "y" })
--   e:stop()                       -- SIGTERM; asserts a clean exit
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"
local cjson = require "cjson.safe"

local M = {}

M.bin = os.getenv("RATCHET_BIN") or "build/ratchet"
M.sanitized = os.getenv("RATCHET_SANITIZED") == "1"
-- sanitized builds run a few times slower: scale the waits, not the checks
M.slow = M.sanitized and 4 or 1

local function sh(cmd)
  local ok, _, code = os.execute(cmd)
  return ok and 0 or code
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
M.read_file = read_file

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end
M.write_file = write_file

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.shell_quote = shell_quote

function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(sh("mkdir -p " .. shell_quote(p)) == 0)
  return p
end

function M.sleep(s) socket.sleep(s) end

-- The repository root (specs run from it): the shipped evaluators/ live here.
M.root = (function()
  local p = io.popen("pwd")
  local d = p:read("l")
  p:close()
  return d
end)()

-- Polls fn() every 20 ms until it returns a true value (returned) or
-- `seconds` pass (scaled for sanitizer builds); then returns nil.
function M.eventually(seconds, fn)
  local deadline = socket.gettime() + seconds * M.slow
  repeat
    local v = fn()
    if v then return v end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return nil
end

M.json = cjson

local Engine = {}
Engine.__index = Engine
M.Engine = Engine

-- Engines a failed spec left running are killed when the test process ends,
-- so no stray server outlives the suite.
M.running = {}
M.reaper = setmetatable({}, { __gc = function()
  for e in pairs(M.running) do e:signal("KILL") end
end })

-- Runs `ratchet ARGS...` to completion (at most 20 s); returns exit code, stdout, stderr.
function M.run(args, env)
  local dir = M.tmpdir()
  local prefix = ""
  for k, v in pairs(env or {}) do prefix = prefix .. k .. "=" .. shell_quote(v) .. " " end
  -- bounded, so a command that wrongly keeps running fails the spec (124) instead of hanging it
  local code = sh(string.format("%stimeout %d %s %s > %s/out 2> %s/err", prefix, 20 * M.slow, M.bin, args, dir, dir))
  local out, err = read_file(dir .. "/out"), read_file(dir .. "/err")
  sh("rm -rf " .. shell_quote(dir))
  return code, out, err
end

-- opts.config: Lua text for the config file (listen/data_dir are set by the helper)
-- opts.dir: reuse a data directory (restart after a crash)
-- opts.data_dir: the data directory itself (default: DIR/data)
-- opts.expect_fail: do not wait for the address file; return the exit code and log
-- opts.store: "sqlite" or "postgres" (default: $RATCHET_SPEC_STORE, else sqlite); on
--   postgres each new engine dir gets a fresh database of spec/helpers/postgres.lua's
--   cluster (a restart with opts.dir keeps it); opts.dsn names one (two engines, one database)
M.store = os.getenv("RATCHET_SPEC_STORE") or "sqlite"

-- the store table the helper adds to an engine's config, or "" for SQLite
local function store_config(e, opts)
  local kind = opts.store or M.store
  if kind ~= "postgres" or (opts.config or ""):find("%f[%w_]store%s*=") then return "" end
  local dsn = opts.dsn or read_file(e.dir .. "/pg_dsn")
  if not dsn then
    dsn = require("spec.helpers.postgres").new_database()
    write_file(e.dir .. "/pg_dsn", dsn)
  end
  e.dsn = dsn
  return string.format('\nstore = { kind = "postgres", dsn = %q }\n', dsn)
end

function M.start(opts)
  opts = opts or {}
  local e = setmetatable({}, Engine)
  e.dir = opts.dir or M.tmpdir()
  e.data = opts.data_dir or e.dir .. "/data"
  e.conf = e.dir .. "/ratchet.conf"
  e.log = e.dir .. "/engine.log"
  e.addr_file = e.dir .. "/addr"
  e.exit_file = e.dir .. "/exit"
  os.remove(e.addr_file)
  os.remove(e.exit_file)
  write_file(e.conf, (opts.config or "") .. store_config(e, opts) .. "\n")
  local env = ""
  for k, v in pairs(opts.env or {}) do env = env .. k .. "=" .. shell_quote(v) .. " " end
  local listen = opts.listen or "127.0.0.1:0"
  -- A subshell waits for the engine so its exit status can be read back.
  local cmd = string.format(
    "( %s%s serve -c %s --listen %s --data-dir %s --address-file %s >> %s 2>&1 & echo $! > %s/pid; wait $!; echo $? > %s ) </dev/null >/dev/null 2>&1 &",
    env, M.bin, shell_quote(e.conf), shell_quote(listen), shell_quote(e.data), shell_quote(e.addr_file),
    shell_quote(e.log), e.dir, shell_quote(e.exit_file))
  assert(sh(cmd) == 0)
  local deadline = socket.gettime() + 10 * M.slow
  while socket.gettime() < deadline do
    local addr = read_file(e.addr_file)
    if addr and addr:match("\n$") then
      e.addr = addr:gsub("%s+$", "")
      e.host, e.port = e.addr:match("^%[?([^%]]+)%]?:(%d+)$")
      e.port = tonumber(e.port)
      break
    end
    if read_file(e.exit_file) then break end
    socket.sleep(0.02)
  end
  e.pid = tonumber(read_file(e.dir .. "/pid"))
  M.running[e] = true
  if opts.expect_fail then
    -- a failed start goes through the same teardown as a stop: it must be
    -- as clean (under ASan, no leak or error report)
    local code = e:wait_exit(5 * M.slow)
    local log = read_file(e.log) or ""
    M.assert_no_sanitizer_report(log)
    return code, log
  end
  assert(e.addr, "the engine did not start; its log:\n" .. (read_file(e.log) or ""))
  return e
end

-- Fails when a sanitizer (ASan, LSan, UBSan) reported in an engine's log.
function M.assert_no_sanitizer_report(log)
  assert(not log:find("ERROR: AddressSanitizer", 1, true) and not log:find("runtime error:", 1, true)
    and not log:find("ERROR: LeakSanitizer", 1, true), "sanitizer report in the engine log:\n" .. log)
end

function Engine:url(path) return "http://" .. self.addr .. path end

-- Returns the exit status once the engine has exited, or nil after timeout s.
function Engine:wait_exit(timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while socket.gettime() < deadline do
    local s = read_file(self.exit_file)
    if s and s:match("\n$") then
      M.running[self] = nil
      return tonumber(s)
    end
    socket.sleep(0.02)
  end
  return nil
end

function Engine:signal(sig)
  sh(string.format("kill -%s %d 2>/dev/null", sig, self.pid))
end

function Engine:log_text() return read_file(self.log) or "" end

-- SIGTERM, then wait: returns the exit status (asserting it is 0 unless told
-- otherwise) and checks the log has no sanitizer report.
function Engine:stop(opts)
  opts = opts or {}
  self:signal("TERM")
  local code = self:wait_exit((opts.timeout or 10) * M.slow)
  if not code then
    self:signal("KILL")
    error("the engine did not exit after SIGTERM; log:\n" .. self:log_text())
  end
  local log = self:log_text()
  M.assert_no_sanitizer_report(log)
  if not opts.any_status then
    assert(code == 0, "engine exited with status " .. tostring(code) .. "; log:\n" .. log)
  end
  if not opts.keep then sh("rm -rf " .. shell_quote(self.dir)) end
  return code
end

function Engine:kill9()
  self:signal("KILL")
  self:wait_exit(10 * M.slow)
end

-- request(method, path, { body = string|table, headers = {}, content_type = })
-- Returns { status = n, body = string, json = table|nil, headers = {} }.
function Engine:request(method, path, opts)
  opts = opts or {}
  local body = opts.body
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k:lower()] = v end
  if type(body) == "table" then
    body = cjson.encode(body)
    headers["content-type"] = headers["content-type"] or "application/json"
  end
  if opts.content_type then headers["content-type"] = opts.content_type end
  if body then headers["content-length"] = tostring(#body) end
  local chunks = {}
  local ok, status, rheaders = http.request {
    url = self:url(path),
    method = method,
    headers = headers,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
  }
  if not ok then error("request failed: " .. tostring(status)) end
  local text = table.concat(chunks)
  return { status = status, body = text, json = cjson.decode(text), headers = rheaders or {} }
end

function Engine:get(path, opts) return self:request("GET", path, opts) end
function Engine:post(path, body, opts)
  opts = opts or {}
  opts.body = body
  return self:request("POST", path, opts)
end

-- A raw TCP connection for tests that need control over the bytes.
function Engine:connect()
  local c = assert(socket.tcp())
  c:settimeout(10 * M.slow)
  assert(c:connect(self.host, self.port))
  return c
end

-- Reads one HTTP response from a raw connection: status, headers, body.
function M.read_response(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local status = tonumber(line:match("^HTTP/1%.1 (%d+)"))
  local headers = {}
  while true do
    local h = assert(c:receive("*l"))
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    headers[k:lower()] = v
  end
  local n = tonumber(headers["content-length"] or "0")
  local body = n > 0 and assert(c:receive(n)) or ""
  return { status = status, headers = headers, body = body, json = cjson.decode(body) }
end

-- SQL on the engine's store (read-only checks after a stop or crash): the sqlite3 CLI on
-- its file, or psql on its PostgreSQL database (the same output: rows by line, columns by |).
function Engine:sql(query)
  if self.dsn then
    local pg = require "spec.helpers.postgres"
    return (pg.psql(query, self.dsn:match("dbname=(%S+)")):gsub("%s+$", ""))
  end
  local out = io.popen(string.format("sqlite3 -readonly %s %s 2>&1", shell_quote(self.data .. "/ratchet.db"),
    shell_quote(query)))
  local text = out:read("a")
  out:close()
  return (text:gsub("%s+$", ""))
end

function M.trace(fields)
  local t = { prompt = { name = "ticket-triage", version = 1 }, input = { variables = { text = "hello" } },
    output = '{"category":"billing"}' }
  for k, v in pairs(fields or {}) do t[k] = v end
  return t
end

return M
