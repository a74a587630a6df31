-- history.lua — history-aware optimization (OPRO, Yang et al. 2023): the
-- optimizer sees earlier versions with their online pass rates, worst to
-- best, and is asked for a prompt that scores higher than all of them.
local mp = require "lib.metaprompt"

local function trajectory(history)
  local list = {}
  for _, h in ipairs(history or {}) do
    if (h.traces or 0) > 0 then list[#list + 1] = h end
  end
  table.sort(list, function(a, b) return (a.pass_rate or 0) < (b.pass_rate or 0) end)
  local out = {}
  for _, h in ipairs(list) do
    out[#out + 1] = string.format("### Version %d (%s): pass rate %.1f%% over %d traces\n%s", h.version,
      tostring(h.status), 100 * (h.pass_rate or 0), h.traces or 0, mp.show_messages(h.messages))
  end
  if #out == 0 then return "(no version has scored traces yet)" end
  return table.concat(out, "\n\n")
end

return {
  name = "history",
  description = "shows earlier versions with their pass rates, worst to best, and asks for one that beats them all",
  editable = { "system" },

  build = function(ctx)
    local system = "You are an expert prompt engineer optimizing a prompt step by step. Earlier versions and "
      .. "their scores show what helped and what hurt. " .. mp.DATA_RULE
    local user = table.concat({
      "## Earlier versions and their pass rates (worst first)",
      trajectory(ctx.history),
      "## The current prompt (version " .. tostring(ctx.current.version) .. ")",
      mp.show_messages(ctx.current.messages),
      "## Failures of the current version",
      mp.show_failures(ctx.failures),
      "## Your task",
      "Write prompts that would score higher than every version above: keep what the best ones do, fix what "
        .. "these failures show. " .. mp.rules(ctx),
      mp.ANSWER_FORMAT,
    }, "\n\n")
    return { { role = "system", content = system }, { role = "user", content = user } }
  end,

  parse = function(text, ctx)
    return { candidates = mp.candidates(mp.decode_answer(text)) }
  end,
}
