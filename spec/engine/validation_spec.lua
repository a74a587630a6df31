-- Mistakes a user makes on day one are caught when the config or a script
-- loads — `ratchet check`, `ratchet serve` at start, and every reload — with
-- the config file and line, the prompt, the script and the setting named:
-- evaluator options against each evaluator's declaration, the loop's
-- template, policies, their options and the optimizer's provider, and the
-- contract of policies and templates.
local engine = require "spec.helpers.engine"

local root = engine.root

local function check(dir, conf)
  engine.write_file(dir .. "/ratchet.conf", conf)
  local code, out, err = engine.run("check -c " .. engine.shell_quote(dir .. "/ratchet.conf"))
  return code, out, err
end

local function with_dir(fn)
  local dir = engine.tmpdir()
  local ok, err = pcall(fn, dir)
  os.execute("rm -rf " .. engine.shell_quote(dir))
  if not ok then error(err, 0) end
end

-- reloads come from SIGHUP alone: a file watch firing mid-test would race the signal
local HEAD = string.format('scripts = { dirs = { "mine", %q }, watch = false }\n', root)

describe("evaluator options are checked when the config loads", function()
  it("ratchet check: a typo names the file:line, prompt, evaluator and option, with a suggestion", function()
    with_dir(function(dir)
      local code, out, err = check(dir, HEAD .. [[
prompt "p" {
  evaluators = {
    "json_valid",
    { "contains", options = { valeu = "x" } },
    { "regex", name = "shape", options = { pattern = "(", flags = "i" } },
    { "max_latency", options = { max_ms = "3s" }, required = false },
  },
}
]])
      assert.equal(3, code, out)
      assert.matches("ratchet%.conf:5: prompt 'p': evaluator 'contains': unknown option 'valeu'; did you mean 'value'%?", err)
      assert.matches("ratchet%.conf:5: prompt 'p': evaluator 'contains': option 'value' is required", err)
      assert.matches("ratchet%.conf:6: prompt 'p': evaluator 'shape' %(regex%): option 'pattern' does not compile", err)
      assert.matches("ratchet%.conf:7: prompt 'p': evaluator 'max_latency': option 'max_ms' must be a number %(got a string%)", err)
      assert.matches("ratchet check: 4 errors", err)
    end)
  end)

  it("ratchet check passes good options, and leaves undeclared options of a custom evaluator unchecked", function()
    with_dir(function(dir)
      os.execute("mkdir -p " .. dir .. "/mine/evaluators")
      engine.write_file(dir .. "/mine/evaluators/free.lua", [[
return { name = "free", description = "no declaration", evaluate = function(case, opts) return { pass = true } end }
]])
      local code, out, err = check(dir, HEAD .. [[
prompt "p" { evaluators = { { "contains", options = { value = { "a", "b" }, mode = "any" } },
                            { "free", options = { anything = { 1, 2 } } } } }
]])
      assert.equal(0, code, err)
      assert.matches("^ok:", out)
    end)
  end)

  it("an option declared `names = \"provider\"` must name a declared provider (llm_judge's provider)", function()
    with_dir(function(dir)
      local P = 'provider "openai" { kind = "openai", api_key = "k", base_url = "http://127.0.0.1:9/v1", default_model = "m" }\n'
      local P2 = 'provider "claude" { kind = "anthropic", api_key = "k", base_url = "http://127.0.0.1:9", default_model = "m" }\n'
      local J = 'prompt "p" { evaluators = { { "llm_judge", options = { rubric = "polite"%s } } } }\n'
      -- a typo in the provider: an error at load, not an evaluator error on every trace
      local code, out, err = check(dir, HEAD .. P .. P2 .. J:format(', provider = "opneai"'))
      assert.equal(3, code, out)
      assert.matches("ratchet%.conf:4: prompt 'p': evaluator 'llm_judge': option 'provider': no provider 'opneai' is declared; did you mean 'openai'%? %(declared: openai, claude%)", err)
      -- no provider named while two are declared: the judge would not know which
      code, out, err = check(dir, HEAD .. P .. P2 .. J:format(""))
      assert.equal(3, code, out)
      assert.matches("option 'provider' is required when the configuration does not declare exactly one provider %(declared: openai, claude%)", err)
      -- none declared at all
      code, out, err = check(dir, HEAD .. J:format(""))
      assert.equal(3, code, out)
      assert.matches("option 'provider' is required when the configuration does not declare exactly one provider %(declared: none%)", err)
      -- one declared and none named, or the right one named: fine
      code, out, err = check(dir, HEAD .. P .. J:format(""))
      assert.equal(0, code, err)
      code, out, err = check(dir, HEAD .. P .. P2 .. J:format(', provider = "claude"'))
      assert.equal(0, code, err)
      -- a declaration may only name what the configuration has
      os.execute("mkdir -p " .. dir .. "/mine/evaluators")
      engine.write_file(dir .. "/mine/evaluators/odd.lua", [[
return { name = "odd", description = "names a database", options = { db = { type = "string", names = "database" } },
         evaluate = function() return { pass = true } end }
]])
      code, out, err = check(dir, HEAD .. P .. 'prompt "p" { evaluators = { "odd" } }\n')
      assert.equal(3, code, out)
      assert.matches("odd%.lua: not an evaluator: options%.db: names must be \"provider\"", err)
    end)
  end)

  it("ratchet serve does not start with options an evaluator rejects", function()
    local code, log = engine.start { expect_fail = true, config = string.format([[
scripts = { dirs = { %q } }
prompt "p" { evaluators = { { "contains", options = { valeu = "x" } } } }
]], root) }
    assert.equal(3, code)
    assert.matches("error%s+config: [^\n]*ratchet%.conf:2: prompt 'p': evaluator 'contains': unknown option 'valeu'; did you mean 'value'%?", log)
    assert.matches("start%-up failed at the scripts: ", log)
  end)
end)

describe("on reload", function()
  local e, dir
  before_each(function()
    dir = engine.tmpdir()
    os.execute("mkdir -p " .. dir .. "/mine/evaluators")
    engine.write_file(dir .. "/mine/evaluators/says.lua", [[
return { name = "says", description = "the output says the word",
  options = { word = { type = "string", required = true, description = "the word" } },
  evaluate = function(case, opts) return { pass = case.output == opts.word, reason = "v1 " .. opts.word } end }
]])
  end)
  after_each(function()
    if e then e:stop() end
    e = nil
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)

  local function status() return e:get("/v1/status").json.scripts end
  local function replace(path, text)
    engine.write_file(path .. ".tmp", text)
    assert(os.rename(path .. ".tmp", path))
  end
  local function reload()
    local before = status().reloads
    e:signal("HUP")
    assert.truthy(engine.eventually(5, function() return status().reloads > before end), "no reload")
    return status()
  end
  local function judged(id)
    e:post("/v1/traces", { id = id, prompt = { name = "p" }, output = "hello" })
    return engine.eventually(5, function()
      local r = e:get("/v1/traces/" .. id).json
      return r.verdict ~= "unevaluated" and r
    end)
  end

  it("a config with bad options keeps the running one, says why in /v1/status and logs it as an error", function()
    e = engine.start { dir = dir, config = HEAD .. 'prompt "p" { evaluators = { { "says", options = { word = "hello" } } } }\n' }
    assert.equal("pass", judged("a").verdict)
    replace(dir .. "/ratchet.conf", HEAD .. 'prompt "p" { evaluators = { { "says", options = { wrod = "hello" } } } }\n')
    local st = reload()
    assert.matches("ratchet%.conf:2: prompt 'p': evaluator 'says': unknown option 'wrod'; did you mean 'word'%?", st.config_error)
    -- the evaluator did not change: the fault is the config's alone
    assert.equal(0, #st.errors, engine.json.encode(st.errors))
    assert.matches("error%s+config: [^\n]*unknown option 'wrod'", e:log_text())
    local t = judged("b")
    assert.equal("pass", t.verdict)
    assert.equal("v1 hello", t.scores[1].reason)
  end)

  it("an evaluator edit whose declaration rejects the running config's options is not used", function()
    e = engine.start { dir = dir, config = HEAD .. 'prompt "p" { evaluators = { { "says", options = { word = "hello" } } } }\n' }
    replace(dir .. "/mine/evaluators/says.lua", [[
return { name = "says", description = "renamed its option",
  options = { text = { type = "string", required = true, description = "the word" } },
  evaluate = function(case, opts) return { pass = false, reason = "v2" } end }
]])
    local st = reload()
    assert.equal(1, #st.errors)
    assert.matches("says%.lua: this version is not used, version %x+ keeps running: [^\n]*ratchet%.conf:2: prompt 'p': "
      .. "evaluator 'says': unknown option 'word'", st.errors[1])
    assert.equal("v1 hello", judged("c").scores[1].reason)
  end)

  it("removing an evaluator file in use keeps its last version running and reports it", function()
    e = engine.start { dir = dir, config = HEAD .. 'prompt "p" { evaluators = { { "says", options = { word = "hello" } } } }\n' }
    os.remove(dir .. "/mine/evaluators/says.lua")
    local st = reload()
    assert.equal(1, #st.errors, engine.json.encode(st.errors))
    assert.matches("says%.lua: the file is gone, but the configuration uses evaluator says: its last version %x+ keeps running",
      st.errors[1])
    local names = {}
    for _, ev in ipairs(st.evaluators) do names[ev.name] = true end
    assert.is_true(names.says)
    assert.equal("v1 hello", judged("d").scores[1].reason)
    assert.matches("error%s+scripts: [^\n]*the file is gone", e:log_text())
    local code, out = engine.run("status --url http://" .. e.addr)
    assert.equal(3, code)
    assert.matches("the file is gone", out)
    -- an evaluator nothing uses is unloaded as before
    replace(dir .. "/ratchet.conf", HEAD .. 'prompt "p" { evaluators = { "json_valid" } }\n')
    st = reload()
    assert.equal(0, #st.errors, engine.json.encode(st.errors))
    names = {}
    for _, ev in ipairs(st.evaluators) do names[ev.name] = true end
    assert.is_nil(names.says)
  end)
  it("names the running config's lines after it was reloaded, when a script edit no longer fits it", function()
    local conf = dir .. "/ratchet.conf"
    e = engine.start { dir = dir, config = HEAD .. 'prompt "p" { evaluators = { "json_valid" }, loop = { rollout_options = { steps = { 5 } } } }\n' }
    -- the config moves the loop further down; it applies
    replace(conf, HEAD .. '-- moved\nprompt "p" {\n  evaluators = { "json_valid" },\n  loop = { rollout_options = { steps = { 5 } } },\n}\n')
    local st = reload()
    assert.equal(engine.json.null, st.config_error)
    -- now, in one reload: a config that does not parse, and a rollout override without 'steps'
    os.execute("mkdir -p " .. dir .. "/mine/policies")
    engine.write_file(dir .. "/mine/policies/rollout.lua", [[
local shipped = { settings = { margin = 0.02 } }
function shipped.next() return { action = "hold", reason = "x" } end
return shipped
]])
    replace(conf, HEAD .. 'prompt "p" {\n')
    st = reload()
    assert.matches("ratchet%.conf:", st.config_error)
    local refused
    for _, err in ipairs(st.errors) do
      if err:find("rollout.lua: this version is not used", 1, true) then refused = err end
    end
    -- the override is checked against the running config, with that config's own lines
    assert.truthy(refused, engine.json.encode(st.errors))
    assert.matches("ratchet%.conf:5: prompt 'p': loop%.rollout_options [^\n]*unknown option 'steps'", refused)
  end)
end)

describe("loop settings are checked when the config loads", function()
  local PROVIDER = 'provider "openai" { kind = "openai", api_key = "sk-validation-spec-0000" }\n'

  it("unknown template, policy, provider and policy options, and wrongly typed settings", function()
    with_dir(function(dir)
      local code, out, err = check(dir, HEAD .. PROVIDER .. [[
prompt "p" {
  evaluators = { "json_valid" },
  loop = {
    template = "critque_rewrite",
    optimizer = { provider = "opnai", model = "gpt-4o" },
    accept = "strict",
    rollout_options = { stpes = { 5, 50 }, alpha = "0.05" },
    trigger_options = { min_failures = 2.5 },
    mining_options = { holdout = 2 },
    accept_options = { alpha = 0.01 },
  },
}
]])
      assert.equal(3, code, out)
      assert.matches("ratchet%.conf:6: prompt 'p': loop%.template: no template 'critque_rewrite' is loaded; did you mean 'critique_rewrite'%?", err)
      assert.matches("ratchet%.conf:7: prompt 'p': loop%.optimizer%.provider: no provider 'opnai'; did you mean 'openai'%?", err)
      assert.matches("ratchet%.conf:8: prompt 'p': loop%.accept: no policy 'strict'", err)
      assert.matches("ratchet%.conf:9: prompt 'p': loop%.rollout_options %([^)]*rollout%.lua%): unknown option 'stpes'; did you mean 'steps'%?", err)
      assert.matches("ratchet%.conf:9: prompt 'p': loop%.rollout_options %([^)]*%): option 'alpha' must be a number %(got a string%)", err)
      assert.matches("ratchet%.conf:10: prompt 'p': loop%.trigger_options %([^)]*%): option 'min_failures' must be an integer %(got 2%.5%)", err)
      assert.matches("ratchet%.conf:11: prompt 'p': loop%.mining_options %([^)]*%): option 'holdout' must be at most 1 %(got 2%)", err)
      assert.not_matches("accept_options", err) -- the accept policy was not found; its options are not judged
      assert.matches("ratchet check: 7 errors", err)
    end)
  end)

  it("a misspelt loop key gets a suggestion", function()
    with_dir(function(dir)
      local code, _, err = check(dir, HEAD .. 'prompt "p" {\n  loop = { templte = "plain" },\n}\n')
      assert.equal(3, code)
      assert.matches("ratchet%.conf:2: prompt 'p': loop: unknown key 'templte'; did you mean 'template'%?", err)
    end)
  end)

  it("policies and templates must meet their contract, with file:line", function()
    with_dir(function(dir)
      os.execute("mkdir -p " .. dir .. "/mine/policies " .. dir .. "/mine/scripts/metaprompts")
      -- overrides the shipped rollout policy: 'nxt' for 'next'
      engine.write_file(dir .. "/mine/policies/rollout.lua", [[
local M = { settings = { steps = { 10 } } }

function M.nxt(state, canary, production)
  return { action = "hold", reason = "typo" }
end

return M
]])
      engine.write_file(dir .. "/mine/policies/lenient.lua", "return { settings = {}, judge = function() end }\n")
      engine.write_file(dir .. "/mine/scripts/metaprompts/mine.lua", "return { build = function() end }\n")
      local code, out, err = check(dir, HEAD .. PROVIDER .. [[
prompt "p" {
  evaluators = { "json_valid" },
  loop = { template = "mine", accept = "lenient", optimizer = { provider = "openai", model = "m" } },
}
]])
      assert.equal(3, code, out)
      assert.matches("mine/policies/rollout%.lua:3: a rollout policy must export next%(state, canary, production%); 'nxt' "
        .. "%(defined here%) looks like a misspelling of 'next'", err)
      assert.matches("mine/scripts/metaprompts/mine%.lua: a meta%-prompt template must export parse%(text, ctx%)", err)
      assert.matches("ratchet%.conf:5: prompt 'p': loop%.accept: [^\n]*lenient%.lua: an accept policy must export decide%(report%)", err)
      -- the override failed to load, so no rollout policy is loaded (the shipped one is overridden by name)
      assert.matches("ratchet%.conf:5: prompt 'p': loop%.rollout: no policy 'rollout' is loaded", err)
    end)
  end)

  it("ratchet serve does not start, and a reload keeps the running config", function()
    local code, log = engine.start { expect_fail = true, config = string.format([[
scripts = { dirs = { %q } }
prompt "p" { evaluators = { "json_valid" }, loop = { rollout_options = { stpes = { 5 } } } }
]], root) }
    assert.equal(3, code)
    assert.matches("loop%.rollout_options [^\n]*unknown option 'stpes'; did you mean 'steps'%?", log)

    local dir = engine.tmpdir()
    local e = engine.start { dir = dir, config = string.format([[
scripts = { dirs = { %q } }
prompt "p" { evaluators = { "json_valid" }, loop = { rollout_options = { steps = { 5 } } } }
]], root) }
    local before = e:get("/v1/status").json.scripts.reloads
    engine.write_file(dir .. "/ratchet.conf", string.format([[
scripts = { dirs = { %q } }
prompt "p" { evaluators = { "json_valid" }, loop = { template = "nope", rollout_options = { steps = { 5 } } } }
]], root))
    e:signal("HUP")
    local st = engine.eventually(5, function()
      local s = e:get("/v1/status").json.scripts
      return s.reloads > before and s
    end)
    assert.truthy(st)
    assert.matches("loop%.template: no template 'nope'", st.config_error)
    assert.matches("error%s+config: [^\n]*no template 'nope'", e:log_text())
    assert.equal("plain", e:get("/v1/loop").json.prompts.p.settings.template)
    e:stop()
  end)

  it("a gate run's policy_options are checked against the accept policy (422 naming the field)", function()
    local e = engine.start { config = string.format([[
scripts = { dirs = { %q } }
provider "fake" { kind = "openai", base_url = "http://127.0.0.1:9/v1", default_model = "m" }
]], root) }
    assert.equal(201, e:post("/v1/prompts", { name = "p" }).status)
    for _, text in ipairs({ "One.", "Two." }) do
      assert.equal(201, e:post("/v1/prompts/p/versions", { messages = { { role = "system", content = text } },
                                                           model = { provider = "fake" } }).status)
    end
    assert.equal(200, e:post("/v1/datasets/d/cases", '{"id":"c1","variables":{},"expected":"x"}\n',
                             { content_type = "application/x-ndjson" }).status)
    local r = e:post("/v1/runs", { prompt = "p", baseline = 1, candidates = { 2 }, dataset = "d",
                                   policy_options = { alpah = 0.1 } })
    assert.equal(422, r.status, r.body)
    assert.equal("policy_options", r.json.error.field)
    assert.matches("unknown option 'alpah'; did you mean 'alpha'%?", r.json.error.message)
    e:stop()
  end)
end)
