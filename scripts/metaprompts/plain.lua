-- plain.lua — the plain meta-prompt: an expert prompt engineer reads the
-- failures and writes improved system messages. Contract: docs/loop.md.
local mp = require "lib.metaprompt"

return {
  name = "plain",
  description = "an expert prompt engineer analyses the failures and rewrites the system message",
  editable = { "system" },

  build = function(ctx)
    local system = "You are an expert prompt engineer. You improve the prompt of a production LLM feature so "
      .. "that it stops failing, without breaking what already works. " .. mp.DATA_RULE
    local user = table.concat({
      "## The current prompt (version " .. tostring(ctx.current.version) .. ")",
      mp.show_messages(ctx.current.messages),
      "## Failures seen in production, with each evaluator's reason",
      mp.show_failures(ctx.failures),
      "## Your task",
      "Find what the prompt fails to say that makes these outputs fail, and fix it with general instructions. "
        .. mp.rules(ctx),
      mp.ANSWER_FORMAT,
    }, "\n\n")
    return { { role = "system", content = system }, { role = "user", content = user } }
  end,

  parse = function(text, ctx)
    return { candidates = mp.candidates(mp.decode_answer(text)) }
  end,
}
