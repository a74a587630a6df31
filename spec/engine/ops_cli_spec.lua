-- `ratchet status` and `ratchet history NAME` against a running engine:
-- what an operator sees on one screen, and a prompt's audit log.
local engine = require "spec.helpers.engine"

local ADMIN = "admin-token-ops-0123456789abcd"

local function cli(e, args)
  return engine.run(args .. " --url http://" .. e.addr, { RATCHET_ADMIN_TOKEN = ADMIN })
end

local function trace(version, output)
  return { prompt = { name = "tickets", version = version }, input = { variables = { q = "x" } }, output = output }
end

describe("ratchet status and history", function()
  local e, scripts
  local auth = { headers = { authorization = "Bearer " .. ADMIN } }
  setup(function()
    scripts = engine.tmpdir()
    os.execute("mkdir -p " .. engine.shell_quote(scripts .. "/evaluators"))
    e = engine.start { config = string.format([[
admin_token = %q
scripts = { dirs = { %q, %q } }
provider "down" { kind = "openai", base_url = "http://127.0.0.1:9/v1", api_key = "sk-ops-0000000000000000",
  default_model = "m", max_retries = 0, timeout_ms = 2000 }
prompt "tickets" {
  evaluators = { "json_valid" },
  loop = { optimizer = { provider = "down", model = "m" }, check_interval_ms = 100 },  -- 5 traces: the trigger never fires
}
]], ADMIN, scripts, engine.root) }
    local function ok(code, r) assert.equal(code, r.status, r.body) end
    ok(201, e:post("/v1/prompts", { name = "tickets" }, auth))
    local v = { messages = { { role = "user", content = "{{q}}" } } }
    ok(201, e:post("/v1/prompts/tickets/versions", v, auth))
    ok(201, e:post("/v1/prompts/tickets/versions", v, auth))
    ok(201, e:post("/v1/prompts", { name = "quiet" }, auth))
  end)
  teardown(function()
    e:stop()
    os.execute("rm -rf " .. engine.shell_quote(scripts))
  end)

  it("shows production and canary with their pass rates, and says what needs a look", function()
    local code, out, err = cli(e, "prompt promote tickets 1 --reason 'first release'")
    assert.equal(0, code, err)
    assert.equal(200, e:post("/v1/prompts/tickets/canary", { version = 2, share = 0.25 }, auth).status)
    -- the loop adopts the canary started by hand
    assert(engine.eventually(10, function() return e:get("/v1/loop/tickets", auth).json.state == "canary" end))
    local r = e:post("/v1/traces", { trace(1, "{}"), trace(1, "{}"), trace(1, "{}"), trace(1, "oops"), trace(2, "[]") }, auth)
    assert.equal(200, r.status, r.body)
    assert(engine.eventually(10, function() return e:get("/v1/status", auth).json.evaluation.evaluated == 5 end))

    code, out, err = cli(e, "status")
    assert.equal(0, code, err)
    assert.not_matches("needs a look", out)
    -- a script that fails to load on a reload: the engine goes on, status says so
    engine.write_file(scripts .. "/evaluators/broken.lua", "return {\n  name = 'broken',\n")
    e:signal("HUP")
    assert(engine.eventually(10, function() return #e:get("/v1/status", auth).json.scripts.errors == 1 end))
    code, out, err = cli(e, "status")
    -- exit 3, and the file is named
    assert.equal(3, code, err)
    assert.matches("ratchet %S+ at http://" .. e.addr:gsub("%p", "%%%0") .. ", up %d+s, store sqlite healthy", out)
    assert.matches("evaluation: backlog 0 of 100000, 5 evaluated, 0 dropped, 0 killed", out)
    assert.matches("LLM today: 0 calls, 0 tokens, %$0%.0000", out)
    assert.matches("\ntickets%s+v1%s+75%.0%% of 4%s+v2 25%%%s+100%.0%% of 1%s+canary", out)
    assert.matches("\nquiet%s+%-%s+%-%s+%-%s+%-", out)
    assert.matches("needs a look:\n  script error: [^\n]*broken%.lua", out)

    code, out = cli(e, "status --json")
    assert.equal(3, code)
    local v = engine.json.decode(out)
    local t
    for _, p in ipairs(v.prompts) do if p.name == "tickets" then t = p end end
    assert.equal(1, t.production.version)
    assert.equal(4, t.production.evaluated)
    assert.equal(0.75, t.production.pass_rate)
    assert.equal(2, t.canary.version)
    assert.equal(0.25, t.canary.share)
    assert.equal(1, t.canary.pass_rate)
    assert.equal("canary", t.loop.state)
    assert.equal(0, v.llm.today.calls)
    assert.equal(1, #v.problems)
  end)

  it("prints the audit log in order: moves with who and why, and the loop's decisions", function()
    local code, out, err = cli(e, "prompt rollback tickets --reason 'too slow'")
    assert.equal(0, code, err)
    -- the loop stands down from the canary a human ended
    assert(engine.eventually(10, function() return e:get("/v1/loop/tickets", auth).json.state == "idle" end))
    -- a cycle the loop cannot finish: the optimizer is unreachable, so it is aborted
    local r = e:post("/v1/prompts/tickets/optimize", {}, auth)
    assert.equal(202, r.status, r.body)
    assert(engine.eventually(10, function()
      local l = e:get("/v1/loop/tickets", auth).json
      return l.state == "idle" and l.events[#l.events].kind == "error"
    end), "the cycle did not end")

    code, out, err = cli(e, "history tickets")
    assert.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    local want = { "created", "v1 candidate", "v2 candidate", "v1 candidate %-> production%s+by %S+@%S+: first release",
                   "v2 candidate %-> canary", "loop canary%s+watching v2", "v2 canary %-> rolled_back%s+by %S+@%S+: too slow",
                   "loop manual", "loop trigger%s+started by hand", "loop error%s+the optimizer model failed" }
    local at = 1
    for _, l in ipairs(lines) do
      if want[at] and l:match("^%d%d%d%d%-%d%d%-%d%dT[%d:.]+Z  " .. want[at]) then at = at + 1 end
    end
    assert.equal(#want + 1, at, "missing or out of order: " .. tostring(want[at]) .. "\n" .. out)
    -- oldest first, by time
    for i = 2, #lines do assert.truthy(lines[i]:sub(1, 24) >= lines[i - 1]:sub(1, 24), out) end

    code, out = cli(e, "history tickets --limit 4 --json")
    assert.equal(0, code)
    local items = engine.json.decode(out)
    assert.equal(4, #items)
    assert.equal("registry", items[1].source)
    assert.equal("rolled_back", items[1].to)
    assert.equal("too slow", items[1].reason)
    assert.equal("loop", items[4].source)
    assert.equal("error", items[4].kind)
  end)

  it("answers bad input and an unreachable engine clearly", function()
    local code, _, err = cli(e, "history no-such-prompt")
    assert.equal(3, code)
    assert.matches("no prompt named 'no%-such%-prompt'", err)
    code, _, err = cli(e, "history 'bad name!'")
    assert.equal(3, code)
    assert.matches("not a prompt name", err)
    code, _, err = cli(e, "history tickets --limit 0")
    assert.equal(3, code)
    assert.matches("%-%-limit must be", err)
    code, _, err = cli(e, "history")
    assert.equal(3, code)
    assert.matches("which prompt%?", err)
    code, _, err = cli(e, "status extra")
    assert.equal(3, code)
    assert.matches("unexpected argument 'extra'", err)
    code, _, err = engine.run("status --url http://127.0.0.1:9")
    assert.equal(3, code)
    assert.matches("cannot reach the engine", err)
    code, _, err = engine.run("status --url http://" .. e.addr, { RATCHET_ADMIN_TOKEN = "wrong-token-000000000000" })
    assert.equal(3, code)
    assert.matches("not valid", err)
  end)
end)
