-- gepa.lua — reflective evolution with a Pareto pool (GEPA, Agrawal et al.
-- 2025). `search = "gepa"` hands the cycle to the engine's search
-- (engine/loop/gepa.c, docs/loop.md "The gepa strategy"): it keeps a pool of
-- prompts, runs them on a feedback set, and asks this template for two
-- kinds of prompt:
--   build(ctx)  a reflection: one pool member (ctx.current) with its
--               failures and passes on a minibatch; propose an edit
--   merge(ctx)  two members (ctx.a, ctx.b) that win on different cases;
--               combine what each gets right
-- parse(text, ctx) reads either answer. The search policy
-- (policies/search.lua) picks parents, admits children and chooses what
-- goes to the gate; the gate decides, unchanged.
--
-- Against overfitting and copying, the reflection shows evaluator reasons
-- and abstracted descriptions of the failures (what kind of input, which
-- rule, with the numbers and quoted values taken out) beside the raw
-- traces, and asks for general rules; the engine's copy check runs on every
-- child before it costs a call.
local mp = require "lib.metaprompt"

-- a reason with its specifics taken out: "expected 'billing', got 'Billing'
-- at 3" -> "expected <value>, got <value> at <n>"
local function abstract(reason)
  reason = tostring(reason or "")
  reason = reason:gsub("'[^']*'", "<value>"):gsub('"[^"]*"', "<value>"):gsub("%d+%.?%d*", "<n>")
  return reason
end

-- the failure modes of the minibatch: each abstracted reason with its count
local function failure_modes(failures)
  local count, order = {}, {}
  for _, f in ipairs(failures or {}) do
    local reasons = f.reasons or {}
    if #reasons == 0 then reasons = { { evaluator = "feedback", reason = "negative feedback from the user" } } end
    for _, r in ipairs(reasons) do
      local k = tostring(r.evaluator) .. ": " .. abstract(r.reason)
      if not count[k] then count[k] = 0; order[#order + 1] = k end
      count[k] = count[k] + 1
    end
  end
  local out = {}
  for _, k in ipairs(order) do out[#out + 1] = string.format("- %s (%d case(s))", k, count[k]) end
  return table.concat(out, "\n")
end

local function show_passes(passing)
  local out = {}
  for i, p in ipairs(passing or {}) do
    out[#out + 1] = string.format("### Passing case %d\nInput variables:\n%s", i, mp.fence(mp.encode(p.input), 600))
  end
  return table.concat(out, "\n\n")
end

local SYSTEM = "You are an expert prompt engineer improving a prompt by reflecting on how it behaved. "
  .. mp.DATA_RULE

local ANSWER = 'Answer with one JSON object and nothing else:\n'
  .. '{"candidates": [{"system": "the complete new system message", "rationale": "which failure mode it fixes and why it generalises"}]}'

return {
  name = "gepa",
  description = "GEPA: reflective evolution over a Pareto pool of prompts, with merges; the engine runs the search",
  editable = { "system" },
  search = "gepa",

  build = function(ctx)
    local cur = ctx.current or {}
    local user = table.concat({
      string.format("Pool member #%s of this search.", tostring(cur.pool_id or 0)),
      "# The current prompt (version " .. tostring(cur.version) .. ")",
      mp.show_messages(cur.messages),
      "# Failure modes on this minibatch (abstracted)",
      failure_modes(ctx.failures),
      "# The failing cases, with the evaluators' reasons",
      mp.show_failures(ctx.failures, 6),
      #(ctx.passing or {}) > 0 and "# Cases it already passes (keep them passing)\n" .. show_passes(ctx.passing) or "",
      "# Your task",
      "Reflect: what in the prompt causes each failure mode? Then edit the prompt to fix the failure modes "
        .. "with general rules that hold for any input of that kind, without breaking the cases that pass. "
        .. "Do not mention specific inputs, names or values from the cases. " .. mp.rules(ctx),
      ANSWER,
    }, "\n\n")
    return { { role = "system", content = SYSTEM }, { role = "user", content = user } }
  end,

  merge = function(ctx)
    local a, b = ctx.a or {}, ctx.b or {}
    local user = table.concat({
      string.format("Two prompts of this search each succeed where the other fails: #%s and #%s.",
        tostring(a.id), tostring(b.id)),
      "# The current prompt (version " .. tostring((ctx.current or {}).version) .. ")",
      mp.show_messages(a.messages),
      "# Prompt B",
      mp.show_messages(b.messages),
      "# What each changed",
      "A: " .. tostring(a.rationale or "") .. "\nB: " .. tostring(b.rationale or ""),
      "# Your task",
      "Write one prompt that keeps every rule of A and every rule of B that fixes a failure, reconciling "
        .. "rules that look contradictory by saying when each applies. " .. mp.rules(ctx),
      ANSWER,
    }, "\n\n")
    return { { role = "system", content = SYSTEM }, { role = "user", content = user } }
  end,

  parse = function(text, ctx)
    return { candidates = mp.candidates(mp.decode_answer(text)) }
  end,
}
