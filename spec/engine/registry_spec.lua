-- The prompt registry and datasets through the HTTP API of the real engine.
local engine = require "spec.helpers.engine"

local function v(system, extra)
  local b = { messages = { { role = "system", content = system }, { role = "user", content = "{{ticket}}" } },
              model = { provider = "openai", model = "gpt-4o-mini", temperature = 0 } }
  for k, x in pairs(extra or {}) do b[k] = x end
  return b
end

describe("prompt registry", function()
  local e
  before_each(function()
    -- versions name a provider, and only a configured one is accepted
    e = engine.start { config = 'provider "openai" { kind = "openai", api_key = "sk-registry-spec-00000000" }' }
    assert.equal(201, e:post("/v1/prompts", { name = "triage", description = "tickets", canary_share = 0.3 }).status)
  end)
  after_each(function() e:stop() end)

  it("numbers immutable versions, lists, shows and diffs them", function()
    local r = e:post("/v1/prompts/triage/versions", v("Classify the ticket.\nBe brief.", { note = "first", author = "ana" }))
    assert.equal(201, r.status, r.body)
    assert.equal(1, r.json.version)
    assert.equal("candidate", r.json.status)
    assert.same({ "ticket" }, r.json.variables)
    r = e:post("/v1/prompts/triage/versions", v("Classify the ticket.\nAnswer in JSON.\nBe brief."))
    assert.equal(2, r.json.version)
    assert.equal(1, r.json.parent)
    local list = e:get("/v1/prompts/triage/versions").json
    assert.equal(2, #list.items)
    assert.equal("ana", list.items[1].author)
    assert.equal("Classify the ticket.\nBe brief.", e:get("/v1/prompts/triage/versions/1").json.messages[1].content)
    local d = e:get("/v1/prompts/triage/diff?from=1&to=2").json
    assert.equal("changed", d.messages[1].status)
    assert.same({ " Classify the ticket.", "+Answer in JSON.", " Be brief." }, d.messages[1].diff)
    assert.equal("same", d.messages[2].status)
  end)

  it("promotes, keeps one production and one canary, splits keys stickily, rolls back, and audits it all", function()
    for i = 1, 3 do e:post("/v1/prompts/triage/versions", v("version " .. i)) end
    assert.equal(404, e:get("/v1/prompts/triage?key=u1").status) -- nothing in production yet
    assert.equal(200, e:post("/v1/prompts/triage/promote", { version = 1, reason = "launch" }).status)
    assert.equal(409, e:post("/v1/prompts/triage/promote", { version = 1 }).status)
    local r = e:post("/v1/prompts/triage/canary", { version = 2 })
    assert.equal(200, r.status, r.body)
    assert.equal(2, r.json.canary)
    assert.equal("canary_exists", e:post("/v1/prompts/triage/canary", { version = 3 }).json.error.code)
    -- sticky split at the prompt's share (0.3)
    local canary, first = 0, {}
    for i = 1, 400 do
      local got = e:get("/v1/prompts/triage?key=user-" .. i).json
      first[i] = got.version
      if got.version == 2 then
        canary = canary + 1
        assert.equal("canary", got.chosen_by)
        assert.equal("canary", got.status)
      end
    end
    assert.is_true(canary > 80 and canary < 160, "canary share " .. canary .. "/400")
    for i = 1, 50 do assert.equal(first[i], e:get("/v1/prompts/triage?key=user-" .. i).json.version) end
    local v1 = e:get("/v1/prompts/triage/versions/1").json
    assert.same({ prompt = "triage", version = 1, status = "production", chosen_by = "production",
                  messages = v1.messages, model = v1.model, rendered = false },
                e:get("/v1/prompts/triage").json) -- no key: production
    -- rollback ends the canary first, then goes back a production version
    assert.equal(200, e:post("/v1/prompts/triage/rollback", { reason = "errors up" }).status)
    assert.equal(engine.json.null, e:get("/v1/prompts").json.items[1].canary)
    assert.equal(200, e:post("/v1/prompts/triage/promote", { version = 3 }).status)
    assert.equal(200, e:post("/v1/prompts/triage/rollback", {}).status)
    assert.equal(1, e:get("/v1/prompts/triage").json.version)
    -- an answer asked for before reflects the version's status now
    assert.same({ "rolled_back", "version" }, { e:get("/v1/prompts/triage?version=2").json.status,
                                              e:get("/v1/prompts/triage?version=2").json.chosen_by })
    local versions = e:get("/v1/prompts/triage/versions").json.items
    assert.equal("production", versions[1].status)
    assert.equal("rolled_back", versions[2].status)
    assert.equal("rolled_back", versions[3].status)
    local h = e:get("/v1/prompts/triage/history").json.items
    local moves = {}
    local null = engine.json.null
    for _, x in ipairs(h) do
      moves[#moves + 1] = (x.version ~= null and string.format("%d", x.version) or "-") .. ":" .. (x.from ~= null and x.from or "") .. ">" .. x.to
    end
    assert.same({ "-:>created", "1:>candidate", "2:>candidate", "3:>candidate", "1:candidate>production",
      "2:candidate>canary", "2:canary>rolled_back", "1:production>retired", "3:candidate>production",
      "3:production>rolled_back", "1:retired>production" }, moves)
    assert.equal("launch", h[5].reason)
  end)

  it("renders variables, resolves labels and versions, and pins", function()
    e:post("/v1/prompts/triage/versions", v("Classify."))
    e:post("/v1/prompts/triage/promote", { version = 1 })
    local r = e:get("/v1/prompts/triage?var.ticket=charged%20twice")
    assert.equal("charged twice", r.json.messages[2].content)
    assert.is_true(r.json.rendered)
    r = e:get("/v1/prompts/triage?var.other=x")
    assert.equal(400, r.status)
    assert.equal("variables.ticket", r.json.error.field)
    assert.equal(200, e:request("PUT", "/v1/prompts/triage/labels/staging", { body = { version = 1 } }).status)
    assert.equal(1, e:get("/v1/prompts/triage?label=staging").json.version)
    assert.equal(1, e:get("/v1/prompts/triage?label=latest").json.version)
    assert.equal(200, e:request("DELETE", "/v1/prompts/triage/labels/staging").status)
    assert.equal(404, e:get("/v1/prompts/triage?label=staging").status)
    local p = e:post("/v1/prompts/triage/pin", { reason = "audit freeze" }).json
    assert.is_true(p.pinned)
    assert.equal("audit freeze", p.pin_reason)
    assert.is_false(e:post("/v1/prompts/triage/unpin", {}).json.pinned)
  end)

  it("answers bad input with the field named, and keeps state across a restart", function()
    local bad = {
      { "/v1/prompts", { name = "bad name!" }, 400, "name" },
      { "/v1/prompts", { name = "triage" }, 409, "name" },
      { "/v1/prompts/nope/versions", v("x"), 404, "prompt" },
      { "/v1/prompts/triage/versions", { messages = {} }, 400, "messages" },
      { "/v1/prompts/triage/versions", { messages = { { role = "robot", content = "x" } } }, 400, "messages[0].role" },
      { "/v1/prompts/triage/versions", v("x", { model = { temperature = 9 } }), 400, "model.temperature" },
      { "/v1/prompts/triage/versions", v("x", { colour = "red" }), 400, "colour" },
      { "/v1/prompts/triage/versions", v("x", { model = { provider = "opnai", model = "m" } }), 422, "model.provider" },
      { "/v1/prompts/triage/promote", { version = 7 }, 404, "version" },
      { "/v1/prompts/triage/promote", {}, 400, "version" },
      { "/v1/prompts/triage/canary", { version = 1, share = 2 }, 400, "share" },
    }
    for _, b in ipairs(bad) do
      local r = e:post(b[1], b[2])
      assert.equal(b[3], r.status, b[1] .. " " .. r.body)
      assert.equal(b[4], r.json.error.field, r.body)
    end
    local unknown = e:post("/v1/prompts/triage/versions", v("x", { model = { provider = "opnai", model = "m" } }))
    assert.equal("unknown_provider", unknown.json.error.code)
    assert.matches("no provider 'opnai' is configured; did you mean 'openai'%? %(configured: openai%)",
      unknown.json.error.message)
    assert.equal(404, e:get("/v1/prompts/triage/versions/3").status)
    assert.equal(400, e:get("/v1/prompts/triage/diff?from=1").status)
    e:post("/v1/prompts/triage/versions", v("kept"))
    e:post("/v1/prompts/triage/promote", { version = 1 })
    e:stop { keep = true }
    local e2 = engine.start { dir = e.dir }
    local got = e2:get("/v1/prompts/triage").json
    assert.equal(1, got.version)
    assert.equal("kept", got.messages[1].content)
    e = e2
  end)
end)

describe("datasets", function()
  local e
  before_each(function() e = engine.start {} end)
  after_each(function() e:stop() end)

  local function import(name, lines, mode)
    return e:post("/v1/datasets/" .. name .. "/cases" .. (mode and ("?mode=" .. mode) or ""),
      table.concat(lines, "\n") .. "\n", { content_type = "application/x-ndjson" })
  end

  it("imports JSON Lines, versions every change, exports any version", function()
    local r = import("golden", { '{"id":"a","variables":{"t":"1"},"expected":"X","tags":["golden"]}',
                                 '{"variables":{"t":"2"}}' })
    assert.equal(200, r.status, r.body)
    assert.equal(1, r.json.version)
    assert.equal(2, r.json.cases)
    r = import("golden", { '{"id":"a","variables":{"t":"1"},"expected":"Y"}' }, "upsert")
    assert.equal(2, r.json.version)
    assert.equal(2, r.json.cases)
    r = e:request("DELETE", "/v1/datasets/golden/cases/a")
    assert.equal(3, r.json.version)
    assert.equal(1, r.json.cases)
    local v1 = e:get("/v1/datasets/golden/cases?version=1")
    assert.equal("application/x-ndjson", v1.headers["content-type"])
    local lines = {}
    for l in v1.body:gmatch("[^\n]+") do lines[#lines + 1] = engine.json.decode(l) end
    assert.equal(2, #lines)
    assert.equal("X", lines[1].expected)
    assert.matches("^case%-%x+$", lines[2].id) -- an id derived from the variables
    assert.equal("Y", engine.json.decode(e:get("/v1/datasets/golden/cases?version=2").body:match("[^\n]+")).expected)
    assert.equal("", e:get("/v1/datasets/golden/cases?version=3").body:match('"id":"a"') or "")
    r = import("golden", { '{"id":"z","variables":{}}' }, "replace")
    assert.equal(1, r.json.cases)
    assert.equal(4, e:get("/v1/datasets/golden").json.version)
  end)

  it("names the bad line, refuses duplicate ids, and adds a case from a trace", function()
    local r = import("d", { '{"id":"a","variables":{}}', '{"id":"b","variables":', '{"id":"c","variables":{}}' })
    assert.equal(400, r.status)
    assert.matches("^line 2", r.json.error.field)
    r = import("d", { '{"id":"a","variables":{}}', '{"id":"b","variables":[]}' })
    assert.equal("line 2: variables", r.json.error.field)
    r = import("d", { '{"id":"a","variables":{}}', '{"id":"a","variables":{"x":1}}' })
    assert.equal("duplicate_case", r.json.error.code)
    assert.matches("also used by line 1", r.json.error.message)
    assert.equal(200, import("d", { '{"id":"a","variables":{}}' }).status)
    r = import("d", { '{"id":"a","variables":{}}' })
    assert.equal(409, r.status)
    assert.equal("cases[0].id", r.json.error.field)
    r = import("d", { '{"id":"new","variables":{}}', '{"id":"a","variables":{}}' })
    assert.equal(409, r.status)
    assert.equal("cases[1].id", r.json.error.field)
    assert.equal(1, e:get("/v1/datasets/d").json.cases) -- nothing of the refused import is kept
    assert.equal(404, e:get("/v1/datasets/nope").status)
    assert.equal(400, e:post("/v1/datasets/d/cases?mode=merge", "{}").status)
    -- from a trace, with a corrected expected output
    assert.equal(200, e:post("/v1/traces", engine.trace { id = "tr-1" }).status)
    r = e:post("/v1/datasets/d/from-trace", { trace_id = "tr-1", expected = '{"category":"refund"}', tags = { "edge" } })
    assert.equal(200, r.status, r.body)
    local found
    for l in e:get("/v1/datasets/d/cases").body:gmatch("[^\n]+") do
      local c = engine.json.decode(l)
      if c.source_trace == "tr-1" then found = c end
    end
    assert.equal("hello", found.variables.text)
    assert.equal('{"category":"refund"}', found.expected)
    assert.equal(404, e:post("/v1/datasets/d/from-trace", { trace_id = "nope" }).status)
  end)
end)
