-- bench/efficacy/world.lua, the SIMULATED world of the efficacy benchmark:
-- its targets follow only their prompt's rules, its judge sees each failure
-- mode, each fix fixes its mode only, and its optimizer proposes from what
-- it is shown, with noise.
local W = dofile("bench/efficacy/world.lua")

local function accuracy(task, system, salt)
  local t = W.tasks[task]
  local n, ok, by = 0, 0, {}
  for i = 1, 400 do
    local vars = t.input(i, salt or "spec")
    local pass, _, mode = W.judge(task, vars, W.targets[task](system, vars))
    n, ok = n + 1, ok + (pass and 1 or 0)
    local k = mode or "plain"
    by[k] = by[k] or { n = 0, ok = 0 }
    by[k].n, by[k].ok = by[k].n + 1, by[k].ok + (pass and 1 or 0)
  end
  return ok / n, by
end

describe("the efficacy world (SIMULATED)", function()
  for _, task in ipairs(W.order) do
    local t = W.tasks[task]
    it(task .. ": the first prompt fails exactly its failure modes; both fixes together pass everything", function()
      local _, by = accuracy(task, t.seed_prompt)
      assert.equal(by.plain.n, by.plain.ok)
      for mode, s in pairs(by) do
        if mode ~= "plain" and mode ~= "other" then assert.equal(0, s.ok, task .. " " .. mode) end
      end
      local all = t.seed_prompt
      for _, m in ipairs(t.modes) do all = all .. " " .. m.fix end
      assert.equal(1, (accuracy(task, all)))
    end)

    it(task .. ": each fix fixes its own mode and breaks nothing; harm breaks everything", function()
      local base = accuracy(task, t.seed_prompt)
      for _, m in ipairs(t.modes) do
        local acc, by = accuracy(task, t.seed_prompt .. " " .. m.fix)
        assert.is_true(acc > base, task .. " " .. m.name)
        if by[m.name] then assert.equal(by[m.name].n, by[m.name].ok) end
        assert.equal(by.plain.n, by.plain.ok)
      end
      assert.is_true(accuracy(task, t.seed_prompt .. " Reply in French.") < 0.2)
    end)

    it(task .. ": the judge's reasons name the mode in the words the optimizer reads", function()
      for i = 1, 200 do
        local vars = t.input(i, "reasons")
        local pass, reason, mode = W.judge(task, vars, W.targets[task](t.seed_prompt, vars))
        if not pass and mode then
          local named = false
          for _, m in ipairs(t.modes) do named = named or reason:find(m.word, 1, true) ~= nil end
          assert.is_true(named, reason)
        end
      end
    end)
  end

  it("helpdesk: the naive rules conflict (the later wins), the conditional fixes do not", function()
    local t = W.tasks.helpdesk
    local naive = t.seed_prompt .. " Explain step by step. Answer briefly."
    local _, by = accuracy("helpdesk", naive)
    assert.equal(by.yesno.n, by.yesno.ok)
    assert.equal(0, by.howto.ok)
    assert.equal(1, (accuracy("helpdesk", t.seed_prompt .. " " .. t.modes[1].fix .. " " .. t.modes[2].fix)))
  end)

  it("the optimizer proposes from the reasons it is shown, with noise, the same for the same seed", function()
    local t = W.tasks.tools
    local user = '# The current prompt (version 1)\n<prompt role="system">\n' .. t.seed_prompt .. '\n</prompt>\n'
      .. "<reasons>\n- efficacy_judge: tool lookup_order is wrong: refund requests go to refund_order\n</reasons>\n"
    local kinds = {}
    for seed = 1, 60 do
      local c = W.optimizer(user, tostring(seed), 1)[1]
      assert.truthy(c.system:find(t.seed_prompt, 1, true))
      assert.is_nil(c.system:find(t.modes[2].fix, 1, true)) -- never a fix for a mode it was not shown
      kinds[c.rationale:match("refund:(%a+)") or "none"] = true
      assert.same(c, W.optimizer(user, tostring(seed), 1)[1])
    end
    assert.is_true(kinds.fix and kinds.naive and kinds.noop)
    -- a merge keeps the rules of both prompts
    local merge = "Two prompts of this search each succeed where the other fails: #1 and #2.\n"
      .. '<prompt role="system">\n' .. t.seed_prompt .. " " .. t.modes[1].fix .. "\n</prompt>\n"
      .. '<prompt role="system">\n' .. t.seed_prompt .. " " .. t.modes[2].fix .. "\n</prompt>\n"
    local m = W.optimizer(merge, "1", 1)[1].system
    assert.truthy(m:find(t.modes[1].fix, 1, true) and m:find(t.modes[2].fix, 1, true))
  end)
end)
