-- Gateway mode (docs/gateway.md) driven by the official SDKs, unmodified:
-- the `openai` and `@anthropic-ai/sdk` npm packages on node 22 call the real
-- engine, whose upstream is the real fake LLM server (`ratchet fake-llm`).
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local node = require "spec.helpers.node"
local cjson = require "cjson"

local UPSTREAM_KEY = "sk-upstream-gw-spec-0f9e8d7c6b5a"

-- runs a scenario of spec/clients/gateway_{openai,anthropic}.mjs; returns its JSON answer
local function sdk(which, scenario, e, args, key)
  local code, out, err = node.run("gateway_" .. which .. ".mjs",
    { BASE_URL = "http://" .. e.addr, API_KEY = key or "none", ARGS = cjson.encode(args or {}) }, scenario)
  assert(code == 0, "node failed: " .. tostring(err) .. tostring(out))
  local line = out:match("[^\n]+")
  assert(line, "no output; stderr: " .. tostring(err))
  return cjson.decode(line)
end

local function providers(fake, extra)
  return string.format([[
provider "oa" { kind = "openai", base_url = %q, api_key = %q, default_model = "m-1", max_retries = 0 }
provider "an" { kind = "anthropic", base_url = %q, api_key = %q, default_model = "c-1", max_retries = 0 }
%s
]], "http://" .. fake.addr .. "/v1", UPSTREAM_KEY, "http://" .. fake.addr .. "/v1", UPSTREAM_KEY, extra or "")
end

local function trace(e, id)
  return engine.eventually(5, function()
    local r = e:get("/v1/traces/" .. id)
    return r.status == 200 and r.json
  end)
end

-- the fake's model: tool calls when asked for, else an echo
local MODEL = [[
return function(req, api)
  local last = req.messages[#req.messages]
  local c = type(last.content) == "string" and last.content or (last.content[1] and last.content[1].text) or ""
  if c:find("weather", 1, true) then
    return { text = "", tool_calls = { { name = "get_weather", arguments = { city = "Paris" } } } }
  end
  local sys = req.system or (req.messages[1].role == "system" and req.messages[1].content) or ""
  if type(sys) == "table" then sys = sys[1].text end
  return "echo: " .. c .. (sys ~= "" and (" | system: " .. sys) or "") .. " | model: " .. req.model
end
]]

describe("the gateway", function()
  local fake, e
  setup(function()
    fake = fake_llm.start { api_key = UPSTREAM_KEY, model = MODEL }
    e = engine.start { config = providers(fake, 'gateway = { providers = { "oa", "an" }, retry_window_ms = 60000, '
      .. 'timeout_ms = 1500, idle_timeout_ms = 1000 }') }
    assert.equal(201, e:post("/v1/prompts", { name = "triage", canary_share = 0.5 }).status)
    local function version(text, provider, model)
      local r = e:post("/v1/prompts/triage/versions", { messages = { { role = "system", content = text } },
        model = { provider = provider, model = model, temperature = 0 } })
      assert.equal(201, r.status, r.body)
    end
    version("Classify {{ticket}}. (v1)", "oa", "gpt-v1")
    version("Classify {{ticket}} carefully. (v2)", "oa", "gpt-v2")
    assert.equal(200, e:post("/v1/prompts/triage/promote", { version = 1 }).status)
    assert.equal(200, e:post("/v1/prompts/triage/canary", { version = 2, share = 0.5 }).status)
    -- a prompt whose provider speaks the other protocol
    assert.equal(201, e:post("/v1/prompts", { name = "claude-triage" }).status)
    assert.equal(201, e:post("/v1/prompts/claude-triage/versions", { messages = { { role = "system",
      content = "Sort {{ticket}}." } }, model = { provider = "an", model = "claude-x", max_tokens = 64 } }).status)
    assert.equal(200, e:post("/v1/prompts/claude-triage/promote", { version = 1 }).status)
  end)
  teardown(function()
    if e then e:stop() end
    if fake then fake:stop() end
  end)
  before_each(function() fake:reset() end)

  describe("with the OpenAI SDK", function()
    it("passes a chat completion through with the provider's key and captures the trace", function()
      local r = sdk("openai", "chat", e, { model = "gpt-4o-mini", messages = { { role = "user", content = "hi" } } })
      assert.equal(200, r.status, cjson.encode(r))
      assert.equal("echo: hi | model: gpt-4o-mini", r.body.choices[1].message.content)
      assert.equal(r.trace_header, r.body.ratchet_trace_id)
      local st = fake:stats()
      assert.equal(1, st.auth.ok) -- the provider's key went upstream; the caller's did not
      local t = trace(e, r.trace_header)
      assert.equal("passthrough/gpt-4o-mini", t.prompt.name)
      assert.equal("echo: hi | model: gpt-4o-mini", t.output)
      assert.equal("pass-through", t.metadata.gateway.mode)
      assert.truthy(t.usage.output_tokens > 0)
    end)

    it("streams chunk by chunk with usage in the final chunk, and assembles the trace at the end", function()
      local r = sdk("openai", "stream", e, { model = "gpt-4o-mini", messages = { { role = "user", content = "stream me" } },
        extra = { stream_options = { include_usage = true } } })
      assert.equal("echo: stream me | model: gpt-4o-mini", r.text, cjson.encode(r))
      assert.truthy(r.chunks >= 4)
      assert.equal("stop", r.finish)
      assert.truthy(r.usage and r.usage.completion_tokens > 0)
      local items = engine.eventually(5, function()
        local l = e:get("/v1/traces?prompt=passthrough/gpt-4o-mini&limit=1").json.items
        return l[1] and l[1].metadata.gateway.stream and l
      end)
      assert.equal("echo: stream me | model: gpt-4o-mini", items[1].output)
      assert.equal(r.usage.completion_tokens, items[1].usage.output_tokens)
    end)

    it("forwards the caller's parameters unchanged: response_format, n, stop, max_tokens, temperature, functions", function()
      local extra = { response_format = { type = "json_object" }, n = 2, stop = { "END" }, max_tokens = 33,
        temperature = 0.25, seed = 7, logit_bias = { ["50256"] = -100 } }
      local r = sdk("openai", "chat", e, { model = "gpt-4o-mini", messages = { { role = "user", content = "json" } },
        extra = extra })
      assert.equal(200, r.status, cjson.encode(r))
      local sent = fake:stats().last_request.body
      for k, v in pairs(extra) do assert.same(v, sent[k], k) end
      -- a managed prompt named by header, its model's settings only defaults
      r = sdk("openai", "chat", e, { model = "anything", messages = { { role = "user", content = "h" } },
        headers = { ["X-Ratchet-Prompt"] = "triage", ["X-Ratchet-Variables"] = '{"ticket":"H"}' },
        extra = { temperature = 0.5 } })
      assert.equal(200, r.status, cjson.encode(r))
      sent = fake:stats().last_request.body
      assert.equal(0.5, sent.temperature)
      assert.matches("^gpt%-v[12]$", sent.model)
      assert.matches("Classify H", sent.messages[1].content)
    end)

    it("records every choice of an n > 1 answer in the trace, whole and streamed", function()
      local base = "echo: pick | model: gpt-n3"
      local r = sdk("openai", "chat", e, { model = "gpt-n3", messages = { { role = "user", content = "pick" } },
        extra = { n = 3 } })
      assert.equal(200, r.status, cjson.encode(r))
      assert.equal(3, #r.body.choices) -- all passed back
      local t = trace(e, r.trace_header)
      assert.equal(base, t.output) -- the first choice is the output evaluators score
      local ch = t.metadata.gateway.choices
      assert.equal(3, #ch, cjson.encode(t.metadata))
      for i = 1, 3 do
        assert.equal(i - 1, ch[i].index)
        assert.equal(i == 1 and base or string.format("%s (choice %d)", base, i - 1), ch[i].output)
        assert.equal("stop", ch[i].finish_reason)
      end
      -- streamed: the chunks of each choice assembled by their index
      sdk("openai", "stream", e, { model = "gpt-n2s", messages = { { role = "user", content = "pick" } },
        extra = { n = 2 } })
      local items = engine.eventually(5, function()
        local l = e:get("/v1/traces?prompt=passthrough/gpt-n2s&limit=1").json.items
        return l[1] and l
      end)
      assert.truthy(items, "the streamed trace was not captured")
      local st = items[1]
      assert.equal("echo: pick | model: gpt-n2s", st.output)
      assert.same({ { index = 0, output = "echo: pick | model: gpt-n2s", finish_reason = "stop" },
        { index = 1, output = "echo: pick | model: gpt-n2s (choice 1)", finish_reason = "stop" } },
        st.metadata.gateway.choices)
      -- one choice: no list
      r = sdk("openai", "chat", e, { model = "gpt-n1", messages = { { role = "user", content = "one" } } })
      assert.is_nil(trace(e, r.trace_header).metadata.gateway.choices)
    end)

    it("passes tool calls through, whole and streamed", function()
      local tools = { { type = "function", ["function"] = { name = "get_weather", parameters = { type = "object" } } } }
      local msgs = { { role = "user", content = "weather in Paris?" } }
      local r = sdk("openai", "chat", e, { model = "m", messages = msgs, extra = { tools = tools } })
      local call = r.body.choices[1].message.tool_calls[1]
      assert.equal("get_weather", call["function"].name)
      assert.same({ city = "Paris" }, cjson.decode(call["function"].arguments))
      assert.equal("tool_calls", r.body.choices[1].finish_reason)
      local t = trace(e, r.trace_header)
      assert.equal("get_weather", t.tool_calls[1].name)
      local s = sdk("openai", "stream", e, { model = "m", messages = msgs, extra = { tools = tools } })
      assert.equal("get_weather", s.tool_calls[1].name)
      assert.same({ city = "Paris" }, cjson.decode(s.tool_calls[1].arguments))
    end)

    it("answers a managed prompt: version resolved, template rendered, history appended, model replaced", function()
      local r = sdk("openai", "chat", e, { model = "ratchet:triage", messages = { { role = "user", content = "later msg" } },
        extra = { ratchet_variables = { ticket = "T-1" }, user = "caller-a" } })
      assert.equal(200, r.status, cjson.encode(r))
      local text = r.body.choices[1].message.content
      assert.matches("^echo: later msg | system: Classify T%-1", text)
      local sent = fake:stats().last_request.body
      assert.is_nil(sent.ratchet_variables) -- ratchet's own fields never go upstream
      assert.equal("system", sent.messages[1].role)
      assert.equal("later msg", sent.messages[2].content)
      local t = trace(e, r.trace_header)
      assert.equal("triage", t.prompt.name)
      assert.same({ ticket = "T-1" }, t.input.variables)
      assert.equal(sent.model == "gpt-v2" and 2 or 1, t.prompt.version)
    end)

    it("keeps the canary sticky per caller, and both versions are seen across callers", function()
      local seen = {}
      for i = 1, 12 do
        local caller = "user-" .. i
        local versions = {}
        for _ = 1, 2 do
          local r = sdk("openai", "chat", e, { model = "ratchet:triage", messages = { { role = "user", content = "x" } },
            headers = { ["X-Ratchet-Caller"] = caller }, extra = { ratchet_variables = { ticket = "T" } } })
          versions[#versions + 1] = r.body.choices[1].message.content:match("%(v(%d)%)")
        end
        assert.equal(versions[1], versions[2], "caller " .. caller .. " switched versions")
        seen[versions[1]] = true
      end
      assert.truthy(seen["1"] and seen["2"], "both versions should be seen across 12 callers")
    end)

    it("assigns key-less requests at random at the canary's share", function()
      local seen = {}
      for _ = 1, 16 do
        local r = e:post("/v1/chat/completions", { model = "ratchet:triage",
          messages = { { role = "user", content = "x" } }, ratchet_variables = { ticket = "T" } })
        assert.equal(200, r.status, r.body)
        seen[fake:stats().last_request.body.model] = true
      end
      assert.truthy(seen["gpt-v1"] and seen["gpt-v2"])
    end)

    it("translates when the managed prompt's provider speaks Anthropic, whole and streamed", function()
      local r = sdk("openai", "chat", e, { model = "ratchet:claude-triage", messages = { { role = "user", content = "q" } },
        extra = { ratchet_variables = { ticket = "T-9" } } })
      assert.equal(200, r.status, cjson.encode(r))
      assert.equal("echo: q | system: Sort T-9. | model: claude-x", r.body.choices[1].message.content)
      assert.matches("/messages$", fake:stats().last_request.url)
      local s = sdk("openai", "stream", e, { model = "ratchet:claude-triage", messages = { { role = "user", content = "q" } },
        extra = { ratchet_variables = { ticket = "T-9" }, stream_options = { include_usage = true } } })
      assert.equal("echo: q | system: Sort T-9. | model: claude-x", s.text)
      -- the provider's own stream, translated event by event (role, two text pieces, finish, usage)
      assert.is_true(fake:stats().last_request.body.stream)
      assert.truthy(s.chunks >= 5, cjson.encode(s))
      assert.equal("stop", s.finish)
      assert.truthy(s.usage and s.usage.completion_tokens > 0)
      s = sdk("openai", "stream", e, { model = "ratchet:claude-triage", messages = { { role = "user", content = "weather?" } },
        extra = { ratchet_variables = { ticket = "T-9" }, tools = { { type = "function",
          ["function"] = { name = "get_weather", parameters = { type = "object" } } } } } })
      assert.equal("tool_calls", s.finish, cjson.encode(s))
      assert.equal("get_weather", s.tool_calls[1].name)
      assert.same({ city = "Paris" }, cjson.decode(s.tool_calls[1].arguments))
    end)

    it("hands upstream 429 with Retry-After and 500 back as the SDK expects", function()
      fake:faults { { status = 429, retry_after = 7 }, { status = 500 } }
      local r = sdk("openai", "chat", e, { model = "m", messages = { { role = "user", content = "x" } } })
      assert.equal(429, r.status, cjson.encode(r))
      assert.equal("RateLimitError", r.error)
      assert.equal("7", r.retry_after)
      r = sdk("openai", "chat", e, { model = "m", messages = { { role = "user", content = "x" } } })
      assert.equal(500, r.status)
      assert.equal("InternalServerError", r.error)
    end)

    it("answers 504 when the upstream stalls past the timeout", function()
      fake:faults { { stall = true } }
      local r = sdk("openai", "chat", e, { model = "m", messages = { { role = "user", content = "x" } } })
      assert.equal(504, r.status, cjson.encode(r))
      assert.matches("did not answer", r.message)
    end)

    it("refuses an unknown prompt, missing variables, a bad model, with the protocol's error shape", function()
      local hi = { { role = "user", content = "hi" } }
      local r = sdk("openai", "chat", e, { model = "ratchet:nope", messages = hi })
      assert.equal(404, r.status)
      assert.equal("NotFoundError", r.error)
      assert.matches("no prompt named 'nope'", r.message)
      r = sdk("openai", "chat", e, { model = "ratchet:triage", messages = hi })
      assert.equal(400, r.status)
      assert.matches("ticket", r.message)
      assert.equal("ratchet_variables", r.param)
    end)

    it("cancels the upstream call when the client hangs up mid-stream", function()
      fake:faults { { stall_after = 2 } }
      local r = sdk("openai", "abort_stream", e, { model = "m", messages = { { role = "user", content = "bye" } } })
      assert.truthy(r.first, cjson.encode(r))
      assert.truthy(engine.eventually(5, function() return fake:stats().streams_aborted == 1 end),
        "the upstream stream should be closed when the client leaves")
      -- the newest trace of passthrough/m once it is this call's (an earlier
      -- test's timeout trace is there until this one is committed)
      local items = engine.eventually(5, function()
        local l = e:get("/v1/traces?prompt=passthrough/m&limit=1").json.items
        return l[1] and l[1].error and l[1].error:find("client closed", 1, true) and l
      end)
      assert.truthy(items, "no trace of passthrough/m recorded the client's hang-up: "
        .. engine.json.encode(e:get("/v1/traces?prompt=passthrough/m&limit=1").json.items))
    end)

    it("lists the managed prompts as models", function()
      local r = sdk("openai", "models", e, {})
      table.sort(r.ids)
      assert.same({ "ratchet:claude-triage", "ratchet:triage" }, r.ids)
    end)
  end)

  describe("with the Anthropic SDK", function()
    it("passes a message through and streams one, with usage, capturing both", function()
      local r = sdk("anthropic", "chat", e, { model = "claude-y", messages = { { role = "user", content = "hello" } } })
      assert.equal(200, r.status, cjson.encode(r))
      assert.equal("echo: hello | model: claude-y", r.body.content[1].text)
      assert.equal(r.trace_header, r.body.ratchet_trace_id)
      assert.equal("anthropic", trace(e, r.trace_header).metadata.gateway.protocol)
      local s = sdk("anthropic", "stream", e, { model = "claude-y", messages = { { role = "user", content = "more" } } })
      assert.equal("echo: more | model: claude-y", s.text, cjson.encode(s))
      assert.truthy(s.final.usage.output_tokens > 0)
    end)

    it("forwards the caller's anthropic-beta header, not its key", function()
      local r = sdk("anthropic", "chat", e, { model = "claude-y", messages = { { role = "user", content = "beta" } },
        headers = { ["anthropic-beta"] = "prompt-caching-2024-07-31" } })
      assert.equal(200, r.status, cjson.encode(r))
      local h = fake:stats().last_request.headers
      assert.equal("prompt-caching-2024-07-31", h["anthropic-beta"])
      assert.equal("2023-06-01", h["anthropic-version"])
      assert.equal("ok", fake:stats().last_request.auth)
    end)

    it("streams tool calls", function()
      local s = sdk("anthropic", "stream", e, { model = "c", messages = { { role = "user", content = "weather?" } },
        extra = { tools = { { name = "get_weather", input_schema = { type = "object" } } } } })
      assert.equal("tool_use", s.final.stop_reason, cjson.encode(s))
      assert.equal("get_weather", s.final.content[1].name)
      assert.same({ city = "Paris" }, s.final.content[1].input)
    end)

    it("answers a managed prompt whose provider speaks OpenAI (translated)", function()
      local r = sdk("anthropic", "chat", e, { model = "ratchet:triage", messages = { { role = "user", content = "z" } },
        extra = { metadata = { user_id = "anthro-1" }, ratchet_variables = { ticket = "A" } } })
      assert.equal(200, r.status, cjson.encode(r))
      assert.matches("^echo: z | system: Classify A", r.body.content[1].text)
      assert.equal("message", r.body.type)
      local s = sdk("anthropic", "stream", e, { model = "ratchet:triage", messages = { { role = "user", content = "z" } },
        extra = { metadata = { user_id = "anthro-1" }, ratchet_variables = { ticket = "A" } } })
      assert.matches("^echo: z | system: Classify A", s.text)
      assert.is_true(fake:stats().last_request.body.stream)
      assert.truthy(s.final.usage.output_tokens > 0)
      -- tool calls, streamed across the protocols
      s = sdk("anthropic", "stream", e, { model = "ratchet:triage", messages = { { role = "user", content = "weather?" } },
        extra = { ratchet_variables = { ticket = "A" },
                  tools = { { name = "get_weather", input_schema = { type = "object" } } } } })
      assert.equal("tool_use", s.final.stop_reason, cjson.encode(s))
      assert.equal("get_weather", s.final.content[1].name)
      assert.same({ city = "Paris" }, s.final.content[1].input)
    end)

    it("keeps Anthropic's error shape: 429 with Retry-After, unknown prompt", function()
      fake:faults { { status = 429, retry_after = 3 } }
      local r = sdk("anthropic", "chat", e, { model = "c", messages = { { role = "user", content = "x" } } })
      assert.equal(429, r.status)
      assert.equal("RateLimitError", r.error)
      assert.equal("3", r.retry_after)
      r = sdk("anthropic", "chat", e, { model = "ratchet:nope", messages = { { role = "user", content = "x" } } })
      assert.equal(404, r.status)
      assert.equal("not_found_error", r.type)
    end)
  end)

  describe("feedback and retries", function()
    it("links feedback to the trace by the returned id", function()
      local r = sdk("openai", "chat", e, { model = "m", messages = { { role = "user", content = "rate me" } } })
      assert.truthy(trace(e, r.trace_header))
      local fb = e:post("/v1/feedback", { trace_id = r.trace_header, thumbs = "down" })
      assert.equal(200, fb.status, fb.body)
      assert.equal(1, fb.json.accepted)
    end)

    it("records X-Ratchet-Retry-Of, and the same caller, prompt and variables within the window, as retries", function()
      local first = sdk("openai", "chat", e, { model = "m", messages = { { role = "user", content = "a" } } })
      assert.truthy(trace(e, first.trace_header))
      local again = sdk("openai", "chat", e, { model = "m", messages = { { role = "user", content = "a" } },
        headers = { ["X-Ratchet-Retry-Of"] = first.trace_header } })
      assert.equal(first.trace_header, trace(e, again.trace_header).retry_of)
      local args = { model = "ratchet:triage", messages = { { role = "user", content = "r" } }, headers = { ["X-Ratchet-Caller"] = "retrier" },
        extra = { ratchet_variables = { ticket = "same" } } }
      local a = sdk("openai", "chat", e, args)
      assert.truthy(trace(e, a.trace_header))
      local b = sdk("openai", "chat", e, args)
      assert.equal(a.trace_header, trace(e, b.trace_header).retry_of)
      -- other variables: not a retry
      args.extra.ratchet_variables.ticket = "other"
      local c = sdk("openai", "chat", e, args)
      assert.is_nil(trace(e, c.trace_header).retry_of)
    end)
  end)

  describe("hostile input", function()
    it("refuses malformed JSON, a missing model, a 10 MB body", function()
      local r = e:request("POST", "/v1/chat/completions", { body = '{"model": "m", "messages": [', content_type =
        "application/json" })
      assert.equal(400, r.status)
      assert.equal("invalid_request_error", r.json.error.type)
      r = e:post("/v1/chat/completions", { messages = {} })
      assert.equal(400, r.status)
      assert.equal("model", r.json.error.param)
      r = e:post("/v1/messages", { model = "m", messages = "no" })
      assert.equal("error", r.json.type)
      assert.equal("messages", r.json.error.message:match("^'(%a+)'"))
      local big = '{"model":"m","messages":[{"role":"user","content":"' .. string.rep("x", 10 * 1024 * 1024) .. '"}]}'
      r = e:request("POST", "/v1/chat/completions", { body = big, content_type = "application/json" })
      assert.equal(413, r.status)
      assert.equal(0, fake:stats().requests)
    end)

    it("counts its work in /metrics and /v1/status", function()
      local st = e:get("/v1/status").json.gateway
      assert.is_true(st.enabled)
      assert.truthy(st.calls.openai_managed > 0 and st.calls.anthropic_pass_through > 0)
      assert.truthy(st.traces.captured > 0)
      assert.equal(0, st.traces.dropped)
      assert.truthy(st.client_gone >= 1)
      local m = e:get("/metrics").body
      assert.matches('ratchet_gateway_requests_total{protocol="openai",mode="pass%-through"} %d+', m)
      assert.matches("ratchet_gateway_traces_dropped_total 0", m)
      assert.matches("ratchet_gateway_client_gone_total %d", m)
    end)
  end)
end)

describe("the gateway's keys and limits", function()
  local fake, e
  local GW_KEY = "gw-key-spec-0123456789abcdef"
  setup(function()
    fake = fake_llm.start { api_key = "sk-callers-own-key-123456" }
    e = engine.start { config = providers(fake, string.format(
      'gateway = { keys = { %q }, providers = { "oa" }, caller_keys = true, requests_per_minute = 2 }', GW_KEY)) }
  end)
  teardown(function()
    if e then e:stop() end
    if fake then fake:stop() end
  end)

  it("needs a gateway key, never sends it upstream, and lets a caller bring its own upstream key", function()
    local r = sdk("openai", "chat", e, { model = "m", messages = { { role = "user", content = "x" } } }, "wrong-key")
    assert.equal(401, r.status)
    assert.equal("AuthenticationError", r.error)
    -- the configured provider key is not the fake's: the caller's own key is
    r = sdk("openai", "chat", e, { model = "m", messages = { { role = "user", content = "x" } },
      headers = { ["X-Ratchet-Upstream-Key"] = "sk-callers-own-key-123456" } }, GW_KEY)
    assert.equal(200, r.status, cjson.encode(r))
    assert.equal(1, fake:stats().auth.ok)
    -- the provider refusing the configured key is the gateway's fault, not the caller's: 502, not 401
    r = sdk("openai", "chat", e, { model = "m", messages = { { role = "user", content = "x" } } }, GW_KEY)
    assert.equal(502, r.status, cjson.encode(r))
    assert.matches("refused the configured API key", r.message)
    assert.falsy(e:log_text():find(UPSTREAM_KEY, 1, true))
    assert.falsy(e:log_text():find(GW_KEY, 1, true))
  end)

  it("limits requests per key per minute with 429 and Retry-After", function()
    local r = sdk("openai", "chat", e, { model = "m", messages = { { role = "user", content = "x" } } }, GW_KEY)
    assert.equal(429, r.status, cjson.encode(r))
    assert.truthy(tonumber(r.retry_after) >= 1)
    assert.matches("requests_per_minute", r.message)
  end)
end)

describe("the gateway's ledger and budgets", function()
  it("writes a ledger row per forwarded call, priced, and refuses calls once a daily budget is spent", function()
    local fake = fake_llm.start { api_key = UPSTREAM_KEY }
    local e = engine.start { config = string.format([[
provider "oa" { kind = "openai", base_url = %q, api_key = %q, default_model = "m-1", max_retries = 0,
  models = { ["priced"] = { input_per_mtok = 1000000, output_per_mtok = 0 } } }
llm = { daily_cost = 10 }
gateway = { providers = { "oa" } }
]], "http://" .. fake.addr .. "/v1", UPSTREAM_KEY) }
    local r = sdk("openai", "chat", e, { model = "priced", messages = { { role = "user", content = "pay" } } })
    assert.equal(200, r.status, cjson.encode(r))
    local row = engine.eventually(5, function()
      local l = e:get("/v1/llm/calls").json.items
      return l[1] and l[1]
    end)
    assert.equal("gateway", row.caller)
    assert.equal("oa", row.provider)
    assert.equal("priced", row.model)
    assert.equal("ok", row.status)
    assert.equal(r.body.usage.prompt_tokens, row.input_tokens)
    assert.equal(r.body.usage.prompt_tokens, row.cost) -- 1 per input token at 1,000,000 per million
    -- today's spending is now past llm.daily_cost: the next call is refused before anything is sent
    local before = fake:stats().requests
    r = sdk("openai", "chat", e, { model = "priced", messages = { { role = "user", content = "again" } } })
    assert.equal(429, r.status, cjson.encode(r))
    assert.matches("llm.daily_cost", r.message)
    assert.equal(before, fake:stats().requests)
    e:stop()
    fake:stop()
  end)
end)

describe("the gateway's config", function()
  it("is off without a gateway table", function()
    local e = engine.start {}
    local r = e:post("/v1/chat/completions", { model = "m", messages = {} })
    assert.equal(404, r.status)
    assert.matches("gateway mode is off", r.json.error.message)
    e:stop()
  end)

  it("refuses bad settings at load with file:line", function()
    local dir = engine.tmpdir()
    local function check(text)
      engine.write_file(dir .. "/r.conf", text)
      local code, out, err = engine.run("check -c " .. dir .. "/r.conf")
      assert.are_not.equal(0, code)
      return (out or "") .. (err or "")
    end
    assert.matches("r.conf:2: 'gateway.keys%[1%]' must be a key of 16 to 512 characters",
      check('\ngateway = { keys = { "short" } }\n'))
    assert.matches("r.conf:1: 'gateway.providers%[1%]': no provider named 'nope' is declared",
      check('gateway = { providers = { "nope" } }\n'))
    assert.matches("r.conf:1: unknown key 'gateway.retries'", check('gateway = { retries = 3 }\n'))
    assert.matches("'gateway.max_body_bytes' must be between", check('gateway = { max_body_bytes = 1 }\n'))
    os.execute("rm -rf " .. dir)
  end)
end)
