-- policies/mining.lua: which failed traces the optimizer sees and which the gate keeps.
local sandbox = require "spec.helpers.sandbox"

local policy = sandbox.policy("mining")

local function failure(id, text, evaluator, reason)
  return { id = id, input = { ticket = text }, reasons = { { evaluator = evaluator or "json_schema", reason = reason or "output is not valid JSON" } } }
end

local function set(list)
  local s = {}
  for _, x in ipairs(list) do s[x] = true end
  return s
end

describe("mining policy", function()
  it("counts near-identical inputs once (case, digits, spacing, punctuation)", function()
    local r = policy:call("select", {
      failure("a", "Order 123 is late!"), failure("b", "order 456 is   LATE"), failure("c", "The app crashes"),
    }, { max_shown = 10, holdout = 0 })
    assert.equal(1, r.duplicates)
    assert.equal(2, r.distinct)
    local shown = set(r.shown)
    assert.is_true(shown.a)       -- the newest of the two stays
    assert.is_nil(shown.b)
  end)

  it("caps what it shows and spreads it across failure reasons, newest first", function()
    local fs = {}
    for i = 1, 10 do fs[#fs + 1] = failure("json" .. i, "json text " .. string.rep("x", i)) end
    fs[#fs + 1] = failure("enum1", "label one", "json_schema", "'Billing' is not one of the allowed values")
    fs[#fs + 1] = failure("enum2", "label two longer", "json_schema", "'Other' is not one of the allowed values")
    local r = policy:call("select", fs, { max_shown = 4, holdout = 0 })
    assert.equal(4, #r.shown)
    local shown = set(r.shown)
    assert.is_true(shown.enum1 and shown.enum2 and shown.json1 and shown.json2)
    assert.equal(2, #r.groups)
    -- the rest goes to the gate
    assert.equal(8, #r.held)
  end)

  it("holds a share out of the optimizer's sight, chosen by trace id (stable)", function()
    local fs = {}
    for i = 1, 100 do fs[#fs + 1] = failure("t" .. i, "distinct ticket " .. string.char(65 + i % 26) .. string.rep("y", i)) end
    local a = policy:call("select", fs, { max_shown = 100, holdout = 0.3 })
    local b = policy:call("select", fs, { max_shown = 100, holdout = 0.3 })
    assert.same(a.held, b.held)
    assert.is_true(#a.held > 15 and #a.held < 45, "held " .. #a.held)
    local shown = set(a.shown)
    for _, id in ipairs(a.held) do assert.is_nil(shown[id]) end
  end)

  it("holds at least one failure out when a holdout is asked for", function()
    local r = policy:call("select", { failure("a", "one"), failure("b", "two") }, { max_shown = 10, holdout = 0.01 })
    assert.equal(1, #r.held)
    assert.equal(1, #r.shown)
  end)

  it("copes with no failures, missing reasons and hostile inputs", function()
    local r = policy:call("select", {}, { max_shown = 5, holdout = 0.3 })
    assert.equal(0, r.distinct)
    r = policy:call("select", { { id = "n", input = { x = string.rep("\255", 5000) }, negative = true } },
      { max_shown = 5, holdout = 0.3 })
    assert.equal(1, r.distinct)
  end)
end)

describe("mining policy's groups", function()
  it("names the failure group of every distinct failure, held-out ones too", function()
    local fs = {}
    for i = 1, 20 do fs[#fs + 1] = failure("j" .. i, "json ticket " .. string.rep("z", i)) end
    for i = 1, 10 do
      fs[#fs + 1] = failure("e" .. i, "enum ticket " .. string.rep("q", i), "json_schema", "'X" .. i .. "' is not one of")
    end
    local r = policy:call("select", fs, { max_shown = 4, holdout = 0.3 })
    for _, id in ipairs(r.held) do assert.is_string(r.group_of[id], id) end
    assert.equal("json_schema: output is not valid JSON", r.group_of.j1)
    assert.equal("json_schema: '' is not one of", r.group_of.e3) -- quoted values and numbers taken out
  end)
end)

describe("mining policy's replay", function()
  local function trace(id, text, meta) return { id = id, input = { ticket = text }, metadata = meta or {} } end

  it("over-represents rare strata: a floor each, rarest first, then round-robin", function()
    local ts = {}
    for i = 1, 200 do ts[#ts + 1] = trace("en" .. i, "plain english ticket number " .. string.rep("a", i % 50) .. i) end
    for i = 1, 4 do ts[#ts + 1] = trace("fr" .. i, "commande numéro " .. i .. string.rep("é", i)) end
    local r = policy:call("replay", ts, { replay = 12 })
    assert.equal(12, #r.cases)
    local by = {}
    for _, c in ipairs(r.cases) do by[c.stratum] = (by[c.stratum] or 0) + 1 end
    -- all 4 non-ASCII traces (2 % of traffic) are in, a third of the sample
    assert.equal(4, by["length=short, charset=non-ascii"])
    assert.equal(8, by["length=short, charset=ascii"])
    assert.equal("length=short, charset=non-ascii", r.strata[1].name)
    assert.same({ available = 4, chosen = 4 }, { available = r.strata[1].available, chosen = r.strata[1].chosen })
  end)

  it("stratifies by the metadata and variables it is told to, and refuses an unknown dimension", function()
    local ts = {}
    for i = 1, 30 do ts[#ts + 1] = trace("t" .. i, "ticket " .. string.rep("x", i), { segment = i <= 2 and "vip" or "std" }) end
    local r = policy:call("replay", ts, { replay = 6, strata = { "metadata.segment" }, replay_floor = 2 })
    local vip = 0
    for _, c in ipairs(r.cases) do if c.stratum == "metadata.segment=vip" then vip = vip + 1 end end
    assert.equal(2, vip)
    local ok, err = pcall(function() return policy:call("replay", ts, { replay = 6, strata = { "colour" } }) end)
    assert.is_false(ok)
    assert.matches("unknown stratum dimension 'colour'", err, 1, true)
  end)
end)
