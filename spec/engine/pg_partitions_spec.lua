-- traces in daily range partitions on PostgreSQL (docs/scale-out.md, "Retention and
-- partitioning"): the migration of an unpartitioned table keeps every row (readable by id, the
-- same pages through the (ts, seq) cursor, feedback and verdicts still land on their trace),
-- a ts far from today lands in traces_default instead of failing the ingest, the leader makes
-- the days ahead (again when one is taken away), a day within the window gets its partition
-- when a trace of it comes (a lock held on the table leaves it in traces_default), and the id
-- table keeps the dedup exact across partitions. PostgreSQL only (it reads the catalog to check
-- the table's shape). #heavy: it runs once, in `make test`.
local engine = require "spec.helpers.engine"
local pg = require "spec.helpers.postgres"
local cjson = require "cjson"

local function iso(days_ago)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - math.floor(days_ago * 86400))
end

-- every id of GET /v1/traces through the cursor, pages of n
local function all_ids(e, n)
  local ids, cursor = {}, nil
  repeat
    local r = e:get("/v1/traces?limit=" .. n .. (cursor and ("&cursor=" .. cursor) or ""))
    assert.equal(200, r.status, r.body)
    for _, t in ipairs(r.json.items) do ids[#ids + 1] = t.id end
    cursor = r.json.next_cursor
  until cursor == nil or cursor == cjson.null
  return ids
end

-- the traces table as schema version 6 had it (engine/store/pg.c, migrations 1 and 6), filled
-- with the rows the partitioned one holds: the database as an engine before partitioning left it
local TO_V6 = [[
BEGIN;
CREATE TABLE flat AS SELECT seq, id, prompt, version, ts, received_at, retry_of, body, verdict, negative, engine
  FROM traces;
DROP TABLE traces;
DROP TABLE trace_ids;
CREATE TABLE traces (
  seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, prompt TEXT NOT NULL, version BIGINT, ts BIGINT NOT NULL,
  received_at BIGINT NOT NULL, retry_of TEXT, body JSON NOT NULL, verdict BIGINT, negative BIGINT NOT NULL DEFAULT 0);
CREATE INDEX traces_by_prompt ON traces(prompt, ts, seq);
CREATE INDEX traces_by_ts ON traces(ts, seq);
CREATE INDEX traces_failed_by_prompt ON traces(prompt, ts, seq) WHERE verdict = 1 OR negative = 1;
CREATE INDEX traces_failed_by_ts ON traces(ts, seq) WHERE verdict = 1 OR negative = 1;
ALTER TABLE traces ADD COLUMN engine TEXT;
ALTER TABLE traces ALTER COLUMN engine SET DEFAULT current_setting('ratchet.engine', true);
CREATE INDEX traces_unevaluated ON traces(prompt, seq) WHERE verdict IS NULL;
INSERT INTO traces SELECT * FROM flat;
SELECT setval('traces_seq_seq', (SELECT max(seq) FROM traces));
DROP TABLE flat;
UPDATE ratchet_schema SET version = 6;
COMMIT;
]]

describe("traces partitioned by day on PostgreSQL #heavy", function()
  it("migrates an unpartitioned table keeping every trace, and takes any timestamp", function()
    local e = engine.start { store = "postgres" }
    local db = e.dsn:match("dbname=(%S+)")
    local batch = {}
    for d = 0, 7 do
      for i = 1, 4 do batch[#batch + 1] = engine.trace { id = "t" .. d .. "-" .. i, timestamp = iso(d + i / 10) } end
    end
    batch[#batch + 1] = engine.trace { id = "far-past", timestamp = "1971-03-01T00:00:00Z" }
    batch[#batch + 1] = engine.trace { id = "far-future", timestamp = "2199-03-01T00:00:00Z" }
    local r = e:post("/v1/traces", batch)
    assert.equal(200, r.status, r.body)
    assert.equal(200, e:post("/v1/feedback", { trace_id = "t5-2", thumbs = "down" }).status)
    local before = all_ids(e, 7)
    assert.equal(#batch, #before)
    e:stop({ keep = true })

    local out = pg.psql(TO_V6, db)
    assert.is_nil(out:find("ERROR"), out)
    assert.equal("r", e:sql("SELECT relkind FROM pg_class WHERE relname = 'traces'"))

    e = engine.start { dir = e.dir, store = "postgres" }
    assert.matches("migrated the PostgreSQL schema to version 7", e:log_text(), nil, true)
    assert.equal("p", e:sql("SELECT relkind FROM pg_class WHERE relname = 'traces'"))
    -- the two far ones in the default partition, the others in their days'
    assert.equal("far-future\nfar-past", e:sql("SELECT id FROM traces_default ORDER BY id"))
    assert.equal(tostring(#batch), e:sql("SELECT count(*) FROM trace_ids"))
    local parts = e:get("/v1/status").json.store.trace_partitions
    assert.truthy(parts.daily >= 11, cjson.encode(parts)) -- today, 7 days back (or 8) and 3 ahead
    assert.equal(os.date("!%Y-%m-%d", os.time() + 3 * 86400), parts.newest)
    -- the same pages, in the same order, through the cursor across partitions
    assert.same(before, all_ids(e, 7))
    assert.same(before, all_ids(e, 3))
    for _, id in ipairs(before) do assert.equal(200, e:get("/v1/traces/" .. id).status, id) end
    assert.equal("fail", e:get("/v1/traces/t5-2").json.verdict)

    -- after the migration: updates by id reach the row in its day's partition
    assert.equal(200, e:post("/v1/feedback", { trace_id = "t6-1", thumbs = "down" }).status)
    assert.equal("fail", e:get("/v1/traces/t6-1").json.verdict)
    assert.equal(1, #e:get("/v1/traces/t6-1").json.feedback)
    -- a re-sent id is a duplicate whichever day its new timestamp falls on
    r = e:post("/v1/traces", { engine.trace { id = "t1-1", timestamp = iso(0) },
                               engine.trace { id = "far-past", timestamp = iso(3) },
                               engine.trace { id = "t3-3", timestamp = "2199-03-01T00:00:00Z" } })
    assert.equal(200, r.status, r.body)
    for _, item in ipairs(r.json.items) do assert.equal("duplicate", item.status) end
    -- timestamps with no partition are taken (traces_default), never refused
    r = e:post("/v1/traces", { engine.trace { id = "past-2", timestamp = "1970-01-02T00:00:00Z" },
                               engine.trace { id = "future-2", timestamp = "2199-12-31T23:59:59Z" },
                               engine.trace { id = "today-2" } })
    assert.equal(200, r.status, r.body)
    for _, item in ipairs(r.json.items) do assert.equal("accepted", item.status) end
    assert.equal("far-future\nfar-past\nfuture-2\npast-2", e:sql("SELECT id FROM traces_default ORDER BY id"))
    assert.equal(#before + 3, #all_ids(e, 50))
    -- the leader keeps the days ahead there (no retention set): one taken away comes back
    local ahead = "traces_p" .. os.date("!%Y%m%d", os.time() + 3 * 86400)
    assert.equal("", e:sql("DROP TABLE " .. ahead))
    assert.truthy(engine.eventually(10, function()
      return e:sql("SELECT count(*) FROM pg_class WHERE relname = '" .. ahead .. "'") == "1"
    end), ahead .. " was not made again:\n" .. e:log_text())
    assert.truthy(e:get("/v1/status").json.store.trace_partitions.created >= 1)
    e:stop()
  end)

  it("gives a trace of a day within the window its partition, moving what waited in the default", function()
    local dsn = pg.new_database()
    local e = engine.start { config = string.format('store = { kind = "postgres", dsn = %q, retention_days = 20 }\n', dsn) }
    e.dsn = dsn
    -- 10 days ago: no partition yet (the migration made yesterday's to 3 days ahead)
    local day10 = os.date("!%Y%m%d", os.time() - 10 * 86400)
    local day25 = os.date("!%Y%m%d", os.time() - 25 * 86400)
    local function exists(day) return e:sql("SELECT count(*) FROM pg_class WHERE relname = 'traces_p" .. day .. "'") end
    assert.equal("0", exists(day10))
    -- 25 days ago: past the retention, so no partition is made for it (the retention deletes it)
    local r = e:post("/v1/traces", { engine.trace { id = "ten", timestamp = iso(10) },
                                     engine.trace { id = "old", timestamp = iso(25) } })
    assert.equal(200, r.status, r.body)
    assert.equal("1", exists(day10))
    assert.equal("0", exists(day25))
    assert.equal("ten", e:sql("SELECT id FROM traces_p" .. day10))
    assert.equal(200, e:get("/v1/traces/ten").status)
    -- a batch of traces of six more days: four partitions made for it at most (CREATE_PER_BATCH
    -- of engine/store/pg_partitions.c), the other two days wait in the default partition...
    local batch = {}
    for d = 11, 16 do batch[#batch + 1] = engine.trace { id = "d" .. d, timestamp = iso(d) } end
    r = e:post("/v1/traces", batch)
    assert.equal(200, r.status, r.body)
    assert.equal("d15\nd16", e:sql("SELECT id FROM traces_default WHERE id LIKE 'd%' ORDER BY id"))
    -- ...until a trace of one of them comes: its day's partition is made and takes the waiting one
    r = e:post("/v1/traces", { engine.trace { id = "d15b", timestamp = iso(15) } })
    assert.equal(200, r.status, r.body)
    assert.equal("d16", e:sql("SELECT id FROM traces_default WHERE id LIKE 'd%' ORDER BY id"))
    local day15 = os.date("!%Y%m%d", os.time() - 15 * 86400)
    assert.equal("d15\nd15b", e:sql("SELECT id FROM traces_p" .. day15 .. " ORDER BY id"))
    for d = 11, 16 do assert.equal(200, e:get("/v1/traces/d" .. d).status) end

    -- a read holding the table (here a lock for 4 s) makes the partition's create wait 200 ms
    -- and give up: the batch's traces go to the default partition, acknowledged all the same,
    -- and the engine tries no other create for 10 s (one wait, not one per batch)
    local c = pg.start()
    os.execute(string.format("%s -h %s -p %d -U postgres -d %s -Atqc %s >/dev/null 2>&1 &",
      c.bin .. "/psql", c.dir, c.port, dsn:match("dbname=(%S+)"),
      "'BEGIN; LOCK TABLE traces IN ACCESS SHARE MODE; SELECT pg_sleep(4); COMMIT'"))
    assert.truthy(engine.eventually(5, function()
      return e:sql("SELECT count(*) FROM pg_locks l JOIN pg_class r ON r.oid = l.relation "
        .. "WHERE r.relname = 'traces' AND l.mode = 'AccessShareLock' AND l.pid <> pg_backend_pid()") ~= "0"
    end))
    r = e:post("/v1/traces", { engine.trace { id = "locked-1", timestamp = iso(5) } })
    assert.equal(200, r.status, r.body)
    assert.equal("accepted", r.json.items[1].status)
    r = e:post("/v1/traces", { engine.trace { id = "locked-2", timestamp = iso(6) } })
    assert.equal(200, r.status, r.body)
    assert.equal(1, e:get("/v1/status").json.store.trace_partitions.create_failures)
    assert.equal("locked-1\nlocked-2", e:sql("SELECT id FROM traces_default WHERE id LIKE 'locked%' ORDER BY id"))
    assert.equal(200, e:get("/v1/traces/locked-2").status)
    e:stop()
  end)
end)
