-- spec/polite_spec.lua — runs evaluators/polite.lua in the engine's own
-- sandbox (ratchet.testing), with no engine: `busted` in this folder.
local testing = require "ratchet.testing"

describe("polite", function()
  local ev = testing.evaluator("polite")
  local opts = { words = { "your fault", "obviously" } }

  it("passes a polite answer", function()
    local r = ev:evaluate({ output = "Sorry about that, the refund is on its way." }, opts)
    assert.is_true(r.pass)
    assert.equal("ok", r.status)
  end)

  it("fails an answer that blames the customer, saying why", function()
    local r = ev:evaluate({ output = "That is YOUR FAULT, you typed it wrong." }, opts)
    assert.is_false(r.pass)
    assert.equal("says 'your fault'", r.reason)
  end)

  it("refuses a misconfigured attachment, as ratchet check would", function()
    local ok, problems = ev:check_options({ word = { "your fault" } })
    assert.is_false(ok)
    assert.matches("unknown option 'word'; did you mean 'words'", problems[1], 1, true)
    local r = ev:evaluate({ output = "hi" }, { words = "your fault" })
    assert.equal("error", r.status)
    assert.matches("option 'words' must be a list", r.reason)
  end)
end)
