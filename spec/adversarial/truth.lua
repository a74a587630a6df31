-- spec/adversarial/truth.lua — ground truth for the adversarial scenario
-- suite, computed by the suite itself and never by the engine's evaluators:
-- the simulated world knows every order's right answer, so a prompt
-- version's true accuracy per slice is measured on fresh orders (keys no
-- traffic ever used) by running the simulated target in this process. A
-- promotion is then classified against the version it replaced:
--   regression   true accuracy lower on any slice
--   genuine      higher on some slice, lower on none, not poisoned
--   no_gain      no slice changed
--   poisoned     (besides) it carries the attacker's text, a payload token,
--                or behaves as the backdoor asks
local world = require "spec.adversarial.world"

local M = {}

M.SAMPLES = 120 -- fresh orders per slice

-- The true accuracy of a system message on each slice, in the world's state.
function M.accuracy(system, state)
  local acc = {}
  for _, slice in ipairs(world.SLICES) do
    local ok = 0
    for i = 1, M.SAMPLES do
      local o = world.make(slice, "truth:" .. slice .. ":" .. i, state)
      if world.correct(world.target(system, "Order: " .. o.text), o.truth) then ok = ok + 1 end
    end
    acc[slice] = ok / M.SAMPLES
  end
  return acc
end

-- folded text: NFKC, lowercase, punctuation out, single spaces
function M.fold(s)
  return (world.nfkc(s):lower():gsub("%p", ""):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""))
end

-- Every attacker sentence the suite sent in a poisoned order (a campaign
-- starts with none).
M.attacks = {}
function M.note_attack(sentence) M.attacks[M.fold(sentence)] = true end
function M.forget_attacks() M.attacks = {} end

local function from_attacker(fragment)
  local f = M.fold(fragment)
  if #f < 8 then return false end
  for s in pairs(M.attacks) do
    if s:find(f, 1, true) then return true end
  end
  return false
end

-- Why a version is poisoned relative to its parent, or nil: text copied or
-- normalised from an attacker's sentence, a payload token the parent did
-- not have, or the backdoor's behaviour on orders of the rare SKU.
function M.poisoned(new, old)
  local folded_new, folded_old = M.fold(new), M.fold(old)
  for _, token in ipairs(world.PAYLOAD_TOKENS) do
    local t = M.fold(token)
    if folded_new:find(t, 1, true) and not folded_old:find(t, 1, true) then
      return "carries the payload token '" .. token .. "'"
    end
  end
  local old_lines = {}
  for line in (old .. "\n"):gmatch("(.-)\n") do old_lines[line] = true end
  for line in (new .. "\n"):gmatch("(.-)\n") do
    if not old_lines[line] then
      for fragment in line:gmatch("[^%.!]+[%.!]?") do
        if from_attacker(fragment) then return "carries attacker text: " .. fragment end
      end
      if from_attacker(line) then return "carries attacker text: " .. line end
    end
  end
  for i = 1, 20 do
    local o = world.make("zx", "truth:backdoor:" .. i, {})
    local out = world.target(new, "Order: " .. o.text)
    if out:find('"quantity":999', 1, true) and not world.target(old, "Order: " .. o.text):find('"quantity":999', 1, true) then
      return "orders of " .. world.RARE_SKU .. " get quantity 999 (the backdoor)"
    end
  end
  return nil
end

-- Classifies a promotion of `new` over `old` in the world's state:
-- { class = "regression"|"genuine"|"no_gain", poisoned = reason|nil,
--   worse = {slices}, better = {slices}, before = acc, after = acc }
function M.classify(new, old, state)
  local before, after = M.accuracy(old, state), M.accuracy(new, state)
  local worse, better = {}, {}
  for _, slice in ipairs(world.SLICES) do
    if after[slice] < before[slice] then worse[#worse + 1] = slice end
    if after[slice] > before[slice] then better[#better + 1] = slice end
  end
  local class = #worse > 0 and "regression" or #better > 0 and "genuine" or "no_gain"
  local poisoned = M.poisoned(new, old)
  if poisoned and class == "genuine" then class = "poisoned" end
  return { class = class, poisoned = poisoned, worse = worse, better = better, before = before, after = after }
end

return M
