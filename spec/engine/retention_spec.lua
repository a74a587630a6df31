-- store.retention_days (docs/scale-out.md, "Retention"): the oldest traces past it are
-- deleted in batches by the writer thread (on PostgreSQL by the leader), with their scores
-- and feedback; newer ones stay. Runs on both backends (spec/run-all's PostgreSQL pass).
local engine = require "spec.helpers.engine"

local function iso(days_ago)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - math.floor(days_ago * 86400))
end

-- the store table with the retention (and on the PostgreSQL pass, a fresh database)
local function store_line(days)
  if engine.store ~= "postgres" then return string.format("store = { retention_days = %s }\n", days) end
  return string.format('store = { kind = "postgres", dsn = %q, retention_days = %s }\n',
    require("spec.helpers.postgres").new_database(), days)
end

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

  it("refuses a retention that is not a whole number of days from 1, naming the field", function()
    for _, bad in ipairs { "0", "-1", '"30d"', "1.5", "40000" } do
      local code, log = engine.start { expect_fail = true, config = store_line(bad) }
      assert.equal(3, code, bad)
      assert.matches("store%.retention_days", log, nil, false, bad)
    end
  end)
end)
