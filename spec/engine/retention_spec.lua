-- store.retention_days (docs/scale-out.md, "Retention"): the oldest traces past it are
-- deleted in batches by the writer thread (on PostgreSQL by the leader), with their scores
-- and feedback; newer ones stay. Runs on both backends (spec/run-all's PostgreSQL pass).
local engine = require "spec.helpers.engine"

local function iso(days_ago)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - math.floor(days_ago * 86400))
end

-- the store table with the retention (and on the PostgreSQL pass, a fresh database or dsn's)
local function store_line(days, dsn)
  if engine.store ~= "postgres" then return string.format("store = { retention_days = %s }\n", days) end
  return string.format('store = { kind = "postgres", dsn = %q, retention_days = %s }\n',
    dsn or require("spec.helpers.postgres").new_database(), days)
end

local function dsn_of(line) return line:match('dsn = "(.-)"') end

describe("trace retention", function()
  it("deletes traces older than store.retention_days and keeps the others", function()
    local e = engine.start { config = store_line(3) }
    assert.equal(engine.store, e:get("/v1/status").json.store.kind or "sqlite")
    local batch = {}
    for i = 1, 30 do
      batch[#batch + 1] = engine.trace { id = "old-" .. i, timestamp = iso(10 + i / 10), tags = { "old" } }
      batch[#batch + 1] = engine.trace { id = "new-" .. i, timestamp = iso(1) }
    end
    local r = e:post("/v1/traces", batch)
    assert.equal(200, r.status, r.body)
    assert.equal(200, e:post("/v1/feedback", { trace_id = "old-1", thumbs = "down" }).status)
    local gone = engine.eventually(20, function()
      for i = 1, 30 do
        if e:get("/v1/traces/old-" .. i).status ~= 404 then return false end
      end
      return true
    end)
    assert(gone, "old traces are still there:\n" .. e:log_text())
    for i = 1, 30 do assert.equal(200, e:get("/v1/traces/new-" .. i).status) end
    assert.equal(0, #e:get("/v1/traces?tag=old").json.items)
    if engine.store ~= "postgres" then -- SQLite's tag index lost the deleted traces' rows too
      assert.equal("0", e:sql("SELECT count(*) FROM trace_tags WHERE tag = 'old'"))
    end
    -- a re-sent id after its deletion is a new trace; past the retention it goes again
    r = e:post("/v1/traces", engine.trace { id = "old-1", timestamp = iso(10) })
    assert.equal(200, r.status, r.body)
    assert.truthy(engine.eventually(20, function() return e:get("/v1/traces/old-1").status == 404 end))
    -- and a re-sent id within the retention is still a duplicate of the stored one
    r = e:post("/v1/traces", engine.trace { id = "new-1", timestamp = iso(1) })
    assert.equal(200, r.status, r.body)
    assert.equal(30, #e:get("/v1/traces?limit=100").json.items)
    e:stop()
  end)

  -- PostgreSQL: a day within the retention has its own partition of traces; once the day is
  -- wholly past the retention the leader drops the partition whole (status counts it) and its
  -- traces are gone; the id table keeps the dedup exact across days (docs/scale-out.md)
  it("drops a day's partition whole once it is past the retention, and dedup stays exact", function()
    if engine.store ~= "postgres" then return end
    local line = store_line(60)
    local e = engine.start { config = line }
    local batch = {}
    for i = 1, 20 do
      batch[#batch + 1] = engine.trace { id = "d40-" .. i, timestamp = iso(40) }
      batch[#batch + 1] = engine.trace { id = "d1-" .. i, timestamp = iso(1) }
    end
    local r = e:post("/v1/traces", batch)
    assert.equal(200, r.status, r.body)
    for _, item in ipairs(r.json.items) do assert.equal("accepted", item.status) end
    assert.equal(200, e:post("/v1/feedback", { trace_id = "d40-1", thumbs = "down" }).status)
    assert.equal("fail", e:get("/v1/traces/d40-1").json.verdict)
    local day40 = os.date("!%Y-%m-%d", os.time() - 40 * 86400)
    local parts
    assert.truthy(engine.eventually(10, function()
      parts = e:get("/v1/status").json.store.trace_partitions
      return parts.oldest == day40 and parts.daily >= 6
    end), "no partition for the day 40 days ago: " .. require("cjson").encode(parts))
    -- the same id with a timestamp of another day (so another partition) is a duplicate
    r = e:post("/v1/traces", { engine.trace { id = "d40-2", timestamp = iso(1) },
                               engine.trace { id = "d1-2", timestamp = iso(40) } })
    assert.equal(200, r.status, r.body)
    assert.equal("duplicate", r.json.items[1].status)
    assert.equal("duplicate", r.json.items[2].status)
    e:stop({ keep = true })

    -- the same database with a retention of 30 days: that day's partition goes whole
    e = engine.start { dir = e.dir, config = store_line(30, dsn_of(line)) }
    assert.truthy(engine.eventually(20, function()
      parts = e:get("/v1/status").json.store.trace_partitions
      return parts.dropped >= 1 and parts.oldest > day40
    end), "the partition of 40 days ago was not dropped: " .. require("cjson").encode(parts))
    for i = 1, 20 do
      assert.equal(404, e:get("/v1/traces/d40-" .. i).status)
      assert.equal(200, e:get("/v1/traces/d1-" .. i).status)
    end
    local _, screen = engine.run("status --url http://" .. e.addr)
    assert.matches("traces in %d+ daily partitions, %d+%-%d+%-%d+ to %d+%-%d+%-%d+; this engine created %d+, dropped [1-9]",
      screen)
    local m = e:get("/metrics").body
    assert.truthy(tonumber(m:match("\nratchet_store_trace_partitions_dropped_total (%d+)")) >= 1, m)
    -- a kept id is still a duplicate; the dropped day's ids (their id rows deleted in the same
    -- passes) are new traces again
    assert.truthy(engine.eventually(20, function()
      r = e:post("/v1/traces", { engine.trace { id = "d1-3", timestamp = iso(1) },
                                 engine.trace { id = "d40-3", timestamp = iso(2) } })
      return r.status == 200 and r.json.items[2].status == "accepted"
    end), r.body)
    assert.equal("duplicate", r.json.items[1].status)
    assert.equal(21, #e:get("/v1/traces?limit=100").json.items)
    e:stop()
  end)

  it("refuses a retention that is not a whole number of days from 1, naming the field", function()
    for _, bad in ipairs { "0", "-1", '"30d"', "1.5", "40000" } do
      local code, log = engine.start { expect_fail = true, config = store_line(bad) }
      assert.equal(3, code, bad)
      assert.matches("store%.retention_days", log, nil, false, bad)
    end
  end)
end)
