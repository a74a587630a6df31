-- spec/helpers/postgres.lua — a throwaway PostgreSQL cluster for specs: initdb and pg_ctl from
-- Debian's postgresql package (found under /usr/lib/postgresql/*/bin or pg_config --bindir,
-- on no PATH), run as the postgres user when the specs run as root (the server refuses root),
-- in a temp dir that user owns, listening on a unix socket there and on an ephemeral
-- loopback port. One cluster per busted process, started on first use and stopped and removed
-- when the process ends (also when a spec failed); a fresh database per engine start.
--
--   local pg = require "spec.helpers.postgres"
--   local dsn = pg.new_database()   -- "host=/tmp/... port=N dbname=r_3 user=postgres"
--   pg.restart()                    -- stop -m fast and start again (same data)
local socket = require "socket"

local M = {}

local function sh(cmd)
  local ok, _, code = os.execute(cmd)
  return ok and 0 or code
end

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function capture(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

local function bindir()
  local d = capture("ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1"):gsub("%s+$", "")
  if d ~= "" and sh("test -x " .. q(d .. "/initdb")) == 0 then return d end
  d = capture("pg_config --bindir 2>/dev/null"):gsub("%s+$", "")
  if d ~= "" and sh("test -x " .. q(d .. "/initdb")) == 0 then return d end
  return nil
end

function M.available() return bindir() ~= nil end

local cluster -- { dir, bin, port, as, dbs }

-- the prefix that runs a server command as the postgres user when we are root
local function as_postgres()
  if capture("id -u"):gsub("%s+$", "") == "0" then return "runuser -u postgres -- " end
  return ""
end

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function pg_ctl(args)
  return sh(cluster.as .. q(cluster.bin .. "/pg_ctl") .. " -D " .. q(cluster.dir .. "/data") .. " -l "
    .. q(cluster.dir .. "/server.log") .. " " .. args .. " >/dev/null 2>&1")
end

local function start_server()
  local opts = string.format("-k %s -p %d -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on "
    .. "-c max_connections=200 -c shared_buffers=32MB", cluster.dir, cluster.port)
  assert(pg_ctl("-w -t 60 -o " .. q(opts) .. " start") == 0,
    "PostgreSQL did not start; its log:\n" .. (capture("cat " .. q(cluster.dir .. "/server.log")) or ""))
end

function M.start()
  if cluster then return cluster end
  local bin = assert(bindir(), "PostgreSQL's initdb is not installed (Debian package postgresql; make deps)")
  local dir = capture("mktemp -d /tmp/ratchet-pg.XXXXXX"):gsub("%s+$", "")
  local as = as_postgres()
  if as ~= "" then assert(sh("chown postgres " .. q(dir)) == 0) end
  cluster = { dir = dir, bin = bin, as = as, port = free_port(), n = 0 }
  assert(sh(as .. q(bin .. "/initdb") .. " -D " .. q(dir .. "/data") .. " -A trust -U postgres -E UTF8 --locale=C "
    .. ">" .. q(dir .. "/initdb.log") .. " 2>&1") == 0, "initdb failed: " .. capture("cat " .. q(dir .. "/initdb.log")))
  start_server()
  return cluster
end

-- runs SQL as the superuser on the postgres database; returns the output
function M.psql(sql, db)
  local c = M.start()
  return capture(q(c.bin .. "/psql") .. " -h " .. q(c.dir) .. " -p " .. c.port .. " -U postgres -d " .. q(db or "postgres")
    .. " -v ON_ERROR_STOP=1 -Atqc " .. q(sql) .. " 2>&1")
end

function M.dsn(db)
  local c = M.start()
  return string.format("host=%s port=%d dbname=%s user=postgres", c.dir, c.port, db)
end

-- a new empty database; returns its DSN and name
function M.new_database()
  local c = M.start()
  c.n = c.n + 1
  local name = string.format("r_%d_%d", math.floor(socket.gettime() * 1000) % 100000000, c.n)
  local out = M.psql("CREATE DATABASE " .. name)
  assert(not out:find("ERROR"), out)
  return M.dsn(name), name
end

-- the TCP address (for a proxy in front of the server)
function M.port() return M.start().port end

function M.stop_server(mode) pg_ctl("-w -m " .. (mode or "fast") .. " stop") end
function M.start_server() start_server() end
-- starts the server again if a spec stopped it (in a finally, so one failure does not cascade)
function M.ensure_running()
  if cluster and pg_ctl("status") ~= 0 then start_server() end
end
function M.restart(mode)
  M.stop_server(mode)
  start_server()
end

function M.shutdown()
  if not cluster then return end
  pg_ctl("-w -m immediate stop")
  sh("rm -rf " .. q(cluster.dir))
  cluster = nil
end

-- stopped and removed when the Lua state closes (busted exits with os.exit(code, true))
M._guard = setmetatable({}, { __gc = function() M.shutdown() end })

return M
