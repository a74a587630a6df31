-- policies/search.lua: the judgments of the gepa search — Pareto parent
-- sampling, admitting children, picking merges, choosing what goes to the gate.
local sandbox = require "spec.helpers.sandbox"

local policy = sandbox.policy("search")

local function m(id, scores, parents, origin)
  return { id = id, scores = scores, parents = parents or (id == 0 and {} or { 0 }), origin = origin or (id == 0 and "seed" or "reflect") }
end

local function ids(list)
  local t = {}
  for _, x in ipairs(list or {}) do t[#t + 1] = x end
  table.sort(t)
  return t
end

describe("search policy", function()
  it("puts on the front every member best on some case, even with a lower mean", function()
    -- 2 has the best mean; 1 alone fixes case 4 (a rare failure mode): it survives
    local pool = { m(0, { 0, 0, 0, 0 }), m(1, { 0, 0, 0, 1 }), m(2, { 1, 1, 1, 0 }), m(3, { 1, 1, 0, 0 }) }
    local front = policy:call("front", pool)
    assert.is_nil(front[0])
    assert.equal(1, front[1])
    assert.equal(3, front[2])
    assert.is_nil(front[3]) -- dominated by 2
  end)

  it("samples parents from the front in proportion to the cases each wins, by the seeded draw", function()
    local pool = { m(0, { 0, 0, 0, 0 }), m(1, { 0, 0, 0, 1 }), m(2, { 1, 1, 1, 0 }) }
    local counts = { [1] = 0, [2] = 0 }
    for i = 0, 99 do
      local r = policy:call("select_parent", pool, { draw = i / 100 })
      counts[r.parent] = counts[r.parent] + 1
      assert.same({ 1, 2 }, ids(r.front))
    end
    assert.equal(25, counts[1]) -- 1 of 4 winning cases
    assert.equal(75, counts[2])
    -- the same draw, the same parent
    assert.equal(policy:call("select_parent", pool, { draw = 0.3 }).parent, policy:call("select_parent", pool, { draw = 0.3 }).parent)
  end)

  it("improves the seed when nothing passes anywhere", function()
    local r = policy:call("select_parent", { m(0, { 0, 0 }) }, { draw = 0.9 })
    assert.equal(0, r.parent)
  end)

  it("ignores cases not run (null scores)", function()
    local pool = { m(0, { 0, require("cjson").null }), m(1, { 1, require("cjson").null }) }
    assert.equal(1, policy:call("select_parent", pool, { draw = 0.5 }).parent)
  end)

  it("admits a child only when it strictly beats its best parent on the minibatch", function()
    local r = policy:call("accept_child", { scores = { 1, 1, 0 } }, { { id = 0, scores = { 1, 0, 0 } } }, {})
    assert.is_true(r.accept)
    r = policy:call("accept_child", { scores = { 1, 0, 0 } }, { { id = 0, scores = { 0, 1, 0 } } }, {})
    assert.is_false(r.accept)
    assert.matches("1 on the minibatch, its best parent 1", r.reason)
    -- a merge must beat the better of its two parents
    r = policy:call("accept_child", { scores = { 1, 1, 0 } }, { { id = 1, scores = { 1, 0, 0 } }, { id = 2, scores = { 1, 1, 0 } } }, {})
    assert.is_false(r.accept)
    -- min_gain raises the bar
    r = policy:call("accept_child", { scores = { 1, 1, 0 } }, { { id = 0, scores = { 1, 0, 0 } } }, { min_gain = 1 })
    assert.is_false(r.accept)
  end)

  it("merges the most complementary pair of the front, never the seed, and nothing when none complements", function()
    local pool = { m(0, { 0, 0, 0, 0, 0 }), m(1, { 1, 1, 0, 0, 0 }), m(2, { 0, 0, 1, 1, 0 }), m(3, { 0, 0, 0, 0, 1 }, { 1 }) }
    local r = policy:call("pick_merge", pool, {})
    assert.same({ 1, 2 }, ids { r.a, r.b })
    assert.matches("each wins 2", r.reason)
    -- merge_min_wins = 2 rules out member 3 (it wins one case)
    pool = { m(0, { 0, 0, 0 }), m(1, { 1, 0, 0 }), m(2, { 0, 1, 1 }) }
    assert.same({ 1, 2 }, ids { policy:call("pick_merge", pool, {}).a, policy:call("pick_merge", pool, {}).b })
    assert.is_nil(policy:call("pick_merge", pool, { merge_min_wins = 2 }).a)
    -- one member dominating: nothing to merge
    pool = { m(0, { 0, 0 }), m(1, { 1, 0 }), m(2, { 1, 1 }) }
    assert.is_nil(policy:call("pick_merge", pool, {}).a)
  end)

  it("hands the gate the front's members, best mean first, never the seed, at most `candidates`", function()
    local pool = { m(0, { 1, 0, 0, 0 }), m(1, { 0, 0, 0, 1 }), m(2, { 1, 1, 1, 0 }), m(3, { 1, 1, 0, 0 }), m(4, { 0, 0, 1, 1 }) }
    local r = policy:call("final", pool, { candidates = 3 })
    assert.same({ 2, 4 }, r.ids) -- 1 and 3 are dominated; the seed never goes
    r = policy:call("final", pool, { candidates = 1 })
    assert.same({ 2 }, r.ids)
    r = policy:call("final", { m(0, { 1 }) }, { candidates = 3 })
    assert.same({}, r.ids)
  end)
end)
