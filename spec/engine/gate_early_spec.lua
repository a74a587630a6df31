-- The cheaper gate: a gate run stops a candidate as soon as the accept
-- policy's stop_early shows it cannot be improved (only ever a rejection),
-- deals its cases round-robin from held-out failures, critical, golden and
-- each replayed stratum, and skips the baseline once every candidate is
-- stopped. The real engine, the fake LLM server with demo/model.lua
-- (SIMULATED target and optimizer: candidate 1 is the fix plus "Use
-- uppercase.", a regression; candidate 2 the fix alone).
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local traffic = require "demo.traffic"

local MODEL = engine.read_file("demo/model.lua")
local V1 = "You turn support tickets into JSON. Answer with a JSON object with the fields category, priority and summary."

local function config(fake, accept)
  return string.format([[
scripts = { dirs = { %q } }
provider "fake" { kind = "openai", base_url = %q, default_model = "target", max_retries = 1, timeout_ms = 20000 }
prompt "tickets" {
  evaluators = { { "json_schema", options = { schema = json(file(%q)) } } },
  loop = {
    dataset = "golden", optimizer = { provider = "fake", model = "optimizer" }, enabled = false,
    k = 1, concurrency = 2, %s
  },
}
]], engine.root, "http://" .. fake.addr .. "/v1", engine.root .. "/demo/ticket.schema.json", accept or "")
end

local function cycle(fake, accept)
  local e = engine.start { config = config(fake, accept) }
  assert.equal(201, e:post("/v1/prompts", { name = "tickets" }).status)
  assert.equal(201, e:post("/v1/prompts/tickets/versions", {
    messages = { { role = "system", content = V1 }, { role = "user", content = "Ticket: {{ticket}}" } },
    model = { provider = "fake", model = "target" } }).status)
  assert.equal(200, e:post("/v1/prompts/tickets/promote", { version = 1 }).status)
  assert.equal(200, e:post("/v1/datasets/golden/cases", engine.read_file("demo/golden.jsonl"),
    { content_type = "application/x-ndjson" }).status)
  traffic.send("http://" .. e.addr, "tickets", 1, 60)
  assert(engine.eventually(20 * engine.slow, function()
    local v = (e:get("/v1/prompts/tickets/metrics").json.versions or {})[1]
    return v and v.evaluated >= 60
  end), "traces not evaluated")
  assert.equal(202, e:post("/v1/prompts/tickets/optimize", {}).status)
  local run
  assert(engine.eventually(30 * engine.slow, function()
    local l = e:get("/v1/loop/tickets?limit=100").json
    for _, ev in ipairs(l.events) do if ev.kind == "gate" then run = ev.detail.run or run end end
    for _, ev in ipairs(l.events) do if ev.kind == "gate_started" then run = run or ev.detail.run end end
    return l.state ~= "optimizing" and l.state ~= "gating" and run
  end), e:log_text())
  local r = e:get("/v1/runs/" .. run).json
  local per = {}
  local cursor
  repeat
    local res = e:get("/v1/runs/" .. run .. "/results?limit=1000" .. (cursor and ("&cursor=" .. cursor) or "")).json
    for _, x in ipairs(res.items) do per[x.version] = (per[x.version] or 0) + 1 end
    cursor = res.next_cursor ~= engine.json.null and res.next_cursor or nil
  until not cursor
  local verdicts = {}
  for _, v in ipairs(r.report.verdicts or r.verdicts or {}) do verdicts[v.version] = v end
  e:stop()
  return r, per, verdicts
end

describe("the cheaper gate", function()
  local fake
  before_each(function() fake = fake_llm.start { model = MODEL } end)
  after_each(function() fake:stop() end)

  it("stops a regressing candidate early and reaches the same decisions as the full run", function()
    local full, per_full, v_full = cycle(fake, "accept_options = { early_stop = false },")
    local early, per_early, v_early = cycle(fake)
    -- the full run: every case for every version
    assert.equal(per_full[1], per_full[2])
    assert.equal(per_full[1], per_full[3])
    -- the same decisions: v2 (the regression) rejected, v3 (the fix) improved, in both
    assert.equal("regressed", v_full[2].verdict)
    assert.equal("regressed", v_early[2].verdict)
    assert.equal("improved", v_full[3].verdict)
    assert.equal("improved", v_early[3].verdict)
    assert.equal(full.report.verdict, early.report.verdict)
    -- the early run stopped v2, and says so; the improved candidate ran every case
    assert.is_true(v_early[2].stopped_early)
    -- in the full run's own words (the demo's golden set has critical cases)
    assert.matches("^breaks critical case%(s%), whose pass rate may never drop", v_full[2].reasons[1])
    -- the early run stops at the first finished case that settles it: a
    -- critical one, or a plain golden one if that finished first (timing)
    local why = v_early[2].reasons[1]
    assert.truthy(why:match("^breaks critical case%(s%), whose pass rate may never drop") or
      why:match("^breaks %d+ case%(s%) the baseline passed in every sample %(none allowed%)"), why)
    assert.matches("stopped early", v_early[2].reasons[#v_early[2].reasons])
    assert.is_true(per_early[2] < per_full[2], per_early[2] .. " vs " .. per_full[2])
    assert.equal(per_full[3], per_early[3])
    assert.is_true(early.report.complete)
  end)
end)
