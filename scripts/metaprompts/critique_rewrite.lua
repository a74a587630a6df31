-- critique_rewrite.lua — critique, then rewrite (ProTeGi's "textual
-- gradients", Pryzant et al. 2023): the optimizer first diagnoses each
-- cluster of failures, then edits the prompt to address each diagnosis.
local mp = require "lib.metaprompt"

-- failures grouped by their first reason's evaluator, for the diagnosis
local function clusters(failures)
  local by, order = {}, {}
  for _, f in ipairs(failures or {}) do
    local r = (f.reasons or {})[1]
    local k = r and tostring(r.evaluator) or "negative feedback"
    if not by[k] then by[k] = {}; order[#order + 1] = k end
    table.insert(by[k], f)
  end
  local out = {}
  for i, k in ipairs(order) do
    out[#out + 1] = string.format("## Cluster %d: %s (%d failure(s))\n%s", i, k, #by[k], mp.show_failures(by[k], 6))
  end
  return table.concat(out, "\n\n")
end

return {
  name = "critique_rewrite",
  description = "diagnoses each cluster of failures, then edits the system message to address each diagnosis",
  editable = { "system" },

  build = function(ctx)
    local system = "You are an expert prompt engineer who debugs prompts like code. " .. mp.DATA_RULE
    local user = table.concat({
      "# The current prompt (version " .. tostring(ctx.current.version) .. ")",
      mp.show_messages(ctx.current.messages),
      "# Failures, clustered by the evaluator that failed them",
      clusters(ctx.failures),
      "# Your task",
      "Step 1, critique: for each cluster, say in one sentence what in the prompt causes it (the 'gradient').",
      "Step 2, rewrite: edit the prompt to address every diagnosis, changing as little as needed. " .. mp.rules(ctx),
      'Answer with one JSON object and nothing else:\n{"diagnosis": [{"cluster": 1, "cause": "..."}], '
        .. '"candidates": [{"system": "the complete new system message", "rationale": "which diagnosis it addresses and how"}]}',
    }, "\n\n")
    return { { role = "system", content = system }, { role = "user", content = user } }
  end,

  parse = function(text, ctx)
    local answer = mp.decode_answer(text)
    local diag = {}
    for _, d in ipairs(type(answer.diagnosis) == "table" and answer.diagnosis or {}) do
      if type(d) == "table" and d.cause then diag[#diag + 1] = tostring(d.cause) end
    end
    return { candidates = mp.candidates(answer, table.concat(diag, "; ")) }
  end,
}
