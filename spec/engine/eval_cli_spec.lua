-- `ratchet eval` (standalone, from files, as CI runs it) and `ratchet prompt`
-- against the real engine and the real fake LLM server.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"

local MODEL = engine.read_file("spec/fixtures/instructed_model.lua")

local function version_file(dir, name, system)
  engine.write_file(dir .. "/" .. name, engine.json.encode {
    messages = { { role = "system", content = system }, { role = "user", content = "{{text}}" } },
    model = { provider = "fake" } })
  return dir .. "/" .. name
end

describe("ratchet eval --standalone", function()
  local fake, dir
  setup(function()
    fake = fake_llm.start { model = MODEL }
    dir = engine.tmpdir()
    engine.write_file(dir .. "/ratchet.conf", string.format([[
scripts = { dirs = { %q } }
provider "fake" { kind = "openai", base_url = %q, default_model = "m-1", max_retries = 1, backoff_base_ms = 5 }
prompt "upper" { evaluators = { { "equals" } } }
]], engine.root, "http://" .. fake.addr .. "/v1"))
    engine.write_file(dir .. "/cases.jsonl", table.concat({
      '{"id":"lower-1","variables":{"text":"hello"},"expected":"HELLO","tags":["golden"]}',
      '{"id":"zebra","variables":{"text":"ZEBRA"},"expected":"ZEBRA","tags":["critical"]}',
      '{"id":"done","variables":{"text":"DONE"},"expected":"DONE"}' }, "\n") .. "\n")
    version_file(dir, "v1.json", "Repeat the text.")
    version_file(dir, "v2.json", "Repeat the text. Answer in uppercase.")
    version_file(dir, "v3.json", "Answer in uppercase. Replace ZEBRA with HORSE.")
  end)
  teardown(function()
    fake:stop()
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)

  local function eval(extra)
    return engine.run(string.format("eval --standalone -c %s/ratchet.conf --dataset-file %s/cases.jsonl " ..
      "--baseline-file %s/v1.json %s", dir, dir, dir, extra))
  end

  it("exits 0 on no regression (2 with --require-improvement), printing rates, changed cases, verdicts and the diff", function()
    local code, out, err = eval(string.format("--candidate-file %s/v2.json --junit %s/j.xml --html %s/r.html", dir, dir, dir))
    assert.equal(0, code, err)
    assert.matches("v1%s+baseline%s+66%.7%%", out)
    assert.matches("v2%s+candidate%s+100%.0%%", out)
    assert.matches("lower%-1 %[dataset%]", out)
    assert.matches("expected HELLO, got hello", out)
    assert.matches("%+Repeat the text%. Answer in uppercase%.", out)
    assert.matches("finished: no_regression", out)
    assert.matches("too few cases to fix %(1 the baseline fails%)", out)
    -- JUnit: the candidate's cases and the verdict; the baseline fails lower-1, which is no test failure
    local junit = engine.read_file(dir .. "/j.xml")
    assert.is_nil(junit:find("<failure", 1, true), junit)
    assert.is_nil(junit:find("upper.v1", 1, true), junit)
    assert.matches('<testsuite name="upper v2 %(candidate, baseline v1%)" tests="3" failures="0" errors="0" skipped="0">', junit)
    assert.matches('<testcase classname="upper.v2" name="lower%-1"></testcase>', junit)
    assert.matches('<testcase classname="upper.v2" name="zebra"></testcase>', junit)
    assert.matches('<testsuite name="upper gate" tests="1" failures="0" errors="0">\n' ..
      '    <testcase classname="upper" name="verdict"><system%-out>[%w_]+</system%-out></testcase>', junit)
    -- the console's compare page, self-contained: its script and style inlined
    -- (no file linked), the run's JSON embedded (spec/engine/console_spec.lua
    -- opens such a report in Chromium)
    local html = engine.read_file(dir .. "/r.html")
    assert.is_nil(html:find("src=", 1, true))
    assert.is_nil(html:find('href="style.css"', 1, true))
    assert.matches("<style>\n/%* console/style%.css", html)
    assert.matches("<script type=\"module\">\n// console/app%.js", html)
    local embedded = html:match("<script type=\"application/json\" id=\"ratchet%-run\">(.-)</script>")
    assert.is_nil(embedded:find("<", 1, true)) -- nothing in the data can close its script element
    local data = engine.json.decode(embedded)
    assert.equal("no_regression", data.run.verdict)
    assert.equal(6, #data.results) -- 3 cases x 2 versions x k = 1
    assert.equal(3, #data.cases)
    assert.equal("+Repeat the text. Answer in uppercase.", data.diffs[1].messages[1].diff[2])
    code = eval(string.format("--candidate-file %s/v2.json --require-improvement -q", dir))
    assert.equal(2, code)
  end)

  it("exits 1 on a regressed candidate and names the broken critical case; --json is machine-readable", function()
    local code, out = eval(string.format("--candidate-file %s/v3.json --json --junit %s/j3.xml", dir, dir))
    assert.equal(1, code, out)
    local run = engine.json.decode(out)
    assert.equal("regressed", run.verdict)
    assert.matches("critical case%(s%), whose pass rate may never drop: zebra", run.report.verdicts[1].reasons[1])
    assert.equal(1, #run.diffs)
    -- JUnit: only the case the candidate breaks fails (lower-1, which only the baseline fails, passes), and the verdict
    local junit = engine.read_file(dir .. "/j3.xml")
    assert.matches('<testsuite name="upper v2 %(candidate, baseline v1%)" tests="3" failures="1" errors="0"', junit)
    assert.matches('<testcase classname="upper.v2" name="lower%-1"></testcase>', junit)
    assert.matches('<testcase classname="upper.v2" name="zebra"><failure message="expected ZEBRA, got HORSE ' ..
      '%(v2: 0/1 pass; baseline v1: 1/1 pass%)">HORSE</failure></testcase>', junit)
    assert.matches('<testsuite name="upper gate" tests="1" failures="1"', junit)
    assert.matches('<testcase classname="upper" name="verdict"><failure message="[%w_]+ %(run finished, exit status 1%)">' ..
      'v2: [%w_]+\n  %- [^\n]*zebra', junit)
  end)

  it("exits 2 when the run is incomplete (budget) and 3 when the input is bad, naming the line", function()
    local code, out = eval(string.format("--candidate-file %s/v2.json --budget-calls 2 --concurrency 1 --junit %s/j2.xml",
      dir, dir))
    assert.equal(2, code, out)
    assert.matches("incomplete: inconclusive", out)
    -- cases the run never reached are skipped, not failed; the verdict fails (exit 2)
    local junit = engine.read_file(dir .. "/j2.xml")
    assert.matches('<skipped message="no result: the run ended before this case"/>', junit)
    assert.matches('<testsuite name="upper gate" tests="1" failures="1"', junit)
    assert.matches('exit status 2%)', junit)
    engine.write_file(dir .. "/bad.jsonl", '{"id":"a","variables":{"text":"x"}}\n{"id":"b","variables":\n')
    local err
    code, out, err = engine.run(string.format("eval --standalone -c %s/ratchet.conf --dataset-file %s/bad.jsonl " ..
      "--baseline-file %s/v1.json --candidate-file %s/v2.json", dir, dir, dir, dir))
    assert.equal(3, code)
    assert.matches("line 2", err)
    code, out, err = engine.run("eval --prompt x")
    assert.equal(3, code)
    assert.matches("give %-%-prompt, %-%-baseline", err)
  end)
end)

describe("ratchet prompt", function()
  it("adds, lists, promotes, diffs and shows the history against a running engine", function()
    local e = engine.start { config = 'provider "fake" { kind = "openai", base_url = "http://127.0.0.1:9/v1" }' }
    local dir = engine.tmpdir()
    local url = "--url http://" .. e.addr
    local f1 = version_file(dir, "a.json", "One.")
    local f2 = version_file(dir, "b.json", "One.\nTwo.")
    local code, out, err = engine.run("prompt add triage " .. f1 .. " --note first " .. url)
    assert.equal(0, code, err)
    assert.matches("triage v1 added", out)
    assert.equal(0, (engine.run("prompt add triage " .. f2 .. " " .. url)))
    code, out = engine.run("prompt promote triage 2 --reason launch " .. url)
    assert.equal(0, code)
    assert.matches("production v2", out)
    code, out = engine.run("prompt list " .. url)
    assert.matches("triage%s+v2%s+%-%s+2", out)
    code, out = engine.run("prompt diff triage 1 2 " .. url)
    assert.matches("%+Two%.", out)
    code, out = engine.run("prompt history triage " .. url)
    assert.matches("v2 candidate %-> production  by [^:]+: launch", out)
    code, out, err = engine.run("prompt promote triage 9 " .. url)
    assert.equal(3, code)
    assert.matches("no version 9", err)
    code, out, err = engine.run("prompt frobnicate " .. url)
    assert.equal(3, code)
    e:stop()
    os.execute("rm -rf " .. engine.shell_quote(dir))
  end)
end)
