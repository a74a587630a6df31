-- A prompt declared in the config but not yet in the registry is shown as
-- config-only (GET /v1/prompts, `ratchet prompt list`, `ratchet status`),
-- and optimizing a prompt with no production version says what to do next,
-- with the commands.
local engine = require "spec.helpers.engine"

describe("prompts declared in the config", function()
  local e, dir, url
  before_each(function()
    dir = engine.tmpdir()
    e = engine.start { config = string.format([[
scripts = { dirs = { %q } }
provider "fake" { kind = "openai", base_url = "http://127.0.0.1:9/v1", default_model = "m" }
prompt "tickets" { evaluators = { "json_valid" }, loop = { optimizer = { provider = "fake", model = "m" } } }
]], engine.root) }
    url = "--url http://" .. e.addr
  end)
  after_each(function()
    e:stop()
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)

  it("are listed as config-only until a first version is added, with the commands to add one", function()
    local items = e:get("/v1/prompts").json.items
    assert.equal(1, #items)
    assert.equal("tickets", items[1].name)
    assert.is_false(items[1].registered)
    assert.is_true(items[1].in_config)
    assert.matches("ratchet prompt add tickets VERSION%.json", items[1].next)
    local code, out = engine.run("prompt list " .. url)
    assert.equal(0, code)
    assert.matches("config only, not in the registry: add a first version with `ratchet prompt add tickets", out)
    code, out = engine.run("status " .. url)
    assert.equal(0, code, out) -- a note, not a problem
    assert.matches("\ntickets%s+%-%s+%-%s+%-%s+%-%s+config only", out)
    assert.matches("notes:\n  prompt tickets is in the config only[^\n]*\n    next: add a first version with `ratchet "
      .. "prompt add tickets VERSION%.json`", out)
  end)

  it("optimize without a production version says what to do next, with the commands", function()
    local r = e:post("/v1/prompts/tickets/optimize", {})
    assert.equal(409, r.status)
    assert.equal("no_production", r.json.error.code)
    assert.matches("`ratchet prompt add tickets VERSION%.json`.*`ratchet prompt promote tickets 1`.*`ratchet optimize "
      .. "tickets`", r.json.error.message)
    local code, _, err = engine.run("optimize tickets " .. url)
    assert.equal(3, code)
    assert.matches("ratchet prompt add tickets VERSION%.json", err)
    -- one version, none in production: promote it
    engine.write_file(dir .. "/v1.json", engine.json.encode({
      messages = { { role = "system", content = "Triage." } }, model = { provider = "fake", model = "m" } }))
    assert.equal(0, (engine.run("prompt add tickets " .. dir .. "/v1.json " .. url)))
    local items = e:get("/v1/prompts").json.items
    assert.is_true(items[1].registered)
    r = e:post("/v1/prompts/tickets/optimize", {})
    assert.equal(409, r.status)
    assert.matches("Make one of its 1 version production with `ratchet prompt promote tickets VERSION` %(`ratchet "
      .. "prompt show tickets` lists them%)", r.json.error.message)
  end)
end)
