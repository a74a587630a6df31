-- evaluators/polite.lua — a custom evaluator: the answer never blames the
-- customer. Yours to change; the contract is in docs/evaluators.md
-- (installed in share/doc/ratchet/). `ratchet check -c ratchet.conf` loads
-- it as the engine will; spec/polite_spec.lua tests it with busted.
local text = require "lib.text"   -- a module of the shipped evaluators

return {
  name = "polite",
  description = "the answer does not blame the customer",
  -- checked when the config loads: a typo or a wrong type is an error
  -- naming the config line, never a failure on every trace
  options = {
    words = { type = "list", items = "string", required = true, nonempty = true,
              description = "phrases that must not appear (any case)" },
  },
  evaluate = function(case, opts)
    local words = opts.words
    local answer = text.output_text(case):lower()
    for _, w in ipairs(words) do
      if answer:find(w:lower(), 1, true) then
        return { pass = false, score = 0, reason = "says '" .. w .. "'" }
      end
    end
    return { pass = true, score = 1, reason = "polite" }
  end,
}
