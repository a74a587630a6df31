-- Numbers read back as they went in: every answer and message writes a
-- number as the shortest text that reads back as the same double (0.8, not
-- 0.80000000000000004), never rounded.
local engine = require "spec.helpers.engine"
local sandbox = require "spec.helpers.sandbox"

describe("numbers in answers and messages", function()
  it("the API and the CLI's --json write 0.8 as 0.8, and a trace reads back as it was sent", function()
    local e = engine.start {}
    assert.equal(201, e:post("/v1/prompts", { name = "p", canary_share = 0.8 }).status)
    local list = e:get("/v1/prompts")
    assert.truthy(list.body:find('"canary_share":0.8[,}]'), list.body)
    local code, out = engine.run("prompt list --json --url http://" .. e.addr)
    assert.equal(0, code)
    assert.truthy(out:find('"canary_share": 0.8,', 1, true), out)
    e:post("/v1/traces", '{"id":"t1","prompt":{"name":"p"},"output":"x","latency_ms":0.1,'
      .. '"metadata":{"a":0.3,"b":0.30000000000000004,"c":1e300}}', { content_type = "application/json" })
    local t = e:get("/v1/traces/t1").body
    assert.truthy(t:find('"latency_ms":0.1,', 1, true), t)
    assert.truthy(t:find('"a":0.3,"b":0.30000000000000004,"c":1e+300', 1, true), t) -- exact, not rounded either
    e:stop()
  end)

  it("ratchet.json.encode in scripts writes the shortest exact text", function()
    local dir = engine.tmpdir()
    engine.write_file(dir .. "/enc.lua", [[
return { name = "enc", description = "encodes", evaluate = function(case)
  return { pass = true, reason = ratchet.json.encode({ x = 0.1, y = 2.0, z = 1 / 3 }) } end }
]])
    local ev = assert(sandbox.load_evaluator(dir .. "/enc.lua"))
    local reason = ev:evaluate({ output = "x" }).reason
    assert.truthy(reason:find('"x":0%.1[,}]'), reason)
    assert.truthy(reason:find('"y":2%.0[,}]'), reason)
    assert.truthy(reason:find('"z":0%.3333333333333333[,}]'), reason)
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)
end)
