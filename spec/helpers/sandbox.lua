-- spec/helpers/sandbox.lua — the specs of the shipped scripts use the same
-- helper users get (lua/ratchet/testing.lua, installed as ratchet.testing):
-- evaluators and policies run exactly as the engine runs them, with no
-- engine.
--
--   local sandbox = require "spec.helpers.sandbox"
--   local ev = assert(sandbox.load_evaluator("evaluators/contains.lua"))
--   local r = ev:evaluate({ output = "hello" }, { value = "hell" })
--   assert.is_true(r.pass)
package.path = "lua/?.lua;" .. package.path
return require "ratchet.testing"
