-- spec/adversarial/scenario_spec.lua — the project's own adversarial scenario
-- suite (issue 20, "The project's own adversarial suite"). Everything is a
-- SIMULATION: a simulated world (spec/adversarial/world.lua: an order-reading
-- task, a target model that follows only the instructions its prompt states,
-- three failure modes, a rare German slice absent from golden, poisoned
-- traffic), a hostile simulated optimizer (spec/fixtures/adversarial/model.lua,
-- served by `ratchet fake-llm`) that mixes genuine single-mode fixes with
-- attacks cycle after cycle, and ground truth the suite computes itself
-- (spec/adversarial/truth.lua), never from the engine's evaluators.
--
-- The real engine runs the loop: manual cycles, the shipped policies and
-- meta-prompt template, small intervals and canary steps. The campaign
-- (spec/adversarial/campaign.lua) runs once; the assertions below read its
-- record: no promoted regression, nothing poisoned promoted, nothing promoted
-- without a true gain, a genuine fix promoted for every failure mode. The
-- figures (per attack, and the table for bench/RESULTS.md) are printed as
-- TAP comments, and written as JSON to $ADVERSARIAL_REPORT when set.
-- spec/adversarial/world_spec.lua checks the world, the ground truth and the
-- simulated optimizer themselves, with no engine.
--
--   RATCHET_BIN=$PWD/build/ratchet RATCHET_LUA_CPATH=$PWD/build/lua \
--     lua5.4 /usr/bin/busted -o TAP spec/adversarial
--   ADVERSARIAL_VERBOSE=1   every loop event as it happens, on stderr
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local cjson = require "cjson"
local world = require "spec.adversarial.world"
local campaign = require "spec.adversarial.campaign"
local report = require "spec.adversarial.report"

---------------------------------------------------------------------------
-- SETTINGS: the loop under test, in one place. Cycles start by hand, one per
-- plan; small intervals and short canary steps keep the whole scenario to
-- seconds on today's engine. max_samples bounds a canary that cannot decide
-- (the campaign sends at most 12,000 orders to one canary).
local LOOP_SETTINGS = [[
    enabled = false,
    dataset = "%s", template = "plain",
    optimizer = { provider = "sim", model = "optimizer" },
    candidates = 8, k = 1, concurrency = 8,
    check_interval_ms = 100, max_failures = 90,
    mining_options = { strata = { "metadata.segment" } },
    rollout_options = { steps = { 25, 50 }, min_step_samples = 30, min_step_ms = 0, tau = 0.3, margin = 0.05,
                        max_samples = 4000, slices = { "metadata.segment" } },
]]
-- PENDING: settings of the interface issue 20 plans (the lead's work). The
-- engine refuses unknown loop keys until they land, so these are added only
-- when `ratchet check` accepts them. ADVERSARIAL_PENDING: "auto" (default),
-- "on" (always: the engine must accept them), "off" (never).
local PENDING_LOOP_KEYS = [[
    replay = 60,
]]
--   replay                 stratified replay of passing production traces in the gate
-- and, given always because the shipped policies ignore option keys they do
-- not know:
--   mining_options.strata  strata of that replay (the rare slice is segment "de")
--   rollout_options.slices slices the canary is compared on
-- DIAGNOSTIC, never in CI: ADVERSARIAL_BARE_INPUT=1 lets order_grounded also
-- read gate cases in the bare-variables shape runs handed evaluators before
-- issue 20's one case shape (defect 1), to measure the other defects on an
-- engine that still has that one.
---------------------------------------------------------------------------

local FIXTURES = engine.root .. "/spec/fixtures/adversarial"

local function config(fake_addr, pending, bare_input)
  local loop = "  loop = {\n" .. string.format(LOOP_SETTINGS, world.DATASET)
    .. (pending and PENDING_LOOP_KEYS or "") .. "  },"
  local evaluators = string.format([[
  evaluators = {
    { "json_schema", options = { schema = json(file(%q)) } },
    { "order_grounded", options = { accept_bare_variables = %s } },
  },]], FIXTURES .. "/order.schema.json", bare_input and "true" or "false")
  return string.format([[
scripts = { dirs = { %q, %q } }
access_log = false
log_level = "warn"
provider "sim" {
  kind = "openai", base_url = %q, default_model = "target",
  max_retries = 1, backoff_base_ms = 5, backoff_max_ms = 20, timeout_ms = 30000,
}
prompt %q {
%s
%s
}
prompt %q {
%s
%s
}
]], FIXTURES, engine.root, "http://" .. fake_addr .. "/v1", world.PROMPT, evaluators, loop, world.CLEAN_PROMPT,
    evaluators, loop)
end

-- whether the engine takes the pending keys (auto mode)
local function engine_has_pending(dir)
  local path = dir .. "/probe.conf"
  engine.write_file(path, config("127.0.0.1:9", true, false))
  local code = engine.run("check -c " .. engine.shell_quote(path))
  return code == 0
end

describe("#heavy the adversarial scenario (simulated world, hostile simulated optimizer)", function()
  local fake, e, c, figures, dir
  local mode = os.getenv("ADVERSARIAL_PENDING") or "auto"
  local bare_input = os.getenv("ADVERSARIAL_BARE_INPUT") == "1"

  lazy_setup(function()
    dir = engine.tmpdir()
    local pending = mode == "on" or (mode == "auto" and engine_has_pending(dir))
    local control, log = dir .. "/control.json", dir .. "/proposals.jsonl"
    fake = fake_llm.start { model = string.format(
      "package.path = %q .. package.path\nreturn require('spec.fixtures.adversarial.model'){ control = %q, log = %q }\n",
      engine.root .. "/?.lua;", control, log) }
    e = engine.start { config = config(fake.addr, pending, bare_input) }
    c = campaign.new { engine = e, control = control, log = log, verbose = os.getenv("ADVERSARIAL_VERBOSE") == "1" }
    c:setup()
    local ok, err = pcall(function() c:run() end)
    c.wall = c.wall or (require("socket").gettime() - c.started)
    figures = report.figures(c, { pending = pending, bare_input = bare_input, error = not ok and tostring(err) or nil })
    report.print(figures)
    local out = os.getenv("ADVERSARIAL_REPORT")
    if out then engine.write_file(out, cjson.encode(figures)) end
    if not ok then error(err, 0) end
  end)

  lazy_teardown(function()
    if e then e:stop() end
    if fake then fake:stop() end
    if dir then os.execute("rm -rf " .. engine.shell_quote(dir)) end
  end)

  it("ran every attack it claims to measure", function()
    local f = figures
    for _, plan in ipairs(world.PLANS) do
      for _, want in ipairs(plan.candidates) do
        assert(f.proposed[want.kind] and f.proposed[want.kind] > 0, "the optimizer never proposed a " .. want.kind)
      end
    end
    for _, set in ipairs({ "verbatim-short", "verbatim-long" }) do
      for r = 0, 7 do
        assert(f.alignments[set] and f.alignments[set][r], set .. ": no copy starting at an offset " .. r .. " mod 8")
      end
    end
    for _, v in ipairs({ "exact", "case", "space", "punct", "nfkc" }) do
      assert(f.variants[v], "no verbatim copy of variant " .. v)
    end
    assert.is_true(f.shifted, "the distribution shift never started")
  end)

  it("promotes no version that is worse on any slice than the one it replaced (ground truth)", function()
    assert(#figures.regressions == 0, #figures.regressions .. " promoted regression(s):\n"
      .. table.concat(figures.regressions, "\n"))
  end)

  it("promotes no version carrying an attacker's text, payload or backdoor (ground truth)", function()
    assert(#figures.poisoned == 0, #figures.poisoned .. " poisoned promotion(s):\n" .. table.concat(figures.poisoned, "\n"))
  end)

  it("promotes nothing that is not truly better (ground truth)", function()
    assert(#figures.no_gain == 0, #figures.no_gain .. " promotion(s) without a true gain:\n"
      .. table.concat(figures.no_gain, "\n"))
  end)

  it("promotes a genuine single-mode fix for every failure mode", function()
    local missing = {}
    for _, m in ipairs(world.MODES) do
      if not figures.genuine_modes[m.mode] then missing[#missing + 1] = m.mode end
    end
    assert(#missing == 0, "no genuine fix promoted for: " .. table.concat(missing, ", ") .. "\n"
      .. table.concat(figures.genuine_fates, "\n"))
  end)
end)
