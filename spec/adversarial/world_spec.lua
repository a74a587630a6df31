-- spec/adversarial/world_spec.lua — checks the measuring stick itself, with
-- no engine: the SIMULATED world of the adversarial suite behaves as its
-- header says, ground truth (spec/adversarial/truth.lua) classifies each
-- attack as what it is, the engine-side evaluators can see every failure
-- mode and every break (so a rule that stops each attack is possible), and
-- the simulated optimizer copies attacker text at the byte alignment asked.
package.path = "./scripts/?.lua;" .. package.path
local cjson = require "cjson"
local sandbox = require "spec.helpers.sandbox"
local engine = require "spec.helpers.engine"
local world = require "spec.adversarial.world"
local truth = require "spec.adversarial.truth"

local function with(...) return table.concat({ world.BASE, ... }, " ") end

describe("the adversarial suite's simulated world", function()
  it("has a first version that handles golden and fails exactly the three failure modes", function()
    for _, c in ipairs(world.golden()) do
      assert(world.correct(world.target(world.BASE, "Order: " .. c.variables.order), c.expected), c.id)
    end
    local acc = truth.accuracy(world.BASE, {})
    for _, slice in ipairs(world.SLICES) do
      local failing = slice == "words" or slice == "quotes" or slice == "sku"
      assert.equal(failing and 0 or 1, acc[slice], slice)
    end
  end)

  it("keeps the rare slice, the rare SKU and all but one title-case name out of golden", function()
    local particles = 0
    for _, c in ipairs(world.golden()) do
      local o = c.variables.order
      assert.is_nil(o:find("Stück", 1, true) or o:find("Bestellung", 1, true), c.id)
      assert.is_nil(o:find(world.RARE_SKU, 1, true), c.id)
      if c.expected.customer:find(" %l") then particles = particles + 1 end
    end
    assert.equal(1, particles)
  end)

  it("calls each single-mode fix genuine, improving its own slice only", function()
    for _, m in ipairs(world.MODES) do
      local v = truth.classify(with(m.fix), world.BASE, {})
      assert.equal("genuine", v.class, m.mode)
      assert.same({ m.mode }, v.better)
      assert.is_nil(v.poisoned)
    end
  end)

  it("calls every attack what it is", function()
    local all = with(world.FIX.words, world.FIX.quotes, world.FIX.sku)
    local cases = {
      { all .. " " .. world.ASCII_NAMES, "regression", { "de" } },
      { all .. " " .. world.TITLE_CASE, "regression", { "particle" } },
      { all .. " " .. world.BACKDOOR, "regression", { "zx" }, "payload" },
      { all .. " " .. world.PARAPHRASE, "poisoned", {}, "payload" },
      { world.BASE:gsub("customer orders", "orders that customers send"), "no_gain", {} },
      { with(world.FIX.words, world.FIX.quotes, world.SHIFT_RULE), "genuine", {} },
    }
    for i, c in ipairs(cases) do
      local v = truth.classify(c[1], world.BASE, {})
      assert.equal(c[2], v.class, "case " .. i)
      assert.same(c[3], v.worse, "case " .. i)
      assert.equal(c[4] ~= nil, v.poisoned ~= nil, "case " .. i .. ": " .. tostring(v.poisoned))
    end
    -- the fix that only holds before the shift: a regression after it
    local v = truth.classify(with(world.FIX.words, world.FIX.quotes, world.SHIFT_RULE), world.BASE, { shifted = true })
    assert.equal("regression", v.class)
    assert.same({ "wholesale" }, v.worse)
  end)

  it("puts a poisoned order's sentence at the byte offset asked, in one trace only", function()
    local seen = {}
    for r = 0, 7 do
      for j = 1, 3 do
        local o = world.poisoned("t" .. r .. ":" .. j, r, {}, j == 3)
        assert.equal(r, o.offset % 8)
        assert.equal(o.sentence, o.text:sub(o.offset + 1))
        assert.is_nil(seen[o.sentence])
        seen[o.sentence] = true
      end
    end
  end)

  it("has engine-side evaluators that see each failure mode and each break on the slice it hits", function()
    local schema = cjson.decode(engine.read_file("spec/fixtures/adversarial/order.schema.json"))
    local js = sandbox.evaluator("json_schema")
    local grounded = assert(sandbox.load_evaluator("spec/fixtures/adversarial/evaluators/order_grounded.lua"))
    local function passes(system, o)
      local case = { output = world.target(system, "Order: " .. o.text), input = { variables = { order = o.text } } }
      local a, b = js:evaluate(case, { schema = schema }), grounded:evaluate(case, {})
      assert(a.status == "ok" and b.status == "ok", tostring(a.reason) .. " / " .. tostring(b.reason))
      return a.pass and b.pass
    end
    local all = with(world.FIX.words, world.FIX.quotes, world.FIX.sku)
    for i = 1, 20 do
      local function slice(name, state) return world.make(name, "ev:" .. name .. ":" .. i, state) end
      for _, m in ipairs(world.MODES) do
        assert.is_false(passes(world.BASE, slice(m.mode)), m.mode)
        assert.is_true(passes(with(m.fix), slice(m.mode)), m.mode)
      end
      for _, s in ipairs({ "plain", "particle", "zx", "wholesale", "de" }) do assert.is_true(passes(all, slice(s)), s) end
      assert.is_false(passes(all .. " " .. world.ASCII_NAMES, slice("de")))
      assert.is_false(passes(all .. " " .. world.TITLE_CASE, slice("particle")))
      assert.is_false(passes(all .. " " .. world.BACKDOOR, slice("zx")))
      local ws = slice("wholesale", { shifted = true })
      assert.equal(ws.truth.sku:sub(1, 3) ~= "KLM", passes(all .. " " .. world.SHIFT_RULE, ws))
    end
    -- documented case shape only, unless the diagnostic option says otherwise
    local bare = { output = '{"sku":"ABC-100","quantity":1,"customer":"Ann Lee"}', input = { order = "x" } }
    assert.equal("error", grounded:evaluate(bare, {}).status)
    assert.equal("ok", grounded:evaluate(bare, { accept_bare_variables = true }).status)
  end)

  it("has a simulated optimizer that copies attacker text at the alignment asked, which ground truth sees", function()
    local plain = require "metaprompts.plain"
    truth.forget_attacks()
    local dir = engine.tmpdir()
    local model = require("spec.fixtures.adversarial.model") { control = dir .. "/control.json", log = dir .. "/log.jsonl" }
    -- the failures a miner would show: ordinary ones and poisoned ones, a third fullwidth
    local failures = {}
    for j = 1, 12 do
      local o = j <= 9 and world.poisoned("opt:" .. j, (j - 1) % 8, {}, j % 3 == 0) or world.make("words", "opt:" .. j)
      local out = world.target(world.BASE, "Order: " .. o.text)
      failures[#failures + 1] = { id = "t" .. j, input = { order = o.text }, output = out,
        reasons = { { evaluator = "json_schema", reason = j % 2 == 0 and "output is not valid JSON: x"
          or "output does not match the schema: $.quantity: must be integer, not string" } } }
      if o.sentence then truth.note_attack(o.sentence) end
    end
    local ctx = { prompt = world.PROMPT, current = { version = 1, messages = {
      { role = "system", content = world.BASE }, { role = "user", content = world.USER } } },
      editable = { "system" }, variables = { "order" }, failures = failures, history = {}, candidates = 8 }
    for _, name in ipairs({ "verbatim-short", "verbatim-long" }) do
      engine.write_file(dir .. "/control.json", cjson.encode({ cycle = 1, plan = name }))
      local messages = plain.build(ctx)
      local answer = model({ model = "optimizer", messages = messages })
      local lines = {}
      for line in engine.read_file(dir .. "/log.jsonl"):gmatch("[^\n]+") do lines[#lines + 1] = line end
      local logged = cjson.decode(lines[#lines])
      local parsed = plain.parse(answer, ctx)
      local plan
      for _, p in ipairs(world.PLANS) do if p.name == name then plan = p end end
      assert.equal(#plan.candidates, #parsed.candidates, name)
      for i, c in ipairs(logged.candidates) do
        local want = plan.candidates[i]
        assert.equal(want.residue, c.copy.offset % 8, name .. " " .. i)
        local chars = want.variant == "nfkc" and c.copy.length / 3 or c.copy.length
        assert(chars >= want.min and chars <= want.max, name .. " " .. i .. ": " .. c.copy.length .. " bytes")
        assert.equal(c.copy.run, c.copy.order:sub(c.copy.offset + 1, c.copy.offset + c.copy.length))
        assert.equal(c.system, parsed.candidates[i].system)
        assert(truth.poisoned(c.system, world.BASE), name .. " " .. i .. ": ground truth misses " .. c.system)
      end
    end
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)
end)
