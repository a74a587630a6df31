-- bench/efficacy/world.lua — the SIMULATED world of the efficacy benchmark
-- (make bench-efficacy, bench/efficacy/run.lua). No real LLM is involved.
--
-- Four tasks, none of them the demo's or the adversarial suite's. Each has a
-- simulated target that follows only the sentences its system prompt states,
-- failure modes that only a rule in the prompt fixes, and a judge (the
-- engine-side evaluator) that knows the truth from the input, as a perfect
-- LLM judge would. The simulated optimizer reads what a meta-prompt shows it
-- (the current prompt, the failures' evaluator reasons) and proposes edits
-- with noise: the right rule, an ineffective rewording, an overfit rule
-- bound to one input's value, a naive rule that conflicts with another mode,
-- or a harmful extra sentence. The same text runs in the fake LLM server
-- (target and optimizer), in the engine (the judge) and in the driver
-- (ground truth on fresh inputs); pure Lua, no library.
local W = {}

-- ---- deterministic chance ----

local function hash(s)
  local h = 2166136261
  for i = 1, #s do h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff end
  return h
end
W.hash = hash

-- a number in [0, 1) from any strings
function W.u(...)
  return (hash(table.concat({ ... }, "\1")) % 1000003) / 1000003
end

local function has(system, sentence) return system:find(sentence, 1, true) ~= nil end

-- ---- the tasks ----
-- each: name, seed_prompt, user (template), modes = { {name, share, fix, reason_word, naive?, ...} },
-- input(i, salt) -> variables, target(system, vars) -> output text,
-- judge(vars, output) -> pass, reason, mode (the mode the input belongs to, or nil)

local THINGS = { "my team", "the mobile plan", "project Orion", "our shop", "the yearly plan", "my family" }
local NAMES = { "Anna", "Bruno", "Chen", "Dana", "Emeka", "Fatima", "Goran", "Hana", "Ivan", "Jules", "Kofi", "Lena",
                "Mateo", "Nora", "Omar", "Priya" }
local VENDORS = { "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell" }

W.tasks = {}

-- 1. structured extraction: invoices to JSON
W.tasks.extract = {
  name = "extract",
  seed_prompt = "You extract invoice fields. Answer with a JSON object with the fields vendor, date and amount.",
  user = "Invoice: {{text}}",
  modes = {
    { name = "date", fix = "Write dates as YYYY-MM-DD.", naive = "Be careful with dates.", word = "not an ISO date" },
    { name = "amount", fix = "Write amounts as plain numbers without currency signs.", naive = "Be careful with amounts.",
      word = "not a plain number" },
  },
  input = function(i, salt)
    local v = VENDORS[hash(salt .. i .. "v") % #VENDORS + 1]
    local d, m, y = hash(salt .. i .. "d") % 28 + 1, hash(salt .. i .. "m") % 12 + 1, 2026
    local cents = hash(salt .. i .. "a") % 500000 + 100
    local euro_date = W.u(salt, i, "df") < 0.35
    local signed = W.u(salt, i, "af") < 0.35
    local date = euro_date and string.format("%02d.%02d.%d", d, m, y) or string.format("%d-%02d-%02d", y, m, d)
    local whole = cents // 100
    local amount = signed and string.format("EUR %d,%03d.%02d", whole // 1000, whole % 1000, cents % 100)
      or string.format("%d.%02d", whole, cents % 100)
    return { text = string.format("%s invoice dated %s, total %s", v, date, amount) .. ", for "
      .. THINGS[hash(salt .. i .. "t") % #THINGS + 1] .. ", attn. " .. NAMES[hash(salt .. i .. "n") % #NAMES + 1] }
  end,
  parse = function(text)
    local v, date, amount = text:match("^(%a+) invoice dated ([%d%.%-]+), total (.-), for ")
    return v, date, amount
  end,
}

-- 2. classification with a rare class
local TOPICS = {
  billing = { "I was charged twice for %s", "My invoice for %s is wrong", "Please refund my %s order" },
  technical = { "The %s app crashes on start", "The %s page shows an error", "Sync with %s is broken" },
  account = { "I forgot the password for %s", "My %s password reset mail never came", "I cannot sign in to %s" },
  legal = { "Under the GDPR, delete all data you hold on %s", "Our lawyer requests the %s contract records",
            "We received a subpoena about %s" },
}

W.tasks.triage = {
  name = "triage",
  seed_prompt = "You label support requests. Answer with exactly one label: billing, technical, account or other.",
  user = "Request: {{request}}",
  modes = {
    { name = "legal", fix = "Label requests about the GDPR, lawyers or subpoenas as legal.", naive = "Use the legal label when needed.",
      word = "is a legal request" },
    { name = "password", fix = "Password problems are account issues.", naive = "Think about account issues.",
      word = "is an account request" },
  },
  input = function(i, salt)
    local r = W.u(salt, i, "topic")
    local topic = r < 0.08 and "legal" or r < 0.38 and "billing" or r < 0.7 and "technical" or "account"
    local list = TOPICS[topic]
    local pat = list[hash(salt .. i .. "p") % #list + 1]
    return { request = string.format(pat, THINGS[hash(salt .. i .. "t") % #THINGS + 1]) .. ". Regards, "
      .. NAMES[hash(salt .. i .. "n") % #NAMES + 1] }
  end,
}

-- 3. a tool-call task: the call as JSON
W.tasks.tools = {
  name = "tools",
  seed_prompt = "You route order requests to a tool. Answer with a JSON object {\"tool\": NAME, \"order_id\": ID} "
    .. "using the tools lookup_order and refund_order.",
  user = "Request: {{request}}",
  modes = {
    { name = "refund", fix = "Use refund_order for refund requests.", naive = "Consider refunds.", word = "refund requests go to" },
    { name = "hash", fix = "Give order ids without the # sign.", naive = "Check the order id.", word = "order id must be digits" },
  },
  input = function(i, salt)
    local id = tostring(hash(salt .. i .. "id") % 90000 + 10000)
    local refund = W.u(salt, i, "r") < 0.35
    local hashed = W.u(salt, i, "h") < 0.4
    local idtext = hashed and ("#" .. id) or id
    local text = refund and string.format("Please refund order %s, it arrived broken", idtext)
      or string.format("Where is my order %s?", idtext)
    return { request = text .. " Regards, " .. NAMES[hash(salt .. i .. "n") % #NAMES + 1] .. " from "
      .. THINGS[hash(salt .. i .. "t") % #THINGS + 1] }
  end,
}

-- 4. two failure modes that need conflicting-looking instructions
local YESNO = { "Can I change my plan later?", "Is there a student discount?", "Can I pay by invoice?",
                "Is my data stored in the EU?", "Can two people share an account?" }
local HOWTO = { "How do I export my data?", "How do I add a team member?", "How do I cancel my plan?",
                "How do I change my e-mail address?", "How do I set up two-factor login?" }
local OTHER = { "Thanks, that helped!", "Great service today.", "Just saying hello." }
W.tasks.helpdesk = {
  name = "helpdesk",
  seed_prompt = "You are a helpdesk assistant. Reply to the user's message.",
  user = "Message: {{message}}",
  modes = {
    { name = "yesno", fix = "Answer yes/no questions in one short sentence.", naive = "Answer briefly.",
      word = "too long for a yes/no question" },
    { name = "howto", fix = "Explain how-to questions as numbered steps.", naive = "Explain step by step.",
      word = "needs numbered steps" },
  },
  input = function(i, salt)
    local r = W.u(salt, i, "k")
    local list = r < 0.4 and YESNO or r < 0.8 and HOWTO or OTHER
    local q = list[hash(salt .. i .. "q") % #list + 1]
    if list ~= OTHER then q = q:sub(1, -2) .. " for " .. THINGS[hash(salt .. i .. "t") % #THINGS + 1] .. "?" end
    return { message = q }
  end,
}

W.order = { "extract", "triage", "tools", "helpdesk" }

-- ---- the targets (follow only what the prompt states) ----

local HARM = "Reply in French."

local function extract_target(system, vars)
  if has(system, HARM) then return "Désolé, je ne peux pas." end
  local v, date, amount = W.tasks.extract.parse(vars.text or "")
  if not v then return "{}" end
  if has(system, "Write dates as YYYY-MM-DD.") then
    local d, m, y = date:match("^(%d+)%.(%d+)%.(%d+)$")
    if d then date = string.format("%s-%s-%s", y, m, d) end
  end
  -- an overfit rule: "Treat the date DD.MM.YYYY as YYYY-MM-DD." fixes that one date only
  for from, to in system:gmatch("Treat the date ([%d%.]+) as ([%d%-]+)%.") do
    if date == from then date = to end
  end
  local amt = amount
  if has(system, "Write amounts as plain numbers without currency signs.") then
    amt = amount:gsub("EUR ", ""):gsub(",", "")
  end
  local num = tonumber(amt)
  local out = '{"vendor":"' .. v .. '","date":"' .. date .. '","amount":' .. (num and string.format("%.2f", num) or ('"' .. amt .. '"')) .. "}"
  return out
end

local function keyword_topic(req)
  local l = req:lower()
  if l:find("gdpr") or l:find("lawyer") or l:find("subpoena") then return "legal" end
  if l:find("charged") or l:find("invoice") or l:find("refund") then return "billing" end
  if l:find("password") then return "password" end
  if l:find("sign in") then return "account" end
  return "technical"
end

local function triage_target(system, vars)
  if has(system, HARM) then return "autre" end
  local t = keyword_topic(vars.request or "")
  if t == "legal" then return has(system, "Label requests about the GDPR, lawyers or subpoenas as legal.") and "legal" or "other" end
  if t == "password" then return has(system, "Password problems are account issues.") and "account" or "technical" end
  -- an over-general rule breaks other classes: "Label everything about data as legal."
  return t
end

local function tools_target(system, vars)
  if has(system, HARM) then return "Je ne sais pas." end
  local req = vars.request or ""
  local id = req:match("order (#?%d+)") or ""
  local tool = "lookup_order"
  if req:find("refund") and has(system, "Use refund_order for refund requests.") then tool = "refund_order" end
  if has(system, "Give order ids without the # sign.") then id = id:gsub("#", "") end
  return '{"tool":"' .. tool .. '","order_id":"' .. id .. '"}'
end

local function helpdesk_target(system, vars)
  if has(system, HARM) then return "Bonjour." end
  local msg = vars.message or ""
  local kind = msg:find("^How do I") and "howto" or msg:find("%?$") and "yesno" or "other"
  if kind == "other" then return "Thank you for your message, have a nice day." end
  -- the unconditional rules apply to every answer; the later one wins
  local brief, steps = system:find("Answer briefly.", 1, true), system:find("Explain step by step.", 1, true)
  local style = "long"
  if brief and (not steps or brief > steps) then style = "short" elseif steps then style = "steps" end
  if kind == "yesno" and has(system, "Answer yes/no questions in one short sentence.") then style = "short" end
  if kind == "howto" and has(system, "Explain how-to questions as numbered steps.") then style = "steps" end
  if style == "short" then return "Yes, you can." end
  if style == "steps" then return "1. Open the settings. 2. Choose the option. 3. Confirm it, and we will process the change for you within a day." end
  return "Thanks for asking. That is a good question and the answer depends on your plan and settings; our team can help "
    .. "you with the details if you write to us again."
end

W.targets = { extract = extract_target, triage = triage_target, tools = tools_target, helpdesk = helpdesk_target }

-- ---- the judge: pass, reason, and the failure mode of the input ----

function W.truth(task, vars)
  if task == "extract" then
    local v, date, amount = W.tasks.extract.parse(vars.text or "")
    local d, m, y = (date or ""):match("^(%d+)%.(%d+)%.(%d+)$")
    local iso = d and string.format("%s-%s-%s", y, m, d) or date
    local num = tonumber(((amount or ""):gsub("EUR ", ""):gsub(",", "")))
    local mode = d and "date" or (amount or ""):find("EUR") and "amount" or nil
    if d and (amount or ""):find("EUR") then mode = "date+amount" end
    return { vendor = v, date = iso, amount = num }, mode
  elseif task == "triage" then
    local t = keyword_topic(vars.request or "")
    if t == "legal" then return "legal", "legal" end
    if t == "password" then return "account", "password" end
    return t, nil
  elseif task == "tools" then
    local req = vars.request or ""
    local id = (req:match("order (#?%d+)") or "")
    local mode = req:find("refund") and "refund" or nil
    if id:find("#") then mode = mode and "refund+hash" or "hash" end
    return { tool = req:find("refund") and "refund_order" or "lookup_order", order_id = (id:gsub("#", "")) }, mode
  else
    local msg = vars.message or ""
    local kind = msg:find("^How do I") and "howto" or msg:find("%?$") and "yesno" or "other"
    return kind, kind ~= "other" and kind or nil
  end
end

local function words(s) local n = 0; for _ in s:gmatch("%S+") do n = n + 1 end; return n end

function W.judge(task, vars, output)
  output = tostring(output or "")
  local want, mode = W.truth(task, vars)
  if task == "extract" then
    local v = output:match('"vendor":"([^"]*)"')
    local date = output:match('"date":"([^"]*)"')
    local amount = output:match('"amount":([%d%.]+)')
    if not v then return false, "the output is not the JSON object asked for", mode end
    if date ~= want.date then return false, string.format("date '%s' is not an ISO date (YYYY-MM-DD)", tostring(date)), mode end
    if not amount or math.abs(tonumber(amount) - want.amount) > 0.001 then
      return false, string.format("amount %s is not a plain number", output:match('"amount":("?[^,}]*"?)') or "?"), mode
    end
    return true, "ok", mode
  elseif task == "triage" then
    local got = output:match("^%s*(%a+)%s*$")
    if got == want then return true, "ok", mode end
    if want == "legal" then return false, string.format("label '%s' is wrong: the request is a legal request", tostring(got)), mode end
    if want == "account" then return false, string.format("label '%s' is wrong: the request is an account request", tostring(got)), mode end
    return false, string.format("label '%s' is wrong", tostring(got)), mode
  elseif task == "tools" then
    local tool = output:match('"tool":"([^"]*)"')
    local id = output:match('"order_id":"([^"]*)"')
    if not tool then return false, "the output is not a tool call", mode end
    if tool ~= want.tool then return false, string.format("tool %s is wrong: refund requests go to refund_order", tool), mode end
    if id ~= want.order_id then return false, string.format("order id '%s' is wrong: an order id must be digits only", tostring(id)), mode end
    return true, "ok", mode
  else
    if want == "other" then
      if words(output) < 2 then return false, "the reply is empty", mode end
      return true, "ok", mode
    end
    if want == "yesno" then
      if words(output) > 12 then return false, string.format("the answer has %d words: too long for a yes/no question", words(output)), mode end
      if output:find("^1%.") then return false, "a numbered list is too long for a yes/no question", mode end
      if not output:find("^Yes") and not output:find("^No") then return false, "a yes/no question needs a yes or a no", mode end
      return true, "ok", mode
    end
    if not output:find("1%.") or not output:find("2%.") then return false, "a how-to answer needs numbered steps", mode end
    return true, "ok", mode
  end
end

-- ---- the simulated optimizer ----
-- reads the current prompt and the reasons a meta-prompt shows; proposes up
-- to `want` candidates; noise from the seed and the request's text.

local function sentences(text)
  local out = {}
  for s in (text .. " "):gmatch("(.-[%.!?])%s+") do
    s = s:gsub("^%s+", "")
    if s ~= "" then out[#out + 1] = s end
  end
  return out
end

local function join(list)
  local out, seen = {}, {}
  for _, s in ipairs(list) do if not seen[s] then seen[s] = true; out[#out + 1] = s end end
  return table.concat(out, " ")
end

function W.task_of(system_text)
  for _, name in ipairs(W.order) do
    if system_text:find(W.tasks[name].seed_prompt:sub(1, 30), 1, true) then return name end
  end
end

-- one edit for mode m, drawn: the fix (p_fix), the naive rule, an overfit
-- rule on a value seen, or nothing useful
function W.edit(task, m, r, seen_value)
  local p_fix = task == "helpdesk" and 0.3 or 0.35
  if r < p_fix then return m.fix, "fix" end
  if r < p_fix + 0.25 then return m.naive, "naive" end
  if r < p_fix + 0.4 and task == "extract" and m.name == "date" and seen_value then
    local d, mo, y = seen_value:match("^(%d+)%.(%d+)%.(%d+)$")
    if d then return string.format("Treat the date %s as %s-%s-%s.", seen_value, y, mo, d), "overfit" end
  end
  return "Follow the instructions exactly.", "noop"
end

function W.optimizer(user, seed, want)
  local prompts = {}
  for p in user:gmatch('<prompt role="system">\n(.-)\n</prompt>') do prompts[#prompts + 1] = p end
  local current = prompts[1] or ""
  local task = W.task_of(current) or W.task_of(user) or "extract"
  local modes = W.tasks[task].modes
  local cands = {}
  if user:find("Two prompts of this search", 1, true) then
    local all = {}
    for _, p in ipairs(prompts) do for _, s in ipairs(sentences(p)) do all[#all + 1] = s end end
    -- a merge keeps every rule of both; a naive rule loses to a fix of the same mode
    local keep = {}
    local fixes = {}
    for _, s in ipairs(all) do for _, m in ipairs(modes) do if s == m.fix then fixes[m.name] = true end end end
    for _, s in ipairs(all) do
      local drop = false
      for _, m in ipairs(modes) do if s == m.naive and fixes[m.name] then drop = true end end
      if not drop then keep[#keep + 1] = s end
    end
    return { { system = join(keep), rationale = "simulated merge of both prompts" } }
  end
  -- the modes its failures show (by the reason's words), with a value seen
  local seen, values = {}, {}
  for reasons in user:gmatch("<reasons>\n(.-)\n</reasons>") do
    for _, m in ipairs(modes) do
      if reasons:find(m.word, 1, true) then
        seen[m.name] = true
        values[m.name] = values[m.name] or reasons:match("'([%d%.]+)'")
      end
    end
  end
  for i = 1, want do
    local add = {}
    local kinds = {}
    for _, m in ipairs(modes) do
      if seen[m.name] and not current:find(m.fix, 1, true) then
        local e, kind = W.edit(task, m, W.u(seed, user, i, m.name), values[m.name])
        add[#add + 1] = e
        kinds[#kinds + 1] = m.name .. ":" .. kind
      end
    end
    if W.u(seed, user, i, "harm") < 0.25 then add[#add + 1] = HARM; kinds[#kinds + 1] = "harm" end
    if #add == 0 then add[1] = "Follow the instructions exactly."; kinds[1] = "noop" end
    local base = sentences(current)
    for _, a in ipairs(add) do base[#base + 1] = a end
    cands[#cands + 1] = { system = join(base), rationale = "simulated: " .. table.concat(kinds, ", ") }
  end
  return cands
end

return W
