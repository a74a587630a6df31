-- ratchet.testing — test your evaluators and policies with busted in the
-- engine's own runtime (same sandbox, same `ratchet` API, values crossing as
-- JSON), with no engine running. It drives ratchet_sandbox.so, the runtime
-- built as a Lua module. Installed in PREFIX/share/ratchet/lua/ (the module
-- in PREFIX/lib/ratchet/); a project made by `ratchet init` finds it through
-- its .busted file. In the source tree it is lua/ratchet/testing.lua.
--
--   local testing = require "ratchet.testing"
--   local ev = testing.evaluator("polite")   -- ./evaluators/polite.lua, else the shipped one
--   local r = ev:evaluate({ output = "Sorry, we fixed it" }, { words = { "your fault" } })
--   -- r.pass, r.score, r.reason, r.status ("ok", "error", "killed", "nomem")
--   local p = testing.policy("trigger")      -- ./policies/trigger.lua, else the shipped one
--   local d = p:call("should_optimize", stats, state)
--
-- Scripts `require` modules from the project's evaluators/, policies/ and
-- scripts/ first, then from the shipped ones, as the engine does with the
-- default scripts.dirs. RATCHET_SHARE_DIR and RATCHET_LUA_CPATH override
-- where the shipped scripts and the module are looked for.
local M = {}

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

-- the folder of the shipped scripts: this file is SHARE/lua/ratchet/testing.lua
local function share_dir()
  local env = os.getenv("RATCHET_SHARE_DIR")
  if env and env ~= "" then return env end
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  if src:match("^lua/ratchet/testing%.lua$") then return "." end
  return src:match("^(.*)/lua/ratchet/testing%.lua$") or "."
end

M.share_dir = share_dir():gsub("^%./", ""):gsub("/$", "")

-- ratchet_sandbox.so: PREFIX/lib/ratchet beside an installed share, or the
-- source tree's build/lua
local function module_dir()
  local env = os.getenv("RATCHET_LUA_CPATH")
  if env and env ~= "" then return env end
  for _, d in ipairs { M.share_dir .. "/../../lib/ratchet", M.share_dir .. "/build/lua" } do
    if exists(d .. "/ratchet_sandbox.so") then return d end
  end
  error("ratchet.testing: no ratchet_sandbox.so in " .. M.share_dir .. "/../../lib/ratchet or " .. M.share_dir ..
    "/build/lua (set RATCHET_LUA_CPATH to its folder)", 0)
end

package.cpath = module_dir() .. "/?.so;" .. package.cpath
local sandbox = require "ratchet_sandbox"

local KINDS = { "evaluators", "policies", "scripts" }

-- where require() looks: the project's folders, then the shipped ones
M.dirs = {}
for _, root in ipairs { ".", M.share_dir } do
  for _, kind in ipairs(KINDS) do
    local d = root == "." and kind or root .. "/" .. kind
    local dup = false
    for _, have in ipairs(M.dirs) do dup = dup or have == d end
    if not dup then M.dirs[#M.dirs + 1] = d end
  end
end

local function with_dirs(opts)
  opts = opts or {}
  if opts.dirs then return opts end
  local o = { dirs = M.dirs }
  for k, v in pairs(opts) do o[k] = v end
  return o
end

-- The file a name stands for: the project's (override by name), else the shipped one.
function M.find(kind, name)
  local own = kind .. "/" .. name .. ".lua"
  if exists(own) then return own end
  local shipped = M.share_dir .. "/" .. own
  if exists(shipped) then return shipped end
  return nil, string.format("no %s.lua in ./%s or %s/%s", name, kind, M.share_dir, kind)
end

-- load_evaluator(path [, opts]) -> evaluator | nil, "file:line: message"
-- opts: dirs (require folders), budget_ms, memory_limit, llm and http stubs
-- (function(request) -> result | nil, message, kind)
function M.load_evaluator(path, opts) return sandbox.load_evaluator(path, with_dirs(opts)) end

-- load_policy(path [, opts]) -> policy | nil, err; policy:call(fn, ...) runs
-- fn in the sandbox (arguments and result cross as JSON, as in the engine).
-- Meta-prompt templates (scripts/metaprompts/NAME.lua) load the same way.
function M.load_policy(path, opts) return sandbox.load_policy(path, with_dirs(opts)) end

-- An evaluator by name, or a failed assertion with the load error.
function M.evaluator(name, opts)
  local path = assert(M.find("evaluators", name))
  local ev, err = M.load_evaluator(path, opts)
  assert(ev, err)
  return ev
end

-- A policy by name, or a failed assertion with the load error.
function M.policy(name, opts)
  local path = assert(M.find("policies", name))
  local p, err = M.load_policy(path, opts)
  assert(p, err)
  return p
end

return M
