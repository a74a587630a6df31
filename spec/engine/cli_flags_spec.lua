-- Every command's flags are checked before anything runs: an unknown flag, a
-- flag without its value, a number out of range or not a number is a usage
-- error (exit 3) whose message names the flag. The commands come from
-- `ratchet --help`, so a new command is covered without editing this file.
local engine = require "spec.helpers.engine"

-- an engine that cannot be reached: a command that wrongly goes on to call it
-- fails with "cannot reach the engine" instead of naming the flag
local NOWHERE = "--url http://127.0.0.1:1"

-- text matches the Lua pattern, or the assertion shows both
local function has(pattern, text, what)
  assert(text:find(pattern), string.format("%s: expected /%s/ in:\n%s", what or "", pattern, text))
end

local function commands()
  local _, out = engine.run("--help")
  local list = {}
  for name in out:gmatch("\n  ([%l%-]+)  ") do
    if name ~= "help" then list[#list + 1] = name end
  end
  return list
end

describe("command-line flags", function()
  it("lists the commands to check", function()
    local list = commands()
    assert.is_true(#list >= 12, table.concat(list, " "))
    for _, want in ipairs { "serve", "check", "eval", "prompt", "status", "fake-llm", "version" } do
      assert.truthy(table.concat(list, " "):find(want, 1, true), want)
    end
  end)

  it("refuses an unknown flag in every command, naming it", function()
    for _, cmd in ipairs(commands()) do
      local code, out, err = engine.run(cmd .. " --no-such-flag")
      assert.equal(3, code, cmd .. ": " .. out .. err)
      has("ratchet " .. cmd:gsub("%-", "%%-") .. ": unknown option '%-%-no%-such%-flag'", err, cmd)
    end
  end)

  it("refuses a flag given a value it does not take", function()
    local code, _, err = engine.run("status --json=yes")
    assert.equal(3, code)
    assert.matches("ratchet status: option '%-%-json' takes no value", err)
  end)

  it("refuses a flag without its value, naming it", function()
    for _, c in ipairs {
      { "serve --config", "serve", "--config" },
      { "check -c", "check", "-c" },
      { "evaluate --prompt", "evaluate", "--prompt" },
      { "prompt list --url", "prompt", "--url" },
      { "eval -k", "eval", "-k" },
      { "eval --concurrency", "eval", "--concurrency" },
      { "optimize p --url", "optimize", "--url" },
      { "approve r --reason", "approve", "--reason" },
      { "loop --url", "loop", "--url" },
      { "status -c", "status", "-c" },
      { "history p --limit", "history", "--limit" },
      { "fake-llm --latency-ms", "fake-llm", "--latency-ms" },
    } do
      local code, out, err = engine.run(c[1])
      assert.equal(3, code, c[1] .. ": " .. out .. err)
      has("ratchet " .. c[2]:gsub("%-", "%%-") .. ": option '" .. c[3]:gsub("%-", "%%-") .. "' needs a value", err, c[1])
    end
  end)

  it("refuses numbers out of range or not numbers, naming the flag, before calling the engine", function()
    local eval = "eval --prompt p --baseline 1 --candidate 2 --dataset golden " .. NOWHERE .. " "
    for _, c in ipairs {
      { eval .. "-k 0", "%-k must be a whole number from 1 to 20, not '0'" },
      { eval .. "-k 21", "%-k must be a whole number from 1 to 20, not '21'" },
      { eval .. "-k three", "%-k must be a whole number from 1 to 20, not 'three'" },
      { eval .. "--concurrency 0", "%-%-concurrency must be a whole number from 1 to 512, not '0'" },
      { eval .. "--concurrency 8x", "%-%-concurrency must be a whole number from 1 to 512, not '8x'" },
      { eval .. "--budget-cost -1", "%-%-budget%-cost must be a number above 0, not '%-1'" },
      { eval .. "--budget-cost 0", "%-%-budget%-cost must be a number above 0, not '0'" },
      { eval .. "--budget-cost nan", "%-%-budget%-cost must be a number above 0, not 'nan'" },
      { eval .. "--budget-calls -5", "%-%-budget%-calls must be a whole number from 1 to" },
      { eval .. "--budget-calls 2.5", "%-%-budget%-calls must be a whole number from 1 to" },
      { "eval --prompt p --baseline x --candidate 2 --dataset golden " .. NOWHERE,
        "%-%-baseline must be a whole number from 1 to" },
      { "eval --prompt p --baseline 1 --candidate 0 --dataset golden " .. NOWHERE,
        "%-%-candidate must be a whole number from 1 to" },
      { "eval --prompt p --baseline 1 --candidate 2 --dataset golden@x " .. NOWHERE,
        "%-%-dataset's @VERSION must be a whole number" },
      { "eval --prompt p --baseline 1 --candidate 2 --failed-since yesterday " .. NOWHERE,
        "%-%-failed%-since 'yesterday' is not an RFC 3339 time" },
      { "eval --prompt 'a b' --baseline 1 --candidate 2 --dataset golden " .. NOWHERE,
        "%-%-prompt 'a b' is not a prompt name" },
      { "history p --limit 0 " .. NOWHERE, "%-%-limit must be a whole number from 1 to" },
      { "prompt show p latest " .. NOWHERE, "VERSION must be a whole number from 1 to .*'latest'" },
      { "prompt diff p 1 two " .. NOWHERE, "TO must be a whole number from 1 to .*'two'" },
      { "prompt promote p 0 " .. NOWHERE, "VERSION must be a whole number from 1 to .*'0'" },
      { "fake-llm --latency-ms -1", "%-%-latency%-ms must be 0 to 3600000, not '%-1'" },
    } do
      local code, out, err = engine.run(c[1])
      assert.equal(3, code, c[1] .. ": " .. out .. err)
      has(c[2], err, c[1])
      assert.is_nil(err:find("cannot reach", 1, true), c[1] .. ": " .. err)
    end
  end)

  it("gives fake-llm's own help through `ratchet help fake-llm`", function()
    local code, out = engine.run("help fake-llm")
    assert.equal(0, code)
    assert.matches("usage: ratchet fake%-llm", out)
  end)
end)
