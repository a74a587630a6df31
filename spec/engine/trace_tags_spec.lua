-- A trace's tags: validated at ingest (each error names the field), stored
-- with the trace, and the tag filter of GET /v1/traces and `ratchet traces
-- --tag`, alone and with the other filters, page after page.
local engine = require "spec.helpers.engine"

local function post(e, body)
  return e:post("/v1/traces", body, { headers = { ["content-type"] = "application/json" } })
end

local function trace(id, fields)
  local t = engine.trace { id = id }
  for k, v in pairs(fields or {}) do t[k] = v end
  return t
end

describe("trace tags", function()
  local e
  local t0 = 1796400000000

  setup(function()
    e = engine.start { config = string.format([[
scripts = { dirs = { %q } }
prompt "ticket-triage" { evaluators = { "json_valid" } }
prompt "other" { evaluators = { "json_valid" } }
]], engine.root) }
  end)
  teardown(function() e:stop() end)

  it("refuses tags that are not short distinct strings, naming the field", function()
    local cases = {
      { "billing", "%.tags", "must be an array of strings" },
      { { "ok", 7 }, "%.tags%[1%]", "must be a string" },
      { { "" }, "%.tags%[0%]", "1 to 64 bytes" },
      { { string.rep("x", 65) }, "%.tags%[0%]", "1 to 64 bytes" },
      { { "has space" }, "%.tags%[0%]", "letters, digits" },
      { { "é" }, "%.tags%[0%]", "letters, digits" },
      { { "a", "b", "a" }, "%.tags%[2%]", "repeats the tag 'a' of .tags%[0%]" },
    }
    local many = {}
    for i = 1, 21 do many[i] = "t" .. i end
    cases[#cases + 1] = { many, "%.tags", "has 21 tags, at most 20" }
    for i, c in ipairs(cases) do
      local r = post(e, engine.json.encode(trace("bad-" .. i, { tags = c[1] })))
      assert.equal(422, r.status, r.body)
      local err = r.json.items[1].errors[1]
      assert.matches("^%$" .. c[2] .. "$", err.path, r.body)
      assert.matches(c[3], err.message, 1, false)
      assert.equal(404, e:get("/v1/traces/bad-" .. i).status)
    end
    -- the limits themselves are taken
    local max = {}
    for i = 1, 20 do max[i] = string.rep(string.char(96 + i), 64) end
    local r = post(e, engine.json.encode(trace("max-tags", { tags = max, prompt = { name = "other" } })))
    assert.equal(200, r.status, r.body)
    assert.equal(20, #e:get("/v1/traces/max-tags").json.tags)
  end)

  it("filters by tag, newest first, with the other filters and the cursor", function()
    local items = {}
    for i = 1, 30 do
      local tags = {}
      if i % 2 == 0 then tags[#tags + 1] = "even" end
      if i % 3 == 0 then tags[#tags + 1] = "team:billing" end
      if i == 7 then tags[#tags + 1] = "v2-beta/x=1" end
      items[#items + 1] = engine.json.encode(trace("g" .. i, {
        timestamp = t0 + i * 1000, tags = #tags > 0 and tags or nil,
        prompt = { name = (i % 5 == 0) and "other" or "ticket-triage", version = 1 + i % 2 },
        output = (i % 4 == 0) and "not json" or '{"a":1}' }))
    end
    assert.equal(200, post(e, table.concat(items, "\n")).status)
    local function ids(path)
      local r = e:get(path)
      assert.equal(200, r.status, r.body)
      local out = {}
      for _, t in ipairs(r.json.items) do out[#out + 1] = t.id end
      return table.concat(out, " "), r.json
    end
    assert.equal("g30 g27 g24 g21 g18 g15 g12 g9 g6 g3", ids("/v1/traces?tag=team:billing"))
    assert.equal("g27 g24 g21 g18 g12 g9 g6 g3", ids("/v1/traces?tag=team:billing&prompt=ticket-triage"))
    assert.equal("g27 g21 g9 g3", ids("/v1/traces?tag=team:billing&prompt=ticket-triage&version=2"))
    assert.equal("g7", ids("/v1/traces?tag=v2-beta%2Fx%3D1"))
    assert.equal("", ids("/v1/traces?tag=nobody"))
    assert.equal("g18 g12", ids("/v1/traces?tag=team:billing&since=" .. (t0 + 10000) .. "&until=" .. (t0 + 20000)
      .. "&prompt=ticket-triage"))
    -- the stored trace has its tags
    assert.same({ "even", "team:billing" }, e:get("/v1/traces/g6").json.tags)
    -- with a failed filter, once every trace is evaluated
    engine.eventually(20 * engine.slow, function()
      return ids("/v1/traces?tag=even&failed=true") == "g28 g24 g20 g16 g12 g8 g4"
    end)
    assert.equal("g28 g24 g20 g16 g12 g8 g4", ids("/v1/traces?tag=even&failed=true"))
    assert.equal("g24 g12", ids("/v1/traces?tag=even&failed=true&q=" .. "team:billing"))
    -- pages of 4, the cursor continuing along the tag
    local seen, cursor, pages = {}, nil, 0
    repeat
      local list, j = ids("/v1/traces?tag=even&limit=4" .. (cursor and "&cursor=" .. cursor or ""))
      seen[#seen + 1] = list
      cursor = j.next_cursor ~= engine.json.null and j.next_cursor or nil
      pages = pages + 1
    until not cursor or pages > 10
    assert.equal("g30 g28 g26 g24 | g22 g20 g18 g16 | g14 g12 g10 g8 | g6 g4 g2", table.concat(seen, " | "))
  end)

  it("refuses a tag filter that is no tag, naming it", function()
    for _, bad in ipairs { "", string.rep("x", 65), "a%20b", "%C3%A9" } do
      local r = e:get("/v1/traces?tag=" .. bad)
      assert.equal(400, r.status, bad)
      assert.equal("tag", r.json.error.field)
    end
  end)

  it("ratchet traces --tag shows the same page", function()
    local url = engine.shell_quote("http://" .. e.addr)
    local code, out, err = engine.run("traces --url " .. url .. " --tag team:billing --prompt ticket-triage --limit 3")
    assert.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equal(4, #lines, out)
    assert.matches("g27%s+ticket%-triage v2", lines[1])
    assert.matches("g24%s+ticket%-triage v1", lines[2])
    assert.matches("g21 ", lines[3])
    assert.matches("^next page: %-%-cursor ", lines[4])
    code, out, err = engine.run("traces --url " .. url .. " --tag 'a b'")
    assert.equal(3, code)
    assert.matches("tag", err)
  end)
end)
