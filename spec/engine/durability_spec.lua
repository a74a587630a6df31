-- Durability: a 2xx means committed and fsync'd. The engine is killed with
-- SIGKILL under continuous ingest; after every restart each acknowledged
-- trace is present exactly once and the database passes integrity_check.
-- SIGTERM drains in-flight requests and exits 0.
local engine = require "spec.helpers.engine"
local socket = require "socket"
local q = engine.shell_quote

-- A background loader: `workers` shell loops posting NDJSON batches with curl
-- to whatever address the engine last wrote, appending the ids of every
-- batch answered 200 to acked.<worker>. Each stops when the stop file
-- appears, its folder is gone, or after 120 s, and then writes done.<worker>.
local function start_loader(e, dir, workers, batch)
  local script = dir .. "/loader.sh"
  engine.write_file(script, string.format([[
w=$1; i=0; end=$(( $(date +%%s) + 120 ))
while [ -d %s ] && [ ! -e %s/stop ] && [ "$(date +%%s)" -lt "$end" ]; do
  i=$((i+1)); body=""; ids=""
  for j in $(seq 1 %d); do
    id="w$w-$i-$j"
    body="$body{\"id\":\"$id\",\"prompt\":{\"name\":\"crash\"},\"output\":\"x\"}
"
    ids="$ids$id
"
  done
  addr=$(cat %s 2>/dev/null)
  code=$(printf '%%s' "$body" | curl -s -o /dev/null -w '%%{http_code}' -m 5 -H 'Content-Type: application/x-ndjson' --data-binary @- "http://$addr/v1/traces" 2>/dev/null)
  if [ "$code" = "200" ]; then printf '%%s' "$ids" >> %s/acked.$w; fi
done
touch %s/done.$w
]], q(dir), q(dir), batch, q(e.addr_file), q(dir), q(dir)))
  for w = 1, workers do
    os.execute(string.format("sh %s %d </dev/null >/dev/null 2>&1 &", q(script), w))
  end
end

local function stop_loader(dir, workers)
  engine.write_file(dir .. "/stop", "")
  for _ = 1, 200 do
    local all = true
    for w = 1, workers do
      if not engine.read_file(dir .. "/done." .. w) then all = false end
    end
    if all then return end
    socket.sleep(0.05)
  end
  error("the load generator did not stop")
end

local function acked_ids(dir, workers)
  local ids = {}
  for w = 1, workers do
    local text = engine.read_file(dir .. "/acked." .. w) or ""
    for id in text:gmatch("[^\n]+") do ids[#ids + 1] = id end
  end
  return ids
end

local function check_store(e, acked)
  if not e.dsn then assert.equal("ok", e:sql("PRAGMA integrity_check")) end -- SQLite's own check
  local present = {}
  for line in e:sql("SELECT id FROM traces WHERE prompt = 'crash'"):gmatch("[^\n]+") do
    assert.is_nil(present[line], "trace " .. line .. " stored twice")
    present[line] = true
  end
  local missing = {}
  for _, id in ipairs(acked) do
    if not present[id] then missing[#missing + 1] = id end
  end
  assert.same({}, missing)
end

describe("durability", function()
  it("keeps every acknowledged trace exactly once across repeated SIGKILLs", function()
    local e = engine.start { config = "access_log = false" }
    local work = engine.tmpdir()
    local workers = 3
    start_loader(e, work, workers, 20)
    local total_acked = 0
    for round = 1, 4 do
      -- let ingest make progress on this engine (bounded), then kill it at a random moment
      local deadline = socket.gettime() + 15 * engine.slow
      while #acked_ids(work, workers) <= total_acked and socket.gettime() < deadline do socket.sleep(0.05) end
      socket.sleep((0.2 + math.random() * 0.6) * engine.slow)
      e:kill9()
      local acked = acked_ids(work, workers)
      assert.is_true(#acked > total_acked, "round " .. round .. ": no ingest happened")
      total_acked = #acked
      e = engine.start { dir = e.dir, config = "access_log = false" }
      check_store(e, acked_ids(work, workers))
    end
    stop_loader(work, workers)
    e:stop { keep = true }
    check_store(e, acked_ids(work, workers))
    assert.is_true(total_acked >= 80, "only " .. total_acked .. " traces were acknowledged")
    os.execute("rm -rf " .. q(work) .. " " .. q(e.dir))
  end)
end)

-- SQLite only: its WAL and checkpointer (the PostgreSQL pass of spec/run-all skips these)
local describe_sqlite = engine.store == "sqlite" and describe or function() end

describe_sqlite("checkpoints", function()
  local function metric(e, name)
    return tonumber(e:get("/metrics").body:match("\n" .. name .. " ([%d.e+]+)"))
  end

  -- The two volume soaks (40,000 and 64,000 traces of 1 KB: 6.7 s and 8.7 s under the
  -- sanitizers) are #heavy: they run in `make test`, not again under `make asan`.
  it("copies the WAL back on the checkpointer thread and keeps the WAL bounded #heavy", function()
    local e = engine.start { config = "access_log = false" }
    -- 40,000 traces of about 1 KB: some 14,000 WAL pages if nothing were copied back
    local pad = string.rep("x", 900)
    local n, per = 0, 2000
    for _ = 1, 20 do
      local lines = {}
      for i = 1, per do
        n = n + 1
        lines[i] = string.format('{"id":"ck-%d","prompt":{"name":"ck"},"output":"x","metadata":{"pad":"%s"}}', n, pad)
      end
      local res = e:post("/v1/traces", table.concat(lines, "\n"), { content_type = "application/x-ndjson" })
      assert.equal(200, res.status)
      assert.equal(per, res.json.accepted)
    end
    assert.is_true(metric(e, "ratchet_store_checkpoints_total") >= 1)
    assert.is_true(metric(e, "ratchet_store_wal_pages") < 9000)
    -- the file's size is the most it ever held: under 8,000 pages plus one commit's
    local f = assert(io.open(e.data .. "/ratchet.db-wal", "rb"))
    local size = f:seek("end")
    f:close()
    assert.is_true(size < 9000 * 4120, "the WAL grew to " .. size .. " bytes")
    assert.equal("40000", e:sql("SELECT count(*) FROM traces WHERE prompt = 'ck'"))
    e:stop { keep = true }
    -- after a clean stop the last connection copied everything back
    assert.is_nil(io.open(e.data .. "/ratchet.db-wal", "rb"))
    assert.equal("40000", e:sql("SELECT count(*) FROM traces WHERE prompt = 'ck'"))
    assert.equal("ok", e:sql("PRAGMA integrity_check"))
    os.execute("rm -rf " .. q(e.dir))
  end)

  -- With requests always queued the writer starts each transaction right
  -- after the last commit, so the WAL never finds itself all copied back and
  -- cannot restart on its own: the writer's own checkpoint past 8000 pages is
  -- what bounds it (some 22,000 pages here without it).
  it("keeps the WAL bounded while writes never pause #heavy", function()
    local e = engine.start { config = "access_log = false" }
    local work = engine.tmpdir()
    local pad = string.rep("x", 900)
    local workers, files, per = 8, 8, 1000
    local n = 0
    for w = 1, workers do
      for f = 1, files do
        local lines = {}
        for i = 1, per do
          n = n + 1
          lines[i] = string.format('{"id":"busy-%d","prompt":{"name":"busy"},"output":"x","metadata":{"pad":"%s"}}',
            n, pad)
        end
        engine.write_file(string.format("%s/%d-%d.ndjson", work, w, f), table.concat(lines, "\n"))
      end
    end
    for w = 1, workers do
      os.execute(string.format([[(for f in $(seq 1 %d); do
  curl -s -o /dev/null -w '%%{http_code}\n' -m 60 -H 'Content-Type: application/x-ndjson' \
    --data-binary @%s/%d-$f.ndjson %s >> %s/codes.%d
done; touch %s/done.%d) </dev/null >/dev/null 2>&1 &]], files, q(work), w, q(e:url("/v1/traces")), q(work), w,
        q(work), w))
    end
    local codes = {}
    local deadline = socket.gettime() + 120 * engine.slow
    for w = 1, workers do
      while not engine.read_file(work .. "/done." .. w) and socket.gettime() < deadline do socket.sleep(0.05) end
      for code in (engine.read_file(work .. "/codes." .. w) or ""):gmatch("%d+") do codes[#codes + 1] = code end
    end
    assert.equal(workers * files, #codes)
    for _, code in ipairs(codes) do assert.equal("200", code) end
    local f = assert(io.open(e.data .. "/ratchet.db-wal", "rb"))
    local size = f:seek("end")
    f:close()
    -- 8000 pages, plus the one commit that crossed them (at most 8 batches)
    assert.is_true(size < 12000 * 4120, "the WAL grew to " .. size .. " bytes")
    assert.equal(tostring(n), e:sql("SELECT count(*) FROM traces WHERE prompt = 'busy'"))
    e:stop()
    os.execute("rm -rf " .. q(work))
  end)
end)

describe("shutdown", function()
  it("finishes in-flight requests on SIGTERM, exits 0 quickly and stores what it acknowledged", function()
    local e = engine.start { config = "access_log = false" }
    local work = engine.tmpdir()
    start_loader(e, work, 4, 50)
    socket.sleep(0.5 * engine.slow)
    local t0 = socket.gettime()
    local code = e:stop { keep = true }
    local took = socket.gettime() - t0
    stop_loader(work, 4)
    assert.equal(0, code)
    assert.is_true(took < 5, "shutdown took " .. took .. " s")
    assert.matches("SIGTERM: stopping", e:log_text())
    local acked = acked_ids(work, 4)
    assert.is_true(#acked > 0)
    check_store(e, acked)
    os.execute("rm -rf " .. q(work) .. " " .. q(e.dir))
  end)

  it("answers an idle keep-alive client and closes it on shutdown", function()
    local e = engine.start()
    local c = e:connect()
    c:send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(200, engine.read_response(c).status)
    assert.equal(0, e:stop())
    c:settimeout(2)
    local _, err = c:receive("*l")
    assert.equal("closed", err)
  end)
end)
