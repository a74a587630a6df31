-- spec/adversarial/report.lua — the figures of an adversarial campaign
-- (spec/adversarial/campaign.lua): what became of each kind of candidate,
-- each promotion's ground-truth class, the verbatim copies by byte alignment,
-- LLM calls per promotion, wall time; and their printing as TAP comments
-- (a table to copy into bench/RESULTS.md and docs/loop.md).
local world = require "spec.adversarial.world"

local M = {}

-- the copy check before issue 20: 24-byte windows of the shown inputs at
-- offsets 0, 4, 8, ..., byte for byte (engine/loop.c leaks() then, now engine/loop/provenance.c); this
-- predicts what that rule would see, for the report only (the engine's
-- answer is what counts)
local function window4_catches(system, current, shown)
  for _, s in ipairs(shown or {}) do
    local text = s.order
    for off = 0, #text - 24, 4 do
      local w = text:sub(off + 1, off + 24)
      if system:find(w, 1, true) and not current:find(w, 1, true) then return true end
    end
  end
  return false
end

local function short(s, n)
  s = tostring(s or ""):gsub("%s+", " ")
  n = n or 160
  return #s > n and s:sub(1, n - 3) .. "..." or s
end

function M.figures(c, meta)
  local f = { meta = meta, cycles = #c.cycles, wall_s = c.wall or 0, proposed = {}, kinds = {}, alignments = {},
    variants = {}, verbatim = {}, regressions = {}, poisoned = {}, no_gain = {}, genuine_modes = {},
    genuine_fates = {}, promotions = {}, held = 0, shifted = c.state.shifted, llm = { template = 0, run = 0 },
    ledger_full = false, cycle_lines = {}, proposals = {} }
  for _, cyc in ipairs(c.cycles) do
    f.llm.template = f.llm.template + (cyc.llm_template or 0)
    f.llm.run = f.llm.run + (cyc.llm_run or 0)
    f.ledger_full = f.ledger_full or cyc.ledger_full
    if cyc.held then f.held = f.held + 1 end
    local stages = {}
    local prop = cyc.proposal or {}
    f.proposals[#f.proposals + 1] = prop
    for i, cand in ipairs(cyc.candidates or {}) do
      local k = f.kinds[cand.kind] or { proposed = 0, skipped = 0, precheck = 0, gate = {}, held = 0, canary = 0,
        promoted = 0, rolled_back = 0, reasons = {} }
      f.kinds[cand.kind] = k
      if cand.skipped then
        k.skipped = k.skipped + 1
      else
        k.proposed = k.proposed + 1
        f.proposed[cand.kind] = (f.proposed[cand.kind] or 0) + 1
        if cand.stage == "pre-check" then k.precheck = k.precheck + 1 end
        if cand.gate then k.gate[cand.gate] = (k.gate[cand.gate] or 0) + 1 end
        if cand.stage == "held" then k.held = k.held + 1 end
        if cand.stage == "promoted" or cand.stage == "rolled back" or cand.stage == "canary" then k.canary = k.canary + 1 end
        if cand.stage == "promoted" then k.promoted = k.promoted + 1 end
        if cand.stage == "rolled back" then k.rolled_back = k.rolled_back + 1 end
        local why = {}
        if cand.gate_reasons and #cand.gate_reasons > 0 then
          why[#why + 1] = "gate " .. tostring(cand.gate) .. ": " .. table.concat(cand.gate_reasons, "; ")
        end
        if cand.reason then why[#why + 1] = cand.reason end
        if #why > 0 and #k.reasons < 4 then
          k.reasons[#k.reasons + 1] = string.format("c%d %s | %s", cyc.n, cand.stage, short(table.concat(why, " | "), 400))
        end
      end
      stages[#stages + 1] = string.format("%s%s=%s", cand.kind, cand.mode and ("(" .. cand.mode .. ")") or "",
        cand.skipped and "skipped" or cand.stage or "?")
      if cand.kind == "genuine" then
        f.genuine_fates[#f.genuine_fates + 1] = string.format("  cycle %d (%s) genuine %s: %s %s", cyc.n, cyc.plan,
          tostring(cand.mode), tostring(cand.stage), short(cand.reason or (cand.gate_reasons or {})[1] or "", 300))
      end
      if cand.kind == "verbatim" and cand.copy then
        local cp = cand.copy
        local pc = (prop.candidates or {})[i] or {}
        f.alignments[cyc.plan] = f.alignments[cyc.plan] or {}
        f.alignments[cyc.plan][cp.residue] = true
        f.variants[cp.variant] = true
        f.verbatim[#f.verbatim + 1] = { plan = cyc.plan, residue = cp.residue, offset = cp.offset, length = cp.length,
          variant = cp.variant, whole = cp.whole, stage = cand.stage,
          window4 = pc.system and window4_catches(pc.system, prop.current or "", prop.shown) or false,
          reason = cand.reason }
      end
    end
    local p = cyc.promotion
    f.cycle_lines[#f.cycle_lines + 1] = string.format("c%-2d %-16s %s%s; llm %d+%d", cyc.n, cyc.plan,
      table.concat(stages, ", "), p and string.format(" -> promoted v%d: %s%s%s", p.version, p.class,
        p.poisoned and " (poisoned)" or "", p.reverted and ", reverted by the operator" or "") or "",
      cyc.llm_template or 0, cyc.llm_run or 0)
  end
  for _, p in ipairs(c.promotions) do
    local kinds = {}
    for _, cyc in ipairs(c.cycles) do
      if cyc.n == p.cycle then
        for _, cand in ipairs(cyc.candidates or {}) do
          if cand.version == p.version then kinds[#kinds + 1] = cand.kind end
        end
      end
    end
    p.kind = table.concat(kinds, "+")
    f.promotions[#f.promotions + 1] = p
    local line = string.format("  cycle %d (%s): v%d (%s) over v%d: better %s; worse %s%s%s", p.cycle, p.plan,
      p.version, p.kind, p.replaced, table.concat(p.better, ",") ~= "" and table.concat(p.better, ",") or "-",
      table.concat(p.worse, ",") ~= "" and table.concat(p.worse, ",") or "-",
      p.poisoned and ("; poisoned: " .. p.poisoned) or "", p.shifted and "; after the shift" or "")
      .. "\n    the engine said: " .. short(p.message, 300)
      .. (type(p.stats) == "table" and p.stats.slices and string.format(" (%.0f slice(s) judged)", p.stats.slices) or "")
    if p.class == "regression" then f.regressions[#f.regressions + 1] = line end
    if p.poisoned then f.poisoned[#f.poisoned + 1] = line end
    if p.class == "no_gain" then f.no_gain[#f.no_gain + 1] = line end
    if p.class == "genuine" then
      for _, m in ipairs(world.MODES) do
        for _, s in ipairs(p.better) do if s == m.mode then f.genuine_modes[m.mode] = true end end
      end
    end
  end
  local n = #c.promotions
  f.promoted = n
  f.llm.total = f.llm.template + f.llm.run
  f.llm.per_promotion = n > 0 and f.llm.total / n or nil
  local genuine = 0
  for _, p in ipairs(c.promotions) do if p.class == "genuine" then genuine = genuine + 1 end end
  f.genuine = genuine
  f.llm.per_genuine = genuine > 0 and f.llm.total / genuine or nil
  return f
end

local ORDER = { "genuine", "verbatim", "paraphrase", "backdoor", "overfit", "memorised_golden", "rare_slice",
  "breaks_one_golden", "noop", "shift_only" }

function M.print(f)
  local out = {}
  local function say(fmt, ...) out[#out + 1] = "# " .. string.format(fmt, ...) end
  say("adversarial scenario (SIMULATED world and optimizer) — pending interface %s, case shape %s%s",
    f.meta.pending and "ON" or "off", f.meta.bare_input and "bare variables accepted (diagnostic)" or "as documented",
    f.meta.error and ("; the campaign stopped: " .. short(f.meta.error, 400)) or "")
  say("")
  say("| figure | value |")
  say("| --- | --- |")
  say("| cycles | %d |", f.cycles)
  say("| promoted (all) | %d |", f.promoted)
  say("| promoted genuine | %d |", f.genuine)
  say("| promoted regressions | %d |", #f.regressions)
  say("| poisoned promotions | %d |", #f.poisoned)
  say("| promoted without a true gain | %d |", #f.no_gain)
  say("| held for approval | %d |", f.held)
  say("| LLM calls (optimizer + gate) | %d + %d = %d%s |", f.llm.template, f.llm.run, f.llm.total,
    f.ledger_full and " (a ledger page was full: at least)" or "")
  say("| LLM calls per promotion | %s |", f.llm.per_promotion and string.format("%.0f", f.llm.per_promotion) or "-")
  say("| LLM calls per genuine promotion | %s |", f.llm.per_genuine and string.format("%.0f", f.llm.per_genuine) or "-")
  say("| wall time | %.0f s |", f.wall_s)
  say("")
  say("| candidate kind | proposed | stopped before the gate | gate verdicts | held | canaried | rolled back | promoted |")
  say("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for _, kind in ipairs(ORDER) do
    local k = f.kinds[kind]
    if k then
      local g = {}
      for v, n in pairs(k.gate) do g[#g + 1] = v .. " " .. n end
      table.sort(g)
      say("| %s | %d | %d | %s | %d | %d | %d | %d |", kind, k.proposed, k.precheck, #g > 0 and table.concat(g, ", ") or "-",
        k.held, k.canary, k.rolled_back, k.promoted)
    end
  end
  say("")
  say("why (first reasons per kind):")
  for _, kind in ipairs(ORDER) do
    local k = f.kinds[kind]
    if k then for _, r in ipairs(k.reasons) do say("  %-17s %s", kind, r) end end
  end
  say("")
  say("verbatim copies: offset mod 8, bytes in the trace, variant, whole sentence?, would the old check (byte windows at offsets 0, 4, 8...) see it?, what the engine did")
  for _, v in ipairs(f.verbatim) do
    say("  %-14s %d  %2d B  %-5s %-5s window4=%-5s %s", v.plan, v.residue, v.length, v.variant, v.whole and "whole" or "part",
      tostring(v.window4), v.stage or "?")
  end
  say("")
  say("cycles:")
  for _, l in ipairs(f.cycle_lines) do say("  %s", l) end
  if #f.promotions > 0 then
    say("")
    say("promotions (ground truth):")
    for _, p in ipairs(f.promotions) do
      say("  cycle %d %s: v%d (%s) %s%s", p.cycle, p.plan, p.version, p.kind, p.class, p.poisoned and (", poisoned: " .. p.poisoned) or "")
    end
  end
  print(table.concat(out, "\n"))
  io.stdout:flush()
end

return M
