-- LLM calls end to end: the real engine calls the real fake LLM server
-- (`ratchet fake-llm`) over loopback; faults are injected on the server.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"

local KEY = "sk-spec-4f1d8c2a9b7e6d5c3b2a1908"

local function provider(name, fake, extra)
  return string.format([[
provider %q {
  kind = %q, base_url = %q, api_key = env("SPEC_LLM_KEY"), default_model = "m-1",
  max_retries = 3, backoff_base_ms = 20, backoff_max_ms = 100, timeout_ms = 2000, idle_timeout_ms = 0,
  models = { ["m-1"] = { input_per_mtok = 2, output_per_mtok = 10 } },
  %s
}
]], name, extra and extra.kind or "openai", "http://" .. fake.addr .. "/v1", extra and extra.more or "")
end

local function chat(e, body)
  return e:post("/v1/llm/chat", body)
end

local function msg(text) return { provider = "fake", messages = { { role = "user", content = text } } } end

local function gaps(arrivals)
  local g = {}
  for i = 2, #arrivals do g[#g + 1] = arrivals[i] - arrivals[i - 1] end
  return g
end

describe("LLM calls", function()
  local fake, e
  setup(function()
    fake = fake_llm.start { api_key = KEY }
    e = engine.start { config = provider("fake", fake) .. provider("claude", fake, { kind = "anthropic" }) ..
                         provider("azure", fake, { more = 'auth = "api-key", query = { ["api-version"] = "2024-10-21" },' }),
                       env = { SPEC_LLM_KEY = KEY } }
  end)
  teardown(function()
    local log = e:log_text()
    e:stop()
    fake:stop()
    assert.is_nil(log:find(KEY, 1, true), "the API key is in the engine's log")
  end)
  before_each(function() fake:reset() end)

  it("calls an OpenAI-compatible server and normalises the answer", function()
    local r = chat(e, { provider = "fake", system = "be brief", temperature = 0.2, seed = 7, max_tokens = 50,
      stop = { "END" }, response_format = { type = "json_object" },
      messages = { { role = "user", content = "hello" } },
      tools = { { name = "lookup", description = "find", parameters = { type = "object" } } } })
    assert.equal(200, r.status, r.body)
    assert.equal("echo: hello", r.json.text)
    assert.equal("stop", r.json.finish_reason)
    assert.equal(1, r.json.attempts)
    assert.equal("fake", r.json.provider)
    assert.equal("m-1", r.json.model)
    assert.truthy(r.json.usage.input_tokens > 0)
    local cost = (r.json.usage.input_tokens * 2 + r.json.usage.output_tokens * 10) / 1e6
    assert.near(cost, r.json.cost, 1e-12)
    assert.matches("^fake%-%d+$", r.json.request_id)
    local st = fake:stats()
    assert.equal("ok", st.last_request.auth)
    assert.equal("/v1/chat/completions", st.last_request.url)
    local sent = st.last_request.body
    assert.same({ role = "system", content = "be brief" }, sent.messages[1])
    assert.equal(7, sent.seed)
    assert.same({ type = "json_object" }, sent.response_format)
    assert.same({ "END" }, sent.stop)
    assert.equal("function", sent.tools[1].type)
    assert.equal("lookup", sent.tools[1]["function"].name)
  end)

  it("maps to Anthropic's Messages API: system lifted out, x-api-key and anthropic-version sent", function()
    local r = chat(e, { provider = "claude", system = "be brief", stop = "END",
      messages = { { role = "system", content = "and kind" }, { role = "user", content = "hi" } } })
    assert.equal(200, r.status, r.body)
    assert.equal("echo: hi", r.json.text)
    local st = fake:stats()
    assert.equal("/v1/messages", st.last_request.url)
    assert.equal("(redacted)", st.last_request.headers["x-api-key"])
    assert.equal("2023-06-01", st.last_request.headers["anthropic-version"])
    assert.equal("be brief\n\nand kind", st.last_request.body.system)
    assert.equal(1024, st.last_request.body.max_tokens)
    assert.same({ "END" }, st.last_request.body.stop_sequences)
    assert.equal(1, #st.last_request.body.messages)
  end)

  it("speaks Azure's dialect: api-key header and api-version query", function()
    local r = chat(e, { provider = "azure", messages = { { role = "user", content = "hi" } } })
    assert.equal(200, r.status, r.body)
    local st = fake:stats()
    assert.equal("/v1/chat/completions?api-version=2024-10-21", st.last_request.url)
    assert.equal("(redacted)", st.last_request.headers["api-key"])
    assert.is_nil(st.last_request.headers.authorization)
    assert.equal("ok", st.last_request.auth)
  end)

  it("honours Retry-After on 429 (seconds) and retries once", function()
    fake:faults { { status = 429, retry_after = 1 } }
    local r = chat(e, msg("x"))
    assert.equal(200, r.status, r.body)
    assert.equal(2, r.json.attempts)
    local g = gaps(fake:stats().arrivals_ms)
    assert.equal(1, #g)
    -- libuv's cached loop time can make a 1 s wait measure a fraction of a millisecond short
    assert.truthy(g[1] >= 998 and g[1] < 1000 + 500 * engine.slow, "waited " .. g[1] .. " ms")
  end)

  it("honours retry-after-ms", function()
    fake:faults { { status = 429, retry_after_ms = 300 } }
    local r = chat(e, msg("x"))
    assert.equal(200, r.status, r.body)
    local g = gaps(fake:stats().arrivals_ms)
    -- libuv timers start from the loop's cached time, up to a millisecond stale
    assert.truthy(g[1] >= 298 and g[1] < 300 + 300 * engine.slow, "waited " .. g[1] .. " ms")
  end)

  it("retries 500, 529, 408 and 409 with capped backoff, then succeeds", function()
    fake:faults { { status = 500 }, { status = 529 }, { status = 408 } }
    local r = chat(e, msg("x"))
    assert.equal(200, r.status, r.body)
    assert.equal(4, r.json.attempts)
    for _, g in ipairs(gaps(fake:stats().arrivals_ms)) do
      assert.truthy(g <= 100 + 100 * engine.slow, "a backoff of " .. g .. " ms passed backoff_max_ms")
    end
    fake:faults { { status = 409 } }
    assert.equal(2, chat(e, msg("x")).json.attempts)
  end)

  it("gives up after max_retries with the last error", function()
    fake:faults { { status = 429, retry_after_ms = 1, times = 4 } }
    local r = chat(e, msg("x"))
    assert.equal(502, r.status)
    assert.equal("rate_limited", r.json.error.code)
    assert.matches("HTTP 429", r.json.error.message)
    assert.equal(4, fake:stats().requests) -- 1 + max_retries 3
  end)

  it("does not retry other 4xx and says what the provider said", function()
    fake:faults { { status = 400, message = "messages: too long" } }
    local r = chat(e, msg("x"))
    assert.equal(502, r.status)
    assert.equal("rejected", r.json.error.code)
    assert.matches("messages: too long", r.json.error.message, 1, true)
    assert.equal(1, fake:stats().requests)
  end)

  it("retries a reset connection and a truncated body; not invalid JSON", function()
    fake:faults { { reset = true }, { truncate = true } }
    local r = chat(e, msg("x"))
    assert.equal(200, r.status, r.body)
    assert.equal(3, r.json.attempts)
    fake:faults { { invalid_json = true } }
    r = chat(e, msg("x"))
    assert.equal(502, r.status)
    assert.equal("invalid_response", r.json.error.code)
  end)

  it("times out a stalled answer within the call's timeout, retries included", function()
    fake:faults { { stall = true } }
    local r = chat(e, { provider = "fake", messages = { { role = "user", content = "x" } }, timeout_ms = 1500 })
    -- the first attempt stalls until the call's deadline; nothing is left for a retry
    assert.equal(502, r.status)
    assert.equal("timeout", r.json.error.code)
    fake:reset()
    fake:faults { { delay_ms = 100 } }
    r = chat(e, msg("x"))
    assert.equal(200, r.status)
  end)

  it("rejects bad requests naming the field, without calling the provider", function()
    local cases = {
      { { messages = {} }, "messages" },
      { { messages = { { role = "robot", content = "x" } } }, "messages[1].role" },
      { { messages = { { role = "user", content = "x" } }, temperature = 3 }, "temperature" },
      { { messages = { { role = "user", content = "x" } }, max_tokens = 0 }, "max_tokens" },
      { { messages = { { role = "user", content = "x" } }, bogus = 1 }, nil },
      { { messages = { { role = "user", content = "x" } }, provider = "nope" }, "provider" },
      { { messages = { { role = "user", content = "x" } }, tools = { { description = "no name" } } }, "tools[1].name" },
    }
    for _, c in ipairs(cases) do
      local r = chat(e, c[1])
      assert.equal(400, r.status, r.body)
      if c[2] then assert.equal(c[2], r.json.error.field, r.body) end
    end
    assert.equal(0, fake:stats().requests)
    local r = e:post("/v1/llm/chat", "not json", { content_type = "application/json" })
    assert.equal(400, r.status)
  end)

  it("keeps a ledger of every call, and never stores the key", function()
    local function newest()
      local r = e:get("/v1/llm/calls?caller_kind=other&limit=5")
      assert.equal(200, r.status)
      return r.json.items[1]
    end
    local before = newest()
    local answer = chat(e, msg("ledger"))
    assert.equal(200, answer.status, answer.body)
    -- the ledger row is committed after the answer (a call never waits for it): wait for it,
    -- or a slow fsync shows an older call's row (it did: the stalled call's 'timeout' above)
    local c = engine.eventually(5, function()
      local n = newest()
      return n and (not before or n.id ~= before.id) and n
    end)
    assert(c, "the call never reached the ledger")
    assert.equal("api", c.caller)
    assert.equal("fake", c.provider)
    assert.equal("ok", c.status)
    assert.truthy(c.input_tokens > 0 and c.cost > 0)
    assert.equal(400, e:get("/v1/llm/calls?caller_kind=robot").status)
    assert.equal(400, e:get("/v1/llm/calls?limit=0").status)
    assert.is_nil(e:sql("select * from llm_calls"):find(KEY, 1, true))
    assert.is_nil(e:get("/v1/status").body:find(KEY, 1, true))
  end)
end)

describe("LLM limits", function()
  it("a wrong key is an auth error, not retried, and the key shows nowhere", function()
    local fake = fake_llm.start { api_key = "sk-the-right-one-0000000000" }
    local e = engine.start { config = provider("fake", fake), env = { SPEC_LLM_KEY = KEY } }
    local r = chat(e, msg("x"))
    assert.equal(502, r.status)
    assert.equal("auth", r.json.error.code)
    assert.matches("refused the API key", r.json.error.message, 1, true)
    assert.equal(1, fake:stats().requests)
    assert.equal(1, fake:stats().auth.wrong)
    assert.is_nil(r.body:find(KEY, 1, true))
    local log = e:log_text()
    e:stop()
    fake:stop()
    assert.is_nil(log:find(KEY, 1, true))
  end)

  it("retries a refused connection, then says it could not connect", function()
    local gone = fake_llm.start {}
    gone:stop() -- its port is now closed
    local e = engine.start { config = provider("gone", gone), env = { SPEC_LLM_KEY = KEY } }
    local r = chat(e, { provider = "gone", messages = { { role = "user", content = "x" } } })
    assert.equal(502, r.status)
    assert.equal("connect", r.json.error.code)
    local calls = engine.eventually(5, function()
      local items = e:get("/v1/llm/calls").json.items
      return #items > 0 and items
    end)
    assert.equal(4, calls[1].attempts) -- 1 + max_retries 3
    e:stop()
  end)

  it("fails an attempt that receives nothing for idle_timeout_ms", function()
    local fake = fake_llm.start {}
    local e = engine.start { config = provider("fake", fake, { more = "max_retries = 0," }):gsub("idle_timeout_ms = 0", "idle_timeout_ms = 1000")
                               :gsub("timeout_ms = 2000", "timeout_ms = 30000"), env = { SPEC_LLM_KEY = KEY } }
    fake:faults { { stall = true } }
    local socket = require "socket"
    local t0 = socket.gettime()
    local r = chat(e, msg("x"))
    local took = socket.gettime() - t0
    assert.equal("timeout", r.json.error.code, r.body)
    assert.truthy(took >= 0.9 and took < 5 * engine.slow, "took " .. took .. " s")
    e:stop()
    fake:stop()
  end)

  it("opens the circuit after repeated failures and fails fast", function()
    local fake = fake_llm.start {}
    local e = engine.start { config = provider("fake", fake, { more = "max_retries = 0, circuit_failures = 3, circuit_cooldown_ms = 400," }),
                             env = { SPEC_LLM_KEY = KEY } }
    fake:faults { { status = 500, times = 10 } }
    for _ = 1, 3 do assert.equal("server_error", chat(e, msg("x")).json.error.code) end
    local r = chat(e, msg("x"))
    assert.equal(503, r.status)
    assert.equal("circuit_open", r.json.error.code)
    assert.equal(3, fake:stats().requests)
    assert.equal("open", e:get("/v1/status").json.llm.providers[1].circuit)
    engine.sleep(0.5)
    fake:reset()
    assert.equal(200, chat(e, msg("x")).status) -- the half-open probe succeeds
    assert.equal("closed", e:get("/v1/status").json.llm.providers[1].circuit)
    e:stop()
    fake:stop()
  end)

  it("enforces budgets before sending", function()
    local fake = fake_llm.start {}
    local e = engine.start { config = provider("fake", fake) .. "llm = { daily_calls = 2 }", env = { SPEC_LLM_KEY = KEY } }
    assert.equal(200, chat(e, msg("a")).status)
    assert.equal(200, chat(e, msg("b")).status)
    local r = chat(e, msg("c"))
    assert.equal(429, r.status)
    assert.equal("budget_exceeded", r.json.error.code)
    assert.matches("daily call budget", r.json.error.message)
    assert.equal(2, fake:stats().requests)
    e:stop { keep = true }
    -- spending survives a restart: it is read back from the ledger
    local e2 = engine.start { dir = e.dir, config = provider("fake", fake) .. "llm = { daily_calls = 2 }",
                              env = { SPEC_LLM_KEY = KEY } }
    assert.equal(429, chat(e2, msg("d")).status)
    e2:stop()
    fake:stop()
  end)

  it("refuses a token budget a call could pass, and a cost budget for a model with no price", function()
    local fake = fake_llm.start {}
    local e = engine.start { config = provider("fake", fake) .. "llm = { daily_tokens = 500, daily_cost = 1 }",
                             env = { SPEC_LLM_KEY = KEY } }
    local r = chat(e, { messages = { { role = "user", content = "x" } }, max_tokens = 1000 })
    assert.equal(429, r.status)
    assert.matches("daily token budget", r.json.error.message)
    r = chat(e, { model = "unpriced", messages = { { role = "user", content = "x" } }, max_tokens = 10 })
    assert.equal(429, r.status)
    assert.matches("no price", r.json.error.message)
    assert.equal(200, chat(e, { messages = { { role = "user", content = "x" } }, max_tokens = 10 }).status)
    assert.equal(1, fake:stats().requests)
    e:stop()
    fake:stop()
  end)

  it("holds calls beyond the provider's concurrency", function()
    local fake = fake_llm.start { latency_ms = 300 }
    local e = engine.start { config = provider("fake", fake, { more = "concurrency = 2," }), env = { SPEC_LLM_KEY = KEY } }
    -- four calls at once through raw connections
    local conns = {}
    for i = 1, 4 do
      local c = e:connect()
      local body = engine.json.encode(msg("c" .. i))
      c:send("POST /v1/llm/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " .. #body ..
        "\r\n\r\n" .. body)
      conns[i] = c
    end
    for _, c in ipairs(conns) do
      assert.equal(200, engine.read_response(c).status)
      c:close()
    end
    local a = fake:stats().arrivals_ms
    table.sort(a)
    assert.equal(4, #a)
    assert.truthy(a[2] - a[1] < 150, "the first two went together")
    assert.truthy(a[3] - a[1] >= 250, "the third waited for a slot: " .. (a[3] - a[1]) .. " ms")
    e:stop()
    fake:stop()
  end)

  it("paces calls with tokens_per_minute, counting each call's worst case", function()
    local fake = fake_llm.start {}
    local e = engine.start { config = provider("fake", fake, { more = "tokens_per_minute = 6000," }),
                             env = { SPEC_LLM_KEY = KEY } }
    -- each call reserves its input estimate plus max_tokens (about 2040 tokens):
    -- two fit in the full bucket, the third waits for ~80 tokens at 100 a second
    local big = { provider = "fake", max_tokens = 2000, messages = { { role = "user", content = "x" } } }
    local socket = require "socket"
    local t0 = socket.gettime()
    assert.equal(200, chat(e, big).status)
    assert.equal(200, chat(e, big).status)
    local t1 = socket.gettime()
    assert.equal(200, chat(e, big).status)
    local t2 = socket.gettime()
    -- the bucket refills while the first two calls run (on a loaded machine they
    -- can take half a second), so the wait is bounded from the first call: the
    -- bucket was at most full then, and the three need ~80 tokens more than it holds
    local since_first, waited = t2 - t0, t2 - t1
    assert.truthy(since_first >= 0.5, "the three calls took " .. since_first .. " s") -- unpaced, a few ms
    assert.truthy(waited < 3 * engine.slow, "waited " .. waited .. " s")
    e:stop()
    fake:stop()
  end)

  it("paces calls with requests_per_minute", function()
    local fake = fake_llm.start {}
    local e = engine.start { config = provider("fake", fake, { more = "requests_per_minute = 30," }),
                             env = { SPEC_LLM_KEY = KEY } }
    -- the bucket starts full (30) and refills one call every 2 s: drain it,
    -- and the next call waits for the refill (less what draining took)
    local socket = require "socket"
    local t0 = socket.gettime()
    for _ = 1, 30 do assert.equal(200, chat(e, msg("x")).status) end
    local t1 = socket.gettime()
    assert.equal(200, chat(e, msg("x")).status)
    local waited = socket.gettime() - t1
    assert.truthy(waited >= 2 - (t1 - t0) - 0.1, "waited " .. waited .. " s after draining in " .. (t1 - t0) .. " s")
    e:stop()
    fake:stop()
  end)
end)

describe("LLM configuration", function()
  local function check(conf)
    local dir = engine.tmpdir()
    engine.write_file(dir .. "/ratchet.conf", conf)
    local code, _, err = engine.run("check -q -c " .. dir .. "/ratchet.conf")
    os.execute("rm -rf " .. dir)
    return code, err
  end

  it("names the line and the field of a bad provider", function()
    local code, err = check('provider "x" { kind = "openai", timeout = 5 }\n')
    assert.equal(3, code)
    assert.matches("ratchet.conf:1:.*provider 'x': unknown key 'timeout'", err)
    code, err = check('\nprovider "x" { kind = "cohere" }\n')
    assert.matches("ratchet.conf:2:.*'kind' must be", err)
    code, err = check('provider "x" { kind = "openai", base_url = "ftp://h/v1" }\n')
    assert.matches("base_url", err)
    code, err = check('provider "x" { kind = "openai", auth = "bearer" }\n')
    assert.matches("no api_key", err)
    code, err = check('provider "x" { kind = "openai", models = { m = { input_per_mtok = -1, output_per_mtok = 1 } } }\n')
    assert.matches("models%[\"m\"%]", err)
    code, err = check('provider "x" { kind = "openai" }\nprovider "x" { kind = "openai" }\n')
    assert.matches("declared twice", err)
    code, err = check('llm = { daily_cost = -1 }\n')
    assert.matches("llm.daily_cost", err)
    code, err = check('http = { allow = { "ftp://x/" } }\n')
    assert.matches("http.allow%[1%]", err)
    assert.equal(0, (check('provider "x" { kind = "anthropic", api_key = "k", query = { ["api-version"] = "1" } }\n')))
  end)
end)
