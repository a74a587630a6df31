-- The systemd unit and `make install`: the documented tree, a unit that
-- `systemd-analyze verify` accepts and `systemd-analyze security` rates 2.0
-- or better (offline: no running systemd needed).
local engine = require "spec.helpers.engine"
local q = engine.shell_quote

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return rc, out
end

describe("make install", function()
  local dest
  setup(function() dest = engine.tmpdir() end)
  teardown(function() os.execute("rm -rf " .. q(dest)) end)

  it("installs the documented tree under DESTDIR and PREFIX", function()
    local rc, out = run(string.format("make -s install DESTDIR=%s PREFIX=/usr", q(dest)))
    assert.equal(0, rc, out)
    for _, f in ipairs {
      "/usr/bin/ratchet", "/usr/lib/systemd/system/ratchet.service", "/etc/ratchet/ratchet.conf",
      "/usr/share/ratchet/ratchet.conf.example", "/usr/share/ratchet/trace.schema.json",
      "/usr/share/doc/ratchet/README.md", "/usr/share/doc/ratchet/api.md",
      "/usr/share/ratchet/evaluators/json_schema.lua", "/usr/share/ratchet/evaluators/lib/jsonschema.lua",
      "/usr/share/ratchet/policies/accept.lua", "/usr/share/ratchet/policies/rollout.lua",
      "/usr/share/ratchet/policies/lib/sequential.lua", "/usr/share/ratchet/scripts/metaprompts/plain.lua",
      "/usr/share/ratchet/scripts/lib/metaprompt.lua",
    } do
      assert.is_not_nil(engine.read_file(dest .. f), f .. " is missing")
    end
    local unit = engine.read_file(dest .. "/usr/lib/systemd/system/ratchet.service")
    assert.matches("ExecStart=/usr/bin/ratchet serve %-c /etc/ratchet/ratchet.conf", unit)
    -- the installed config and scripts load
    local code, _, err = engine.run(string.format("check -c %s -s %s", q(dest .. "/etc/ratchet/ratchet.conf"),
      q(dest .. "/usr/share/ratchet")))
    assert.equal(0, code, err)
  end)

  it("never overwrites an existing /etc/ratchet/ratchet.conf", function()
    engine.write_file(dest .. "/etc/ratchet/ratchet.conf", "-- mine\n")
    local rc, out = run(string.format("make -s install DESTDIR=%s PREFIX=/usr", q(dest)))
    assert.equal(0, rc, out)
    assert.equal("-- mine\n", engine.read_file(dest .. "/etc/ratchet/ratchet.conf"))
  end)
end)

describe("ratchet.service", function()
  local unit
  setup(function()
    unit = engine.tmpdir() .. "/ratchet.service"
    local bin = engine.bin:match("^/") and engine.bin or (os.getenv("PWD") .. "/" .. engine.bin)
    local text = engine.read_file("etc/ratchet.service.in")
      :gsub("@BINDIR@/ratchet", bin):gsub("@DOCDIR@", "/usr/share/doc/ratchet")
    engine.write_file(unit, text)
  end)

  local function analyze_available()
    return os.execute("command -v systemd-analyze >/dev/null 2>&1")
  end

  it("passes systemd-analyze verify", function()
    if not analyze_available() then return pending("systemd-analyze is not installed") end
    local rc, out = run("systemd-analyze verify " .. q(unit))
    assert.equal(0, rc, out)
  end)

  it("is rated 2.0 or better by systemd-analyze security", function()
    if not analyze_available() then return pending("systemd-analyze is not installed") end
    local _, out = run("systemd-analyze security --offline=true " .. q(unit))
    local score = tonumber(out:match("Overall exposure level for ratchet%.service: ([%d%.]+)"))
    assert.is_not_nil(score, out)
    assert.is_true(score <= 2.0, "exposure " .. tostring(score))
  end)

  it("is Type=notify with a watchdog, reload, state and hardening", function()
    local text = engine.read_file(unit)
    for _, line in ipairs { "Type=notify", "WatchdogSec=", "ExecReload=/bin/kill %-HUP %$MAINPID", "StateDirectory=ratchet",
      "ConfigurationDirectory=ratchet", "DynamicUser=yes", "ProtectSystem=strict", "PrivateTmp=yes",
      "NoNewPrivileges=yes", "RestrictAddressFamilies=", "SystemCallFilter=@system%-service",
      "MemoryDenyWriteExecute=yes" } do
      assert.matches(line, text)
    end
  end)
end)
