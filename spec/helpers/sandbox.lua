-- spec/helpers/sandbox.lua — loads evaluators exactly as the engine does
-- (same sandbox, same API, values crossing as JSON) with no engine running.
--
--   local sandbox = require "spec.helpers.sandbox"
--   local ev = assert(sandbox.load_evaluator("evaluators/contains.lua"))
--   local r = ev:evaluate({ output = "hello" }, { value = "hell" })
--   assert.is_true(r.pass)
local dir = os.getenv("RATCHET_LUA_CPATH") or "build/lua"
package.cpath = dir .. "/?.so;" .. package.cpath
local sandbox = require "ratchet_sandbox"

local M = {}

-- load_evaluator(path [, opts]) -> evaluator | nil, err; opts.dirs: require folders
M.load_evaluator = sandbox.load_evaluator

-- A loaded evaluator or a failed assertion with the load error.
function M.evaluator(name)
  local ev, err = sandbox.load_evaluator("evaluators/" .. name .. ".lua")
  assert(ev, err)
  return ev
end

-- load_policy(path [, opts]) -> policy | nil, err; policy:call(fn, arg) runs
-- fn(arg) in the sandbox (arg and the result cross as JSON, as in the engine)
M.load_policy = sandbox.load_policy

function M.policy(name)
  local p, err = sandbox.load_policy("policies/" .. name .. ".lua")
  assert(p, err)
  return p
end

return M
