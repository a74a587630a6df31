-- GET /metrics: the Prometheus text format (checked by promtool when it is
-- there, and by this spec's own reading of the format always), and exact
-- counter values after a scripted workload through the real engine and the
-- real fake LLM server.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local parse = require("spec.helpers.metrics").parse

local KEY = "sk-metrics-5e6f7a8b9c0d1e2f3a4b"
local ADMIN = "admin-token-metrics-0123456789"
local SCRAPE = "metrics-token-0123456789abcdef"

local function promtool()
  for _, p in ipairs { engine.root .. "/build/tools/promtool", "promtool" } do
    if os.execute("command -v " .. engine.shell_quote(p) .. " >/dev/null 2>&1") then return p end
  end
end

local function scrape(e, token)
  local r = e:get("/metrics", { headers = { authorization = "Bearer " .. (token or SCRAPE) } })
  assert.equal(200, r.status, r.body)
  assert.matches("^text/plain; version=0%.0%.4", r.headers["content-type"])
  return parse(r.body), r.body
end

describe("GET /metrics", function()
  local fake, e

  setup(function()
    fake = fake_llm.start { api_key = KEY }
    e = engine.start { config = string.format([[
admin_token = %q
metrics_token = %q
scripts = { dirs = { %q, %q }, evaluator_budget_ms = 50 }
provider "fake" {
  kind = "openai", base_url = %q, api_key = env("SPEC_LLM_KEY"), default_model = "m-1",
  max_retries = 1, backoff_base_ms = 5, backoff_max_ms = 10, timeout_ms = 5000,
  models = { ["m-1"] = { input_per_mtok = 2, output_per_mtok = 10 } },
}
prompt "tickets" {
  evaluators = { "json_valid", { "contains", options = { value = "ok" }, required = false } },
}
prompt "spinning" { evaluators = { "spin" } }
]], ADMIN, SCRAPE, engine.root .. "/spec/fixtures/metrics", engine.root, "http://" .. fake.addr .. "/v1"),
      env = { SPEC_LLM_KEY = KEY } }
  end)
  teardown(function()
    local log = e:log_text()
    e:stop()
    fake:stop()
    for _, secret in ipairs { KEY, ADMIN, SCRAPE } do
      assert.is_nil(log:find(secret, 1, true), "a secret is in the engine's log")
    end
  end)

  local function admin(extra)
    local h = { authorization = "Bearer " .. ADMIN }
    for k, v in pairs(extra or {}) do h[k] = v end
    return { headers = h }
  end

  it("answers only the metrics or admin token, and only GET", function()
    assert.equal(401, e:get("/metrics").status)
    assert.equal(401, e:get("/metrics", { headers = { authorization = "Bearer wrong-token-0123456789" } }).status)
    assert.equal(200, e:get("/metrics", admin()).status)
    -- the metrics token reads nothing else
    local r = e:get("/v1/status", { headers = { authorization = "Bearer " .. SCRAPE } })
    assert.equal(403, r.status)
    assert.matches("only read GET /metrics", r.json.error.message)
    r = e:post("/metrics", "x", admin())
    assert.equal(405, r.status)
  end)

  it("counts a scripted workload exactly", function()
    local before = scrape(e)
    local function tr(id, output, prompt)
      return { id = id, prompt = { name = prompt or "tickets", version = 1 }, input = { variables = { q = id } }, output = output }
    end
    -- 5 valid traces and 1 invalid item; 3 outputs are JSON, 1 of them says ok
    local batch = { tr("m1", '{"a":"ok"}'), tr("m2", "{}"), tr("m3", "[1]"), tr("m4", "nope"), tr("m5", "{{"),
                    { id = "m6", input = {} } }
    local r = e:post("/v1/traces", batch, admin())
    assert.equal(200, r.status, r.body)
    -- the same two again: duplicates; a body that is not JSON: refused whole
    assert.equal(200, e:post("/v1/traces", { tr("m1", '{"a":"ok"}'), tr("m2", "{}") }, admin()).status)
    assert.equal(400, e:post("/v1/traces", "{not json", admin({ ["content-type"] = "application/json" })).status)
    -- feedback: one on a trace, one on a trace that does not exist
    r = e:post("/v1/feedback", { { trace_id = "m3", thumbs = "down" }, { trace_id = "missing", thumbs = "up" } }, admin())
    assert.equal(200, r.status, r.body)
    -- one trace for the evaluator that never ends: killed at its budget
    assert.equal(200, e:post("/v1/traces", tr("s1", "x", "spinning"), admin()).status)

    assert(engine.eventually(10 * engine.slow, function()
      local st = e:get("/v1/status", admin()).json.evaluation
      return st.evaluated == 6 and st.backlog == 0 and st.running == 0
    end), "the evaluations did not finish")

    -- LLM: one call that succeeds, one that fails twice (one retry) with 500
    local ok = e:post("/v1/llm/chat", { provider = "fake", messages = { { role = "user", content = "hi" } } }, admin())
    assert.equal(200, ok.status, ok.body)
    fake:faults { { status = 500 }, { status = 500 } }
    local bad = e:post("/v1/llm/chat", { provider = "fake", messages = { { role = "user", content = "hi" } } }, admin())
    assert.equal(502, bad.status, bad.body)

    -- the registry: two versions, a promotion, a canary at 25 %, a rollback
    local msgs = { messages = { { role = "user", content = "{{q}}" } } }
    assert.equal(201, e:post("/v1/prompts", { name = "tickets" }, admin()).status)
    assert.equal(201, e:post("/v1/prompts/tickets/versions", msgs, admin()).status)
    assert.equal(201, e:post("/v1/prompts/tickets/versions", msgs, admin()).status)
    assert.equal(200, e:post("/v1/prompts/tickets/promote", { version = 1 }, admin()).status)
    local c = e:post("/v1/prompts/tickets/canary", { version = 2, share = 0.25 }, admin())
    assert.equal(200, c.status, c.body)

    local m, text = scrape(e)
    local function d(series) return (m[series] or 0) - (before[series] or 0) end
    -- ingest
    assert.equal(4, d('ratchet_ingest_requests_total{endpoint="traces"}'))
    assert.equal(1, d('ratchet_ingest_refused_requests_total{endpoint="traces"}'))
    assert.equal(6, d('ratchet_ingest_items_total{endpoint="traces",result="accepted"}'))
    assert.equal(2, d('ratchet_ingest_items_total{endpoint="traces",result="duplicate"}'))
    assert.equal(1, d('ratchet_ingest_items_total{endpoint="traces",result="invalid"}'))
    assert.equal(1, d('ratchet_ingest_items_total{endpoint="feedback",result="accepted"}'))
    assert.equal(1, d('ratchet_ingest_items_total{endpoint="feedback",result="not_found"}'))
    assert.equal(1, d('ratchet_http_responses_total{code="400"}'))
    -- evaluation
    assert.equal(5, d('ratchet_evaluator_runs_total{evaluator="json_valid"}'))
    assert.equal(2, d('ratchet_evaluator_failures_total{evaluator="json_valid"}'))
    assert.equal(0, d('ratchet_evaluator_errors_total{evaluator="json_valid"}'))
    assert.equal(5, d('ratchet_evaluator_runs_total{evaluator="contains"}'))
    assert.equal(4, d('ratchet_evaluator_failures_total{evaluator="contains"}'))
    assert.equal(5, d('ratchet_evaluator_duration_seconds_count{evaluator="json_valid"}'))
    assert.equal(1, d('ratchet_evaluator_runs_total{evaluator="spin"}'))
    assert.equal(1, d('ratchet_evaluator_errors_total{evaluator="spin"}'))
    assert.equal(1, d('ratchet_evaluator_killed_total{evaluator="spin"}'))
    assert.equal(1, d('ratchet_script_killed_total{kind="evaluator",reason="time"}'))
    assert.equal(3, d('ratchet_evaluation_traces_total{verdict="pass"}'))
    assert.equal(2, d('ratchet_evaluation_traces_total{verdict="fail"}'))
    assert.equal(1, d('ratchet_evaluation_traces_total{verdict="error"}'))
    assert.equal(0, m["ratchet_evaluation_backlog"])
    -- LLM, per provider and model
    local p = 'provider="fake",model="m-1"'
    assert.equal(2, d("ratchet_llm_calls_total{" .. p .. "}"))
    assert.equal(1, d("ratchet_llm_retries_total{" .. p .. "}"))
    assert.equal(1, d("ratchet_llm_errors_total{" .. p .. ',kind="server_error"}'))
    assert.equal(ok.json.usage.input_tokens, d("ratchet_llm_tokens_total{" .. p .. ',direction="input"}'))
    assert.equal(ok.json.usage.output_tokens, d("ratchet_llm_tokens_total{" .. p .. ',direction="output"}'))
    assert.near(ok.json.cost, d("ratchet_llm_cost_dollars_total{" .. p .. "}"), 1e-12)
    assert.equal(2, d("ratchet_llm_request_duration_seconds_count{" .. p .. "}"))
    assert.equal(1, m['ratchet_llm_circuit_state{provider="fake",state="closed"}'])
    assert.equal(0, m['ratchet_llm_circuit_state{provider="fake",state="open"}'])
    -- registry
    assert.equal(1, d('ratchet_prompt_promotions_total{prompt="tickets"}'))
    assert.equal(1, m['ratchet_prompt_version{prompt="tickets",status="production"}'])
    assert.equal(2, m['ratchet_prompt_version{prompt="tickets",status="canary"}'])
    assert.equal(0.25, m['ratchet_prompt_canary_share{prompt="tickets"}'])
    -- per prompt and version (production and canary only): the traces above named version 1, now production
    local v1 = 'prompt="tickets",version="1"'
    assert.equal(3, m["ratchet_prompt_traces_total{" .. v1 .. ',verdict="pass"}'])
    assert.equal(2, m["ratchet_prompt_traces_total{" .. v1 .. ',verdict="fail"}'])
    assert.equal(0, m["ratchet_prompt_traces_total{" .. v1 .. ',verdict="error"}'])
    assert.equal(3, m["ratchet_prompt_evaluator_results_total{" .. v1 .. ',evaluator="json_valid",result="pass"}'])
    assert.equal(2, m["ratchet_prompt_evaluator_results_total{" .. v1 .. ',evaluator="json_valid",result="fail"}'])
    assert.equal(1, m["ratchet_prompt_evaluator_results_total{" .. v1 .. ',evaluator="contains",result="pass"}'])
    assert.equal(4, m["ratchet_prompt_evaluator_results_total{" .. v1 .. ',evaluator="contains",result="fail"}'])
    assert.equal(1, m["ratchet_prompt_feedback_total{" .. v1 .. ',kind="negative"}'])
    assert.equal(0, m["ratchet_prompt_feedback_total{" .. v1 .. ',kind="positive"}'])
    assert.equal(0.75, m['ratchet_prompt_version_share{prompt="tickets",version="1",status="production"}'])
    assert.equal(0.25, m['ratchet_prompt_version_share{prompt="tickets",version="2",status="canary"}'])
    -- "spinning" has no version in the registry: no per-version series for it
    for series in pairs(m) do assert.is_nil(series:find('ratchet_prompt_traces_total{prompt="spinning"', 1, true)) end
    -- a trace of the canary, then the canary rolled back: its series go with it
    assert.equal(200, e:post("/v1/traces", { id = "c1", prompt = { name = "tickets", version = 2 },
                                             input = { variables = { q = "c1" } }, output = "{}" }, admin()).status)
    assert(engine.eventually(10 * engine.slow, function()
      return (scrape(e)['ratchet_prompt_traces_total{prompt="tickets",version="2",verdict="pass"}'] or 0) == 1
    end), "the canary's trace was not counted")
    m = scrape(e)
    -- process
    assert.truthy(m.process_resident_memory_bytes > 1e6)
    assert.truthy(m.ratchet_http_connections >= 1)
    -- the lag probe runs every 100 ms
    assert.truthy(engine.eventually(2, function() return scrape(e).ratchet_event_loop_lag_seconds_count > 0 end))

    assert.equal(200, e:post("/v1/prompts/tickets/rollback", {}, admin()).status)
    e:signal("HUP")
    assert(engine.eventually(10 * engine.slow, function()
      local after = scrape(e)
      return after.ratchet_config_reloads_total == (m.ratchet_config_reloads_total or 0) + 1 and after
    end), "the reload was not counted")
    local after = scrape(e)
    assert.equal(1, after['ratchet_prompt_rollbacks_total{prompt="tickets"}'] - (before['ratchet_prompt_rollbacks_total{prompt="tickets"}'] or 0))
    assert.equal(0, after['ratchet_prompt_canary_share{prompt="tickets"}'])
    assert.is_nil(after['ratchet_prompt_version{prompt="tickets",status="canary"}'])
    assert.is_nil(after['ratchet_prompt_traces_total{prompt="tickets",version="2",verdict="pass"}'])
    assert.is_nil(after['ratchet_prompt_version_share{prompt="tickets",version="2",status="canary"}'])
    assert.equal(1, after['ratchet_prompt_version_share{prompt="tickets",version="1",status="production"}'])
    assert.equal(3, after['ratchet_prompt_traces_total{prompt="tickets",version="1",verdict="pass"}'])

    local tool = promtool()
    if not tool then return pending("promtool is not installed (make test fetches it from Debian's prometheus package)") end
    local path = engine.tmpdir() .. "/metrics.txt"
    engine.write_file(path, text)
    local out = io.popen(engine.shell_quote(tool) .. " check metrics < " .. engine.shell_quote(path) .. " 2>&1; echo rc=$?"):read("a")
    assert.equal("rc=0", out:gsub("%s+$", ""), "promtool: " .. out)
  end)

  it("escapes label values a user chose", function()
    local name = 'we"ird\\name'
    -- prompt names are restricted; a model name is the caller's: it becomes a label
    local r = e:post("/v1/llm/chat", { provider = "fake", model = name, messages = { { role = "user", content = "x" } } }, admin())
    assert.equal(200, r.status, r.body)
    local m = scrape(e)
    assert.equal(1, m['ratchet_llm_calls_total{provider="fake",model="we\\"ird\\\\name"}'])
  end)
end)
