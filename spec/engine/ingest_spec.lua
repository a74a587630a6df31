-- POST /v1/traces and /v1/feedback, GET /v1/traces[/{id}]: formats, per-item
-- results, validation with JSON paths, idempotency, feedback, pagination.
local engine = require "spec.helpers.engine"
local json = engine.json
local trace = engine.trace

local function nested(depth)
  -- an object `depth` levels deep in total when used as metadata of a trace
  local s = string.rep('{"a":', depth - 1) .. "1" .. string.rep("}", depth - 1)
  return '{"prompt":{"name":"p"},"output":"x","metadata":' .. s .. "}"
end

describe("ingest", function()
  local e
  setup(function() e = engine.start() end)
  teardown(function() e:stop() end)

  it("accepts one trace and returns its id; the trace reads back", function()
    local res = e:post("/v1/traces", trace { id = "one-1", model = "gpt-4o-mini", latency_ms = 812,
      usage = { input_tokens = 120, output_tokens = 30 }, tool_calls = { { name = "lookup", arguments = { q = "x" } } },
      metadata = { user = "u1" } })
    assert.equal(200, res.status)
    assert.same({ accepted = 1, duplicate = 0, rejected = 0 },
      { accepted = res.json.accepted, duplicate = res.json.duplicate, rejected = res.json.rejected })
    assert.equal("one-1", res.json.items[1].id)
    local got = e:get("/v1/traces/one-1")
    assert.equal(200, got.status)
    assert.equal("ticket-triage", got.json.prompt.name)
    assert.equal(1, got.json.prompt.version)
    assert.equal(812, got.json.latency_ms)
    assert.equal("lookup", got.json.tool_calls[1].name)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT", got.json.timestamp)
    assert.matches("^%d%d%d%d%-", got.json.received_at)
    assert.same({}, got.json.feedback)
  end)

  it("assigns time-ordered ids when the client gives none", function()
    local res = e:post("/v1/traces", { trace(), trace() })
    assert.equal(200, res.status)
    local a, b = res.json.items[1].id, res.json.items[2].id
    assert.matches("^%x+%-%x+%-7%x+%-%x+%-%x+$", a)
    assert.is_true(a < b)
  end)

  it("accepts NDJSON and reports each line", function()
    local body = json.encode(trace { id = "nd-1" }) .. "\n\n" .. "{not json\n" .. json.encode(trace { id = "nd-2" }) .. "\n"
    local res = e:post("/v1/traces", body, { content_type = "application/x-ndjson" })
    assert.equal(200, res.status)
    assert.equal(2, res.json.accepted)
    assert.equal(1, res.json.rejected)
    assert.equal(3, res.json.items[2].line)
    assert.equal("rejected", res.json.items[2].status)
    assert.matches("not valid JSON", res.json.items[2].errors[1].message)
    -- NDJSON is also recognised without the content type
    res = e:post("/v1/traces", json.encode(trace { id = "nd-3" }) .. "\n" .. json.encode(trace { id = "nd-4" }),
      { content_type = "application/json" })
    assert.equal(2, res.json.accepted)
  end)

  it("is idempotent on the trace id", function()
    local t = trace { id = "dup-1" }
    assert.equal("accepted", e:post("/v1/traces", t).json.items[1].status)
    local res = e:post("/v1/traces", { t, t, trace { id = "dup-2" } })
    assert.equal(200, res.status)
    assert.equal("duplicate", res.json.items[1].status)
    assert.equal("duplicate", res.json.items[2].status)
    assert.equal("accepted", res.json.items[3].status)
    e:stop({ keep = true })
    assert.equal("1", e:sql("SELECT count(*) FROM traces WHERE id = 'dup-1'"))
    e = engine.start { dir = e.dir }
  end)

  it("rejects items with the JSON path and the reason, keeping the valid ones", function()
    local res = e:post("/v1/traces", {
      trace { id = "ok-1" },
      { prompt = { name = "p" } },                               -- no output
      { prompt = { name = 7 }, output = "x" },                    -- wrong type
      trace { latency_ms = -1 },
      trace { usage = { input_tokens = 1.5 } },
      trace { colour = "blue" },                                   -- unknown field
      trace { timestamp = "yesterday" },
      trace { input = { variables = "x" } },
      trace { input = { messages = { { role = "robot", content = "hi" } } } },
      trace { id = "bad id with spaces" },
    })
    assert.equal(200, res.status)
    assert.equal(1, res.json.accepted)
    assert.equal(9, res.json.rejected)
    local function err(i) return res.json.items[i].errors[1] end
    assert.same({ path = "$[1].output", message = "is required (or give error for a failed call)" }, err(2))
    assert.same({ path = "$[2].prompt.name", message = "must be a string (got integer)" }, err(3))
    assert.equal("$[3].latency_ms", err(4).path)
    assert.equal("$[4].usage.input_tokens", err(5).path)
    assert.equal("$[5].colour", err(6).path)
    assert.equal("$[6].timestamp", err(7).path)
    assert.equal("$[7].input.variables", err(8).path)
    assert.equal("$[8].input.messages[0].role", err(9).path)
    assert.equal("$[9].id", err(10).path)
  end)

  it("answers 422 when every item is rejected", function()
    local res = e:post("/v1/traces", { output = "x" })
    assert.equal(422, res.status)
    assert.equal("invalid_items", res.json.error.code)
    assert.equal("$.prompt", res.json.items[1].errors[1].path)
    assert.equal("is required", res.json.items[1].errors[1].message)
  end)

  it("refuses malformed JSON with line and column", function()
    local res = e:post("/v1/traces", '[{"prompt": {"name": "p"}, "output": }]', { content_type = "application/json" })
    assert.equal(400, res.status)
    assert.equal("malformed_json", res.json.error.code)
    assert.matches("line 1 column", res.json.error.message)
  end)

  it("refuses an empty body, a JSON scalar batch and other media types", function()
    assert.equal("empty_body", e:post("/v1/traces", "", { content_type = "application/json" }).json.error.code)
    local scalar = e:post("/v1/traces", "42", { content_type = "application/json" })
    assert.equal(400, scalar.status)
    assert.matches("must be a JSON object", scalar.json.error.message)
    local res = e:post("/v1/traces", "a=b", { content_type = "application/x-www-form-urlencoded" })
    assert.equal(415, res.status)
    assert.equal("content-type", res.json.error.field)
  end)

  it("answers a compressed body 415 naming the supported encodings, not malformed JSON", function()
    local gz = io.popen("printf '%s' '{\"prompt\":{\"name\":\"p\"},\"output\":\"x\"}' | gzip -c")
    local body = gz:read("a")
    gz:close()
    for _, path in ipairs { "/v1/traces", "/v1/feedback", "/v1/datasets/d/cases" } do
      local res = e:post(path, body, { content_type = "application/json", headers = { ["Content-Encoding"] = "gzip" } })
      assert.equal(415, res.status, path .. ": " .. res.body)
      assert.equal("unsupported_encoding", res.json.error.code)
      assert.equal("content-encoding", res.json.error.field)
      assert.matches("Content%-Encoding 'gzip' is not supported.*supported encodings: identity", res.json.error.message)
      assert.equal("identity", res.headers["accept-encoding"])
    end
    local plain = e:post("/v1/traces", trace { id = "identity-ok" },
      { headers = { ["Content-Encoding"] = "identity" } })
    assert.equal(200, plain.status, plain.body)
  end)

  it("rejects invalid UTF-8", function()
    local res = e:post("/v1/traces", '{"prompt":{"name":"p"},"output":"bad \255\254 bytes"}',
      { content_type = "application/json" })
    assert.equal(400, res.status)
    assert.matches("UTF%-8", res.json.error.message)
    local body = json.encode(trace { id = "utf-ok" }) .. "\n" .. '{"prompt":{"name":"p"},"output":"\192\128"}'
    res = e:post("/v1/traces", body, { content_type = "application/x-ndjson" })
    assert.equal(1, res.json.accepted)
    assert.matches("UTF%-8", res.json.items[2].errors[1].message)
    -- past U+10FFFF, and a lone surrogate encoded directly
    for _, bad in ipairs { "\244\144\128\128", "\237\160\128" } do
      res = e:post("/v1/traces", '{"prompt":{"name":"p"},"output":"' .. bad .. '"}', { content_type = "application/x-ndjson" })
      assert.equal(422, res.status)
      assert.matches("UTF%-8", res.json.items[1].errors[1].message)
    end
  end)

  it("rejects NUL characters and duplicate keys", function()
    local res = e:post("/v1/traces", '{"prompt":{"name":"p"},"output":"a\\u0000b"}', { content_type = "application/json" })
    assert.equal(400, res.status)
    assert.matches("NUL", res.json.error.message)
    res = e:post("/v1/traces", '[{"prompt":{"name":"p"},"output":"a","output":"b"}]', { content_type = "application/json" })
    assert.equal(422, res.status)
    assert.matches("key 'output' twice", res.json.items[1].errors[1].message)
    local keys = {}
    for i = 1, 40 do keys[i] = string.format('"k%d":1', i % 39) end
    res = e:post("/v1/traces", '{"prompt":{"name":"p"},"output":"a","metadata":{' .. table.concat(keys, ",") .. '}}',
      { content_type = "application/json" })
    assert.equal(422, res.status)
    assert.matches("twice", res.json.items[1].errors[1].message)
  end)

  it("accepts nesting of 64 levels and rejects 65", function()
    local res = e:post("/v1/traces", nested(64), { content_type = "application/json" })
    assert.equal(200, res.status)
    res = e:post("/v1/traces", nested(65), { content_type = "application/json" })
    assert.equal(422, res.status)
    assert.matches("nested deeper than 64", res.json.items[1].errors[1].message)
    -- far deeper than any parser stack should take: refused, engine fine
    res = e:post("/v1/traces", string.rep("[", 100000) .. string.rep("]", 100000), { content_type = "application/json" })
    assert.equal(400, res.status)
    assert.equal(200, e:get("/healthz").status)
  end)

  it("takes a 10,000-item batch and refuses 10,001", function()
    local lines = {}
    for i = 1, 10000 do lines[i] = json.encode(trace { id = "bulk-" .. i }) end
    local res = e:post("/v1/traces", table.concat(lines, "\n"), { content_type = "application/x-ndjson" })
    assert.equal(200, res.status)
    assert.equal(10000, res.json.accepted)
    assert.equal(10000, #res.json.items)
    lines[10001] = json.encode(trace { id = "bulk-10001" })
    res = e:post("/v1/traces", table.concat(lines, "\n"), { content_type = "application/x-ndjson" })
    assert.equal(413, res.status)
    assert.equal("too_many_items", res.json.error.code)
    res = e:post("/v1/traces", "[" .. table.concat(lines, ",") .. "]", { content_type = "application/json" })
    assert.equal(413, res.status)
    assert.equal(404, e:get("/v1/traces/bulk-10001").status)
  end)

  describe("feedback", function()
    it("records explicit feedback on a trace", function()
      e:post("/v1/traces", trace { id = "fb-1" })
      local res = e:post("/v1/feedback", { id = "fb-1-a", trace_id = "fb-1", thumbs = "down", comment = "wrong category",
        who = "agent-7", score = 0.2, label = "billing" })
      assert.equal(200, res.status)
      assert.equal("accepted", res.json.items[1].status)
      assert.equal("duplicate", e:post("/v1/feedback", { id = "fb-1-a", trace_id = "fb-1", thumbs = "down" }).json.items[1].status)
      local got = e:get("/v1/traces/fb-1").json
      assert.equal(1, #got.feedback)
      assert.equal("down", got.feedback[1].thumbs)
      assert.equal("explicit", got.feedback[1].source)
      assert.equal("agent-7", got.feedback[1].who)
    end)

    it("takes inline feedback carried by a trace", function()
      e:post("/v1/traces", trace { id = "fb-inline", feedback = { thumbs = "up", who = "user" } })
      local got = e:get("/v1/traces/fb-inline").json
      assert.equal(1, #got.feedback)
      assert.equal("inline", got.feedback[1].source)
      assert.equal("up", got.feedback[1].thumbs)
    end)

    it("marks a trace as retried when a later one names it in retry_of", function()
      e:post("/v1/traces", trace { id = "first-try" })
      e:post("/v1/traces", trace { id = "second-try", retry_of = "first-try" })
      local got = e:get("/v1/traces/first-try").json
      assert.equal(1, #got.feedback)
      assert.equal("retry", got.feedback[1].source)
      assert.equal("second-try", got.feedback[1].retried_by)
    end)

    it("rejects feedback on an unknown trace and bad fields", function()
      local res = e:post("/v1/feedback", { { trace_id = "no-such-trace", thumbs = "up" },
        { trace_id = "fb-1", thumbs = "sideways" }, { trace_id = "fb-1" }, { thumbs = "up" },
        { trace_id = "fb-1", score = 3 } })
      assert.equal(422, res.status)
      assert.same({ path = "$[0].trace_id", message = "no trace has this id" }, res.json.items[1].errors[1])
      assert.equal("$[1].thumbs", res.json.items[2].errors[1].path)
      assert.matches("at least one of", res.json.items[3].errors[1].message)
      assert.equal("$[3].trace_id", res.json.items[4].errors[1].path)
      assert.equal("$[4].score", res.json.items[5].errors[1].path)
    end)
  end)

  describe("listing", function()
    setup(function()
      local batch = {}
      for i = 1, 25 do
        batch[i] = trace { id = string.format("list-%02d", i), prompt = { name = "lister", version = (i % 2) + 1 },
          timestamp = string.format("2026-01-01T00:00:%02dZ", i) }
      end
      assert.equal(25, e:post("/v1/traces", batch).json.accepted)
    end)

    it("pages newest first with a cursor and filters by prompt and version", function()
      local seen, cursor = {}, nil
      repeat
        local res = e:get("/v1/traces?prompt=lister&limit=10" .. (cursor and ("&cursor=" .. cursor) or ""))
        assert.equal(200, res.status)
        for _, t in ipairs(res.json.items) do seen[#seen + 1] = t.id end
        cursor = res.json.next_cursor
      until cursor == nil or cursor == json.null
      assert.equal(25, #seen)
      assert.equal("list-25", seen[1])
      assert.equal("list-01", seen[25])
      local res = e:get("/v1/traces?prompt=lister&version=2&limit=100")
      assert.equal(13, #res.json.items)
      res = e:get("/v1/traces?prompt=lister&since=2026-01-01T00:00:10Z&until=2026-01-01T00:00:15Z")
      assert.equal(5, #res.json.items)
    end)

    it("names the bad parameter", function()
      local cases = {
        { "/v1/traces?limit=0", "limit" }, { "/v1/traces?limit=abc", "limit" }, { "/v1/traces?version=-1", "version" },
        { "/v1/traces?since=yesterday", "since" }, { "/v1/traces?cursor=zzz", "cursor" },
        { "/v1/traces?colour=red", "colour" },
      }
      for _, c in ipairs(cases) do
        local res = e:get(c[1])
        assert.equal(400, res.status)
        assert.equal(c[2], res.json.error.field)
      end
      assert.equal(404, e:get("/v1/traces/does-not-exist").status)
    end)
  end)
end)
