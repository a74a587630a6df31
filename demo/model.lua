-- demo/model.lua — the SIMULATED models of `make demo` and the loop's specs,
-- served by `ratchet fake-llm --model demo/model.lua`. No real LLM is involved.
--
-- The target "model" turns a support ticket into JSON and follows only the
-- instructions its system prompt states:
--   "Answer with a JSON object"      JSON with category, priority, summary (else plain text)
--   "Escape quotes in strings."      the summary is escaped; without it a ticket with a quote
--                                    gives invalid JSON (the demo's production bug)
--   "Use uppercase."                 labels in uppercase (breaks the schema's enums)
--
-- The optimizer "model" (asked by a meta-prompt: its system message names a
-- prompt engineer) reads the failure reasons it is shown and proposes fixes:
-- candidate 1 adds the fix and an unasked-for "Use uppercase." (a regression
-- the gate must catch), candidate 2 adds only the fix, candidate 3 rewrites
-- the user message (which templates may not change). Like a naive model, it
-- also obeys "Add this sentence to the prompt: ..." found in trace text, so
-- specs can check that poisoned traces never reach production.
local cjson = require "cjson"

local function category(t)
  t = t:lower()
  if t:find("refund") or t:find("charge") or t:find("invoice") or t:find("paid") then return "billing" end
  if t:find("password") or t:find("login") or t:find("locked") or t:find("account") then return "account" end
  if t:find("crash") or t:find("error") or t:find("bug") or t:find("slow") then return "technical" end
  return "other"
end

local function priority(t)
  t = t:lower()
  if t:find("urgent") or t:find("asap") or t:find("down") or t:find("immediately") then return "high" end
  return "normal"
end

local function target(system, user)
  local ticket = user:match("Ticket:%s*(.*)$") or user
  if not system:find("Answer with a JSON object", 1, true) then
    return "This looks like a " .. category(ticket) .. " ticket."
  end
  local cat, pri = category(ticket), priority(ticket)
  if system:find("Use uppercase.", 1, true) then cat, pri = cat:upper(), pri:upper() end
  local summary = ticket:sub(1, 60)
  if system:find("Escape quotes in strings.", 1, true) then
    return cjson.encode({ category = cat, priority = pri, summary = summary })
  end
  -- the bug: the summary pasted in as it is
  return string.format('{"category":"%s","priority":"%s","summary":"%s"}', cat, pri, summary)
end

local FIXES = {
  { pattern = "not valid JSON", fix = "Escape quotes in strings." },
  { pattern = "is not one of", fix = "Use only the lowercase labels listed." },
  { pattern = "missing required", fix = "Always include every field." },
}

local function optimizer(system, user)
  local current = user:match('current prompt %(version %d+%)%s*<prompt role="system">\n(.-)\n</prompt>') or ""
  local user_msg = user:match('<prompt role="user">\n(.-)\n</prompt>') or "Ticket: {{ticket}}"
  local fixes, seen, said = {}, {}, {}
  for reasons in user:gmatch("<reasons>\n(.-)\n</reasons>") do
    for _, f in ipairs(FIXES) do
      if reasons:find(f.pattern, 1, true) and not seen[f.fix] and not current:find(f.fix, 1, true) then
        seen[f.fix] = true
        fixes[#fixes + 1] = f.fix
        said[#said + 1] = "'" .. f.pattern .. "'"
      end
    end
  end
  local injected = ""
  for data in user:gmatch("<data>\n(.-)\n</data>") do
    local s = data:match("Add this sentence to the prompt: ([^\"\\]-%.)")
    if s then injected = injected .. " " .. s end
  end
  local fix = table.concat(fixes, " ")
  local base = current .. (fix ~= "" and " " .. fix or "") .. injected
  local why = #fixes > 0 and ("the failures say " .. table.concat(said, ", ") .. "; the prompt never asks: " .. fix)
    or "no failure reason I recognise; restating the task"
  local answer = {
    candidates = {
      { system = base .. " Use uppercase.", rationale = why .. " Uppercase labels also stand out." },
      { system = base, rationale = why },
      { messages = { { role = "system", content = base }, { role = "user", content = "Ticket text: see above" } },
        rationale = "a shorter user message" },
    },
    diagnosis = { { cluster = 1, cause = why } },
  }
  return "Here is my analysis.\n```json\n" .. cjson.encode(answer) .. "\n```"
end

return function(request)
  local system, user = "", ""
  for _, m in ipairs(request.messages or {}) do
    if m.role == "system" then system = system .. "\n" .. m.content end
    if m.role == "user" then user = m.content end
  end
  if request.system then system = system .. "\n" .. request.system end
  if system:find("prompt engineer", 1, true) then return optimizer(system, user) end
  return target(system, user)
end
