-- `ratchet dataset` against a running engine: everything /v1/datasets offers
-- from the shell (list, show, import and export JSON Lines, add and remove
-- cases, cases from one trace or from every trace a filter matches, versions
-- and their diff), with the engine's validation and exit 3 on every refusal;
-- and POST /v1/datasets/{name}/from-traces, GET .../versions and .../diff.
local engine = require "spec.helpers.engine"
local json = engine.json
local q = engine.shell_quote

local CONFIG = [[
prompt "tickets" {
  evaluators = {
    "json_valid",
    { "contains", name = "says_sorry", options = { value = "sorry" }, required = false },
  },
}
]]

-- t1..t6: odd ones fail json_valid (so the trace fails) and pass says_sorry;
-- t5 repeats t1's variables; t6 is older than the rest and has no variables
local function traces()
  local out = {}
  for i = 1, 5 do
    out[#out + 1] = {
      id = "t" .. i, prompt = { name = "tickets", version = 1 },
      input = { variables = { ticket = "ticket " .. (i == 5 and 1 or i) } },
      output = i % 2 == 1 and "not json, sorry" or '{"category":"billing"}',
      timestamp = 1764000000000 + i * 1000,
      metadata = { tier = i <= 2 and "pro" or "free", tags = i == 3 and { "vip", "eu" } or { "eu" } },
    }
  end
  out[#out + 1] = { id = "t6", prompt = { name = "tickets" }, output = "x", timestamp = 1763000000000 }
  return out
end

describe("ratchet dataset", function()
  local e, url

  local function run(args, stdin)
    local cmd = "dataset " .. args .. " --url " .. url
    if stdin then
      local f = os.tmpname()
      engine.write_file(f, stdin)
      cmd = cmd .. " < " .. q(f)
      local code, out, err = engine.run(cmd)
      os.remove(f)
      return code, out, err
    end
    return engine.run(cmd)
  end

  setup(function()
    e = engine.start { config = CONFIG }
    url = "http://" .. e.addr
    local r = e:post("/v1/traces", traces())
    assert.equal(6, r.json.accepted, r.body)
    assert(engine.eventually(10, function()
      local l = e:get("/v1/traces?prompt=tickets&failed=true").json
      return l and #l.items == 4 -- t1, t3, t5 and t6
    end), "the traces were not evaluated")
  end)
  teardown(function() e:stop() end)

  it("imports JSON Lines from a file or stdin, lists, shows and exports them", function()
    local file = os.tmpname()
    engine.write_file(file, '{"id":"a","variables":{"ticket":"x"},"tags":["golden"]}\n' ..
      '{"id":"b","variables":{"ticket":"y"},"expected":"refund"}\n')
    local code, out, err = run("import golden " .. q(file))
    assert.equal(0, code, err)
    assert.matches("golden v1: 2 cases", out)
    code, out, err = run("import golden -", '{"id":"c","variables":{"ticket":"z"}}\n')
    assert.equal(0, code, err)
    assert.matches("golden v2: 3 cases", out)
    code, out = run("list")
    assert.equal(0, code)
    assert.matches("golden%s+v2%s+3", out)
    code, out = run("show golden --version 1")
    assert.equal(0, code)
    assert.matches("golden v1 of v2: 2 cases", out)
    assert.matches("a%s+golden%s+{\"ticket\":\"x\"}", out)
    code, out = run("show golden --json")
    assert.equal(0, code)
    local shown = json.decode(out)
    assert.equal(3, #shown.cases)
    assert.equal("refund", shown.cases[2].expected)
    -- export: exactly what the API exports, to stdout or a file
    code, out = run("export golden --version 1")
    assert.equal(0, code)
    assert.equal(e:get("/v1/datasets/golden/cases?version=1").body, out)
    code, _, err = run("export golden -o " .. q(file))
    assert.equal(0, code, err)
    assert.equal(e:get("/v1/datasets/golden/cases").body, engine.read_file(file))
    os.remove(file)
  end)

  it("refuses a bad import naming the line and field, and a duplicate id in append mode", function()
    local code, _, err = run("import bad -", '{"id":"a","variables":{}}\n{"id":"b","variables":"nope"}\n')
    assert.equal(3, code)
    assert.matches("line 2: 'variables' must be an object", err)
    assert.matches("%(field: line 2: variables%)", err)
    assert.equal(404, e:get("/v1/datasets/bad").status)  -- nothing made
    code, _, err = run("add golden '{\"id\":\"a\",\"variables\":{\"ticket\":\"again\"}}'")
    assert.equal(3, code)
    assert.matches("already has a case 'a' %(use mode=upsert", err)
    code, _, err = run("add golden '[1]'")
    assert.equal(3, code)
    assert.matches("case 1 is not a JSON object", err)
  end)

  it("adds (upsert) and removes cases, each change a version, with versions and a diff", function()
    local code, out, err = run("add golden '{\"id\":\"a\",\"variables\":{\"ticket\":\"x2\"}}' " ..
      "'{\"id\":\"d\",\"variables\":{\"ticket\":\"w\"}}' --mode upsert")
    assert.equal(0, code, err)
    assert.matches("golden v3: 4 cases", out)
    code, out, err = run("remove golden b")
    assert.equal(0, code, err)
    assert.matches("golden v4: 3 cases", out)
    code, _, err = run("remove golden nope")
    assert.equal(3, code)
    assert.matches("has no case 'nope'", err)
    code, out = run("versions golden --json")
    assert.equal(0, code)
    assert.same({
      { version = 1, cases = 2, added = 2, removed = 0, changed = 0 },
      { version = 2, cases = 3, added = 1, removed = 0, changed = 0 },
      { version = 3, cases = 4, added = 1, removed = 0, changed = 1 },
      { version = 4, cases = 3, added = 0, removed = 1, changed = 0 },
    }, json.decode(out).items)
    code, out = run("versions golden")
    assert.equal(0, code)
    assert.matches("v3%s+4%s+1%s+0%s+1", out)
    code, out = run("diff golden 1 4")
    assert.equal(0, code)
    assert.matches("golden v1 %-> v4: 2 added, 1 removed, 1 changed", out)
    assert.matches("%+ c ", out)
    assert.matches("%- b ", out)
    assert.matches("~ a ", out)
    local d = json.decode((select(2, run("diff golden 1 4 --json"))))
    assert.equal("x", d.changed[1].from.variables.ticket)
    assert.equal("x2", d.changed[1].to.variables.ticket)
    code, _, err = run("diff golden 1 9")
    assert.equal(3, code)
    assert.matches("has versions 1 to 4 %(field: to%)", err)
  end)

  it("makes a case from one trace", function()
    local code, out, err = run("from-trace golden t2 --id from-t2 --tag edge --expected '\"billing\"'")
    assert.equal(0, code, err)
    assert.matches("golden v5", out)
    local c = json.decode((select(2, run("show golden --json")))).cases
    local found
    for _, x in ipairs(c) do if x.id == "from-t2" then found = x end end
    assert.same({ id = "from-t2", variables = { ticket = "ticket 2" }, expected = "billing", tags = { "edge" },
                  source_trace = "t2" }, found)
    code, _, err = run("from-trace golden t6")
    assert.equal(3, code)
    assert.matches("has no input.variables", err)
  end)

  it("makes cases from every trace a filter matches: failed, evaluator, metadata, tag, time", function()
    local function ids(name)
      local out = {}
      for _, c in ipairs(json.decode((select(2, run("show " .. name .. " --json")))).cases) do out[#out + 1] = c.id end
      return table.concat(out, ",")
    end
    -- all with variables, one per distinct variables (t5 is newer than t1: t5 kept), expected = output
    local code, out, err = run("from-traces all --prompt tickets")
    assert.equal(0, code, err)
    assert.matches("all v1: 4 cases .*5 traces matched, 1 skipped for the same variables", out)
    assert.equal("t2,t3,t4,t5", ids("all"))
    assert.equal('{"category":"billing"}', json.decode((select(2, run("show all --json")))).cases[1].expected)
    -- failed traces (json_valid failed): no expected unless asked
    code, _, err = run("from-traces fails --prompt tickets --failed --tag regression")
    assert.equal(0, code, err)
    assert.equal("t3,t5", ids("fails"))
    local f = json.decode((select(2, run("show fails --json")))).cases[1]
    assert.is_nil(f.expected)
    assert.same({ "regression" }, f.tags)
    code = run("from-traces passing --prompt tickets --passed --expected-from none")
    assert.equal(0, code)
    assert.equal("t2,t4", ids("passing"))
    -- the traces one evaluator failed (an advisory one here)
    code = run("from-traces sorry --prompt tickets --evaluator says_sorry")
    assert.equal(0, code)
    assert.equal("t2,t4", ids("sorry"))
    -- metadata: equal, or a list holding the value; --trace-tag is --meta tags=
    code = run("from-traces pro --prompt tickets --meta tier=pro")
    assert.equal(0, code)
    assert.equal("t1,t2", ids("pro"))  -- t1 shares its variables with t5 only, which is free
    code = run("from-traces vip --prompt tickets --trace-tag vip")
    assert.equal(0, code)
    assert.equal("t3", ids("vip"))
    -- a time range: [since, until)
    code = run("from-traces window --prompt tickets --since 1764000002000 --until 2025-11-24T16:00:04Z")
    assert.equal(0, code)
    assert.equal("t2,t3", ids("window"))
    -- a limit keeps the newest
    code = run("from-traces newest --prompt tickets --limit 2")
    assert.equal(0, code)
    assert.equal("t4,t5", ids("newest"))
    -- nothing matches: refused, no dataset made
    code, _, err = run("from-traces none --prompt tickets --meta tier=gold")
    assert.equal(3, code)
    assert.matches("no trace of prompt 'tickets' matches the filter", err)
    assert.equal(404, e:get("/v1/datasets/none").status)
  end)

  it("checks its own flags before calling the engine, naming them", function()
    for _, c in ipairs {
      { "from-traces x", "%-%-prompt is required" },
      { "from-traces x --prompt p --since yesterday", "%-%-since 'yesterday' is not an RFC 3339 time" },
      { "from-traces x --prompt p --limit 0", "%-%-limit must be a whole number from 1 to 10000" },
      { "from-traces x --prompt p --meta tier", "%-%-meta must be KEY=VALUE" },
      { "from-traces x --prompt p --failed --passed", "%-%-failed and %-%-passed exclude each other" },
      { "from-traces x --prompt p --expected-from maybe", "%-%-expected%-from must be output or none" },
      { "import x f --mode merge", "%-%-mode must be append, upsert or replace, not 'merge'" },
      { "show x --version 0", "%-%-version must be a whole number from 1" },
      { "show x --mode upsert", "%-%-mode belongs to import, add and from%-traces" },
      { "list --prompt p", "belong to from%-traces" },
      { "diff x 1 two", "TO must be a whole number" },
      { "show 'a b'", "'a b' is not a dataset name" },
      { "frobnicate x", "no subcommand 'frobnicate'" },
      { "versions", "wrong number of arguments for 'versions'" },
    } do
      local code, out, err = engine.run("dataset " .. c[1] .. " --url http://127.0.0.1:1")
      assert.equal(3, code, c[1] .. ": " .. out .. err)
      assert(err:find(c[2]), c[1] .. ": expected /" .. c[2] .. "/ in " .. err)
      assert.is_nil(err:find("cannot reach", 1, true), c[1])
    end
    local code, out = engine.run("dataset --help")
    assert.equal(0, code)
    assert.matches("usage: ratchet dataset", out)
  end)

  it("answers the API's own refusals with the field at fault", function()
    for _, c in ipairs {
      { {}, "prompt" },
      { { prompt = "tickets", limit = 0 }, "limit" },
      { { prompt = "tickets", failed = "yes" }, "failed" },
      { { prompt = "tickets", since = "soon" }, "since" },
      { { prompt = "tickets", since = 2000, ["until"] = 1000 }, "until" },
      { { prompt = "tickets", metadata = { ["a b"] = "x" } }, "metadata.a b" },
      { { prompt = "tickets", metadata = { tier = 3 } }, "metadata.tier" },
      { { prompt = "tickets", mode = "merge" }, "mode" },
      { { prompt = "tickets", expected_from = "input" }, "expected_from" },
      { { prompt = "tickets", colour = "blue" }, "colour" },
    } do
      local r = e:post("/v1/datasets/api/from-traces", c[1])
      assert.equal(400, r.status, r.body)
      assert.equal(c[2], r.json.error.field, r.body)
    end
    assert.equal(404, e:get("/v1/datasets/nope/versions").status)
    local r = e:get("/v1/datasets/golden/diff?from=1")
    assert.equal(400, r.status)
    assert.equal("to", r.json.error.field)
  end)
end)
