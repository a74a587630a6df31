-- A new user's first hour, from the installed files alone: `make install`
-- into a temporary DESTDIR with another PREFIX than the build's, `ratchet
-- init`, the project's busted specs, `ratchet check` (and what it says about
-- a typo), `ratchet eval --standalone`; and a binary run from the build tree
-- with a config outside it finds the tree's own scripts.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local q = engine.shell_quote

-- runs a shell command; returns its exit code and output (stdout and stderr)
local function sh(cmd)
  local p = io.popen("(" .. cmd .. ") 2>&1; echo \"rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return rc, out:gsub("rc=%d+%s*$", "")
end

-- the suite's environment points at the build tree: a user's has none of it
local CLEAN_ENV = "env -u RATCHET_LUA_CPATH -u RATCHET_SHARE_DIR -u RATCHET_BIN -u LUA_PATH -u LUA_CPATH "

describe("the installed kit", function()
  local dest, prefix, bin, project

  setup(function()
    dest = engine.tmpdir()
    -- not the build's PREFIX (/usr/local): the binary must find its files all the same
    prefix = dest .. "/usr"
    local rc, out = sh(string.format("make -s install DESTDIR=%s PREFIX=/usr", q(dest)))
    assert.equal(0, rc, out)
    bin = prefix .. "/bin/ratchet"
    project = engine.tmpdir() .. "/support"
  end)
  teardown(function()
    os.execute("rm -rf " .. q(dest) .. " " .. q(project:match("^(.*)/support$")))
  end)

  it("ships the spec helper, the sandbox module and the project skeleton", function()
    for _, f in ipairs {
      "/share/ratchet/lua/ratchet/testing.lua", "/lib/ratchet/ratchet_sandbox.so",
      "/share/ratchet/skeleton/ratchet.conf", "/share/ratchet/skeleton/evaluators/polite.lua",
      "/share/ratchet/skeleton/spec/polite_spec.lua", "/share/ratchet/skeleton/policies/trigger.lua",
      "/share/ratchet/skeleton/datasets/golden.jsonl", "/share/doc/ratchet/evaluators.md",
    } do
      assert.is_not_nil(engine.read_file(prefix .. f), f .. " is missing")
    end
  end)

  it("installs the console's files with Chart.js beside them, and the installed engine serves them", function()
    for _, f in ipairs { "index.html", "app.js", "style.css" } do
      assert.equal(engine.read_file(engine.root .. "/console/" .. f), engine.read_file(prefix .. "/share/ratchet/console/" .. f), f)
    end
    assert.equal(engine.read_file("/usr/share/javascript/chart.js/chart.min.js"),
      engine.read_file(prefix .. "/share/ratchet/console/chart.js"))
    local saved = engine.bin
    engine.bin = bin
    local e = engine.start { config = "" }
    engine.bin = saved
    local r = e:get("/console/app.js")
    e:stop()
    assert.equal(200, r.status)
    assert.equal(engine.read_file(engine.root .. "/console/app.js"), r.body)
  end)

  it("makes a project whose specs pass and whose config checks, with nothing from the source tree", function()
    local rc, out = sh(CLEAN_ENV .. q(bin) .. " init " .. q(project))
    assert.equal(0, rc, out)
    assert.matches("made a ratchet project", out)
    -- busted as a user runs it, from the project folder, with its .busted
    rc, out = sh("cd " .. q(project) .. " && " .. CLEAN_ENV .. "lua5.4 /usr/bin/busted -o TAP")
    assert.equal(0, rc, out)
    assert.matches("ok 7 ", out)
    assert.is_nil(out:find("not ok", 1, true), out)
    -- the shipped folder named is the installed one, not the build's PREFIX
    rc, out = sh("cd " .. q(project) .. " && " .. CLEAN_ENV .. q(bin) .. " check -c ratchet.conf")
    assert.equal(0, rc, out)
    assert.matches("first wins: %., " .. (prefix .. "/share/ratchet"):gsub("%p", "%%%0") .. "%)", out)
    -- init never writes over a file
    rc, out = sh(CLEAN_ENV .. q(bin) .. " init " .. q(project))
    assert.equal(3, rc, out)
    assert.matches("is already there; nothing was written", out)
  end)

  it("says where a typo in the evaluator is, and the spec fails until it is fixed", function()
    local file = project .. "/evaluators/polite.lua"
    local good = assert(engine.read_file(file))
    engine.write_file(file, (good:gsub("for _, w in ipairs%(words%)", "for _, w in ipairs(wrods)")))
    local rc, out = sh("cd " .. q(project) .. " && " .. CLEAN_ENV .. "lua5.4 /usr/bin/busted -o TAP")
    assert.are_not.equal(0, rc)
    assert.matches("unknown global 'wrods'", out)
    engine.write_file(file, (good:gsub("evaluate = function", "evaluate = fnction")))
    rc, out = sh("cd " .. q(project) .. " && " .. CLEAN_ENV .. q(bin) .. " check -c ratchet.conf")
    assert.equal(3, rc, out)
    assert.matches("evaluators/polite%.lua:%d+:", out)
    engine.write_file(file, good)
    rc, out = sh("cd " .. q(project) .. " && " .. CLEAN_ENV .. q(bin) .. " check -c ratchet.conf")
    assert.equal(0, rc, out)
  end)

  it("runs the project's prompt versions through the gate with ratchet eval --standalone", function()
    -- a fake provider: it apologises only when its system prompt says to
    local fake = fake_llm.start { model = [[
return function(request)
  local system = request.messages[1].content
  if system:find("Apologise", 1, true) then return "Sorry for the trouble, we are on it." end
  return "That is your fault, obviously."
end]] }
    local rc, out = sh("cd " .. q(project) .. " && " .. CLEAN_ENV .. "OPENAI_BASE_URL=" .. q(fake:url("/v1")) ..
      " OPENAI_API_KEY=sk-test " .. q(bin) .. " eval --standalone -c ratchet.conf --dataset-file datasets/golden.jsonl" ..
      " --baseline-file prompts/v1.json --candidate-file prompts/v2.json --junit report.xml -q")
    fake:stop()
    assert.equal(0, rc, out)
    assert.matches("says 'your fault'", out)
    assert.is_not_nil(engine.read_file(project .. "/report.xml"))
  end)
end)

describe("a binary run from the build tree", function()
  it("finds the tree's own evaluators for a config outside the tree", function()
    local dir = engine.tmpdir()
    engine.write_file(dir .. "/ratchet.conf",
      'prompt "p" { evaluators = { "json_valid", { "max_length", options = { max_chars = 100 } } } }\n')
    local code, out, err = engine.run("check -c " .. q(dir .. "/ratchet.conf"), {})
    os.execute("rm -rf " .. q(dir))
    assert.equal(0, code, out .. err)
    assert.matches("first wins: " .. dir:gsub("%p", "%%%0") .. ", " .. engine.root:gsub("%p", "%%%0") .. "%)", out)
  end)

  it("runs ratchet eval --standalone with such a config (it failed: no evaluator 'max_length')", function()
    local fake = fake_llm.start {}   -- echoes the last message
    local dir = engine.tmpdir()
    engine.write_file(dir .. "/ratchet.conf", string.format([[
provider "fake" { kind = "openai", base_url = %q, default_model = "m" }
prompt "echo" { evaluators = { { "max_length", options = { max_chars = 10000 } } } }
]], fake:url("/v1")))
    engine.write_file(dir .. "/cases.jsonl", '{"id":"a","variables":{"x":"hello"}}\n')
    for v, content in pairs { v1 = "{{x}}", v2 = "{{x}}" } do
      engine.write_file(dir .. "/" .. v .. ".json", engine.json.encode {
        messages = { { role = "user", content = content } }, model = { provider = "fake" } })
    end
    local code, out, err = engine.run(string.format("eval --standalone -c %s/ratchet.conf --dataset-file %s/cases.jsonl " ..
      "--baseline-file %s/v1.json --candidate-file %s/v2.json -q", dir, dir, dir, dir))
    fake:stop()
    os.execute("rm -rf " .. q(dir))
    assert.is_nil((out .. err):find("no evaluator", 1, true), out .. err)
    assert.matches("v1%s+baseline%s+100%.0%%", out)
    assert.is_true(code < 3, "exit " .. tostring(code) .. ": " .. out .. err)
  end)
end)
