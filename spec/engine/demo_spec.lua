-- `make demo` end to end (demo/run.sh with the fake LLM server): it must
-- run the whole loop and say plainly that the models are simulations. The
-- gepa and gateway variants are the same scenario in another mode: tagged
-- #heavy, they run in `make test`, not again under ASan (where the slower
-- engine lets more traffic in before the trigger and the gate's timing shifts).
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
    -- the reason names what v2 broke: a critical case, or (when the gate
    -- stopped early and the first case to finish was a plain golden one) that case
    assert.matches("v2 regressed %(breaks [%w ]+case%(s%)", text)
    assert.matches("v3 improved %(improved on cases the optimizer never saw: fixes %d+ of %d+, breaks 0", text)
    assert.matches("%[canary%]", text)
    assert.matches("%[advance%]%s+v3: canary 10%% %-> 50%%", text)
    assert.matches("%[promote%]", text)
    assert.matches("pass rate before: 67%% %(v1%)   after: 100%% %(v3", text)
  end)

  it("runs with the gepa search (demo/run.sh --template gepa): its pool goes to the gate, the fix is promoted #heavy", function()
    local out = io.popen("RATCHET_BIN=" .. engine.shell_quote(engine.bin) .. " RATCHET_DEMO_API_KEY= timeout "
      .. (120 * engine.slow) .. " ./demo/run.sh --template gepa 2>&1; echo \"exit=$?\"")
    local text = out:read("a")
    out:close()
    assert.matches("exit=0", text)
    assert.matches("SIMULATION", text)
    assert.matches("%[search%]%s+gepa search %(seed 1%)", text)
    assert.matches("candidate%(s%) from template gepa", text)
    assert.matches("v2 improved", text)
    assert.matches("%[promote%]", text)
    assert.matches("after: 100%% %(v2", text)
    out = io.popen("./demo/run.sh --tempalte gepa 2>&1; echo \"exit=$?\"")
    text = out:read("a")
    out:close()
    assert.matches("unknown flag %-%-tempalte", text)
    assert.matches("exit=2", text)
  end)
end)

describe("make demo-gateway", function()
  -- the loop improving a prompt whose only traffic comes through the gateway:
  -- no trace is posted by the application, the engine captures every one
  it("runs the same loop with every request through POST /v1/chat/completions #heavy", function()
    local out = io.popen("RATCHET_BIN=" .. engine.shell_quote(engine.bin) .. " RATCHET_DEMO_API_KEY= RATCHET_DEMO_GATEWAY=1 "
      .. "timeout " .. (120 * engine.slow) .. " ./demo/run.sh 2>&1; echo \"exit=$?\"")
    local text = out:read("a")
    out:close()
    assert.matches("exit=0", text)
    assert.matches("GATEWAY: the application calls POST /v1/chat/completions", text)
    assert.matches("%[trigger%]", text)
    assert.matches("%[canary%]%s+v3 is the canary", text)
    assert.matches("%d+ on the canary v3", text)
    assert.matches("%[promote%]", text)
    assert.matches("pass rate before: 67%% %(v1%)   after: 100%% %(v3", text)
  end)
end)
