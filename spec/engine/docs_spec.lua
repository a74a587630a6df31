-- The documentation's examples stay true: every ```sh block of README.md and
-- docs/*.md runs, offline, against a real engine (its curl lines pointed at
-- it, HTTP errors failing the block), unless the line before the block says
-- why it cannot: `<!-- not run by spec/engine/docs_spec.lua: REASON -->`.
-- Also: README's command synopsis against each command's --help, and every
-- `make TARGET` the docs name against `make help`.
local engine = require "spec.helpers.engine"
local fake_llm = require "spec.helpers.fake_llm"
local q = engine.shell_quote

local MARKER = "^<!%-%- not run by spec/engine/docs_spec%.lua: (.-)%s*%-%->$"

local function doc_files()
  local files = { "README.md" }
  for f in io.popen("ls docs/*.md"):lines() do files[#files + 1] = f end
  return files
end

-- { file, line, text, skip = reason|nil } for every ```sh block
local function sh_blocks()
  local out = {}
  for _, f in ipairs(doc_files()) do
    local n, prev, cur = 0, "", nil
    for line in io.lines(f) do
      n = n + 1
      if cur then
        if line:match("^```") then
          out[#out + 1] = cur
          cur = nil
        else
          cur.text = cur.text .. line .. "\n"
        end
      elseif line:match("^```sh%s*$") then
        cur = { file = f, line = n, text = "", skip = prev:match(MARKER) }
      end
      if line:match("%S") then prev = line end
    end
  end
  return out
end

-- runs a shell script; returns exit code and output
local function bash(script, dir)
  local path = os.tmpname()
  engine.write_file(path, script)
  local p = io.popen(string.format("cd %s && timeout %d bash %s 2>&1; echo \"rc=$?\"", q(dir), 60 * engine.slow, q(path)))
  local out = p:read("a")
  p:close()
  os.remove(path)
  return tonumber(out:match("rc=(%d+)%s*$")), out:gsub("rc=%d+%s*$", "")
end

describe("the documentation's shell examples", function()
  local blocks = sh_blocks()
  local e, fake, bin_dir, work
  local METRICS_TOKEN = "docs-spec-metrics-token-0123456789"

  setup(function()
    -- `provider "openai"` is the fake LLM server, so the /v1/llm/chat example runs offline
    fake = fake_llm.start {}
    e = engine.start { config = string.format([[
metrics_token = %q
provider "openai" { kind = "openai", base_url = %q, default_model = "gpt-4o-mini", max_retries = 0 }
gateway = { providers = { "openai" } }
]], METRICS_TOKEN, fake:url("/v1")) }
    -- `ratchet` and `busted` as a user has them on PATH
    bin_dir = engine.tmpdir()
    local bin = engine.bin:match("^/") and engine.bin or (engine.root .. "/" .. engine.bin)
    os.execute("ln -s " .. q(bin) .. " " .. q(bin_dir .. "/ratchet"))
    engine.write_file(bin_dir .. "/busted", "#!/bin/sh\nexec lua5.4 /usr/bin/busted \"$@\"\n")
    os.execute("chmod +x " .. q(bin_dir .. "/busted"))
    work = engine.tmpdir()
  end)
  teardown(function()
    e:stop()
    fake:stop()
    os.execute("rm -rf " .. q(bin_dir) .. " " .. q(work))
  end)

  it("finds the blocks, and every one it does not run says why", function()
    assert.is_true(#blocks >= 10, #blocks .. " blocks")
    for _, b in ipairs(blocks) do
      if b.skip then assert.is_true(#b.skip >= 10, b.file .. ":" .. b.line .. ": give the reason in full") end
    end
  end)

  for _, b in ipairs(blocks) do
    if b.skip then
      it(b.file .. ":" .. b.line .. " (not run: " .. b.skip .. ")", function() end)
    else
      it(b.file .. ":" .. b.line .. " runs", function()
        local text = b.text:gsub("localhost:7700", e.addr):gsub("127%.0%.0%.1:7700", e.addr)
        -- the user's environment: this engine, ratchet and busted on PATH; curl fails on an HTTP error
        local prelude = table.concat({
          "set -eo pipefail",
          "export PATH=" .. q(bin_dir) .. ":$PATH",
          "export RATCHET_METRICS_TOKEN=" .. q(METRICS_TOKEN),
          "curl() { command curl --fail-with-body --max-time 20 \"$@\"; }",
        }, "\n") .. "\n"
        -- a block about the source tree (make, build/) runs there; the others in a scratch folder
        local dir = (text:match("^make") or text:match("\nmake") or text:match("build/")) and engine.root or work
        local code, out = bash(prelude .. text, dir)
        assert.equal(0, code, b.file .. ":" .. b.line .. " failed:\n" .. text .. "\n--- output:\n" .. out)
      end)
    end
  end
end)

describe("the documented commands", function()
  it("README's command synopsis matches each command's --help, and names every command", function()
    local readme = engine.read_file("README.md")
    local synopsis = readme:match("## Command line\n\n```\n(.-)\n```")
    assert.is_not_nil(synopsis, "README.md has no command synopsis")
    local listed = {}
    for line in synopsis:gmatch("[^\n]+") do
      local cmd = line:match("^ratchet ([%l%-]+)")
      assert.is_not_nil(cmd, "not a command line: " .. line)
      listed[cmd] = true
      local code, help = engine.run(cmd .. " --help")
      assert.equal(0, code, cmd .. " --help")
      local usage = line:gsub("%s+#.*$", "")
      for flag in usage:gmatch("%-%-[%w%-]+") do
        assert.truthy(help:find(flag, 1, true), "ratchet " .. cmd .. " --help does not know " .. flag)
      end
      for word in usage:gmatch("[%w%-]+|[%w%-|]+") do
        for sub in word:gmatch("[^|]+") do
          assert.truthy(help:find(sub, 1, true), "ratchet " .. cmd .. " --help does not know " .. sub)
        end
      end
    end
    local _, main = engine.run("--help")
    for cmd in main:gmatch("\n  ([%l%-]+)  ") do
      assert.truthy(listed[cmd], "README's synopsis lacks ratchet " .. cmd)
    end
  end)

  it("etc/ratchet.conf shows every setting of docs/configuration.md's table, and loads", function()
    local example = engine.read_file("etc/ratchet.conf")
    local doc = engine.read_file("docs/configuration.md")
    local n = 0
    for row in doc:gmatch("\n| `([%w_.]+)`[^\n]*") do
      for key in row:gmatch("[%w_]+$") do
        n = n + 1
        assert.truthy(example:find("%f[%w_]" .. key .. "%f[^%w_]"), "etc/ratchet.conf does not show " .. row)
      end
    end
    assert.is_true(n >= 30, n .. " settings")
    local code, out, err = engine.run("check -c etc/ratchet.conf")
    assert.equal(0, code, out .. err)
  end)

  it("every `make TARGET` the docs name is a target `make help` lists", function()
    local p = io.popen("make -s help 2>&1")
    local help = p:read("a")
    p:close()
    local seen = 0
    for _, f in ipairs(doc_files()) do
      local text = engine.read_file(f)
      for target in text:gmatch("`make ([%l][%l%-]+)") do
        seen = seen + 1
        assert.truthy(help:find("make " .. target, 1, true), f .. " names `make " .. target .. "`, which make help does not list")
      end
      for block in text:gmatch("```sh\n(.-)```") do
        for target in block:gmatch("%f[%w]make ([%l][%l%-]+)") do
          seen = seen + 1
          assert.truthy(help:find("make " .. target, 1, true), f .. " runs `make " .. target .. "`, which make help does not list")
        end
      end
    end
    assert.is_true(seen >= 5)
  end)
end)
