-- `make demo` end to end (demo/run.sh with the fake LLM server): it must
-- run the whole loop and say plainly that the models are simulations.
local engine = require "spec.helpers.engine"

describe("make demo", function()
  it("runs the loop from failures to a promoted fix, and says the models are simulated", function()
    local out = io.popen("RATCHET_BIN=" .. engine.shell_quote(engine.bin) .. " RATCHET_DEMO_API_KEY= timeout "
      .. (120 * engine.slow) .. " ./demo/run.sh 2>&1; echo \"exit=$?\"")
    local text = out:read("a")
    out:close()
    assert.matches("exit=0", text)
    assert.matches("SIMULATION", text)
    assert.matches("console: http://127%.0%.0%.1:%d+/console/", text)
    assert.matches("golden dataset of 7 cases", text)
    assert.matches("%[trigger%]", text)
    assert.matches("rejected before the gate", text)
    assert.matches("v2 regressed %(breaks critical", text)
    assert.matches("v3 improved %(improved on cases the optimizer never saw: fixes %d+ of %d+, breaks 0", text)
    assert.matches("%[canary%]", text)
    assert.matches("%[advance%]%s+v3: canary 10%% %-> 50%%", text)
    assert.matches("%[promote%]", text)
    assert.matches("pass rate before: 67%% %(v1%)   after: 100%% %(v3", text)
  end)
end)
