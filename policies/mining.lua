-- mining.lua — failure mining: select(failures, options) picks the failed
-- traces the optimizer is shown and the ones kept for the gate;
-- replay(traces, options) picks the passing production traces the gate
-- replays, by strata, so nothing that worked breaks unseen.
--
-- failures: newest first, { { id, input = {variables}, reasons = { {evaluator,
--   reason} }, ts, negative } }
-- options: { max_shown, holdout, ... } (loop.max_shown, loop.holdout and
--   loop.mining_options)
-- returns { shown = {ids}, held = {ids}, groups = {...}, group_of = {id =
--   group}, duplicates = n }
--
-- Near-identical inputs (the same text once case, digits, spacing and
-- punctuation are ignored) count once. A held-out share of the distinct
-- failures, chosen by a hash of the trace id (stable across runs), is never
-- shown. The rest are grouped by failure reason and shown round-robin across
-- the groups, newest first, up to max_shown; whatever is not shown goes to
-- the gate, so candidates are graded on failures the optimizer never saw.
local M = {}

M.settings = {
  max_shown = 12,
  holdout = 0.3,
  max_input_bytes = 2000,  -- of one input, for the near-duplicate key
  -- the replay: passing production traces the gate runs (loop.replay sets
  -- how many), split into strata by these dimensions:
  --   "metadata.KEY"   the trace's metadata value
  --   "variables.KEY"  a template variable's value (its first 40 bytes)
  --   "length"         the input's length: short (< 200 bytes), medium, long (>= 2000)
  --   "charset"        ascii or non-ascii input
  strata = { "length", "charset" },
  replay_floor = 5,        -- traces per stratum at least (as many as it has, if fewer)
}

local function opt(options, name)
  if type(options) == "table" and options[name] ~= nil then return options[name] end
  return M.settings[name]
end

-- the input's text: its string values in key order
local function text_of(v, out)
  if type(v) == "string" then out[#out + 1] = v
  elseif type(v) == "number" or type(v) == "boolean" then out[#out + 1] = tostring(v)
  elseif type(v) == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for _, k in ipairs(keys) do text_of(v[k] == nil and v[tonumber(k)] or v[k], out) end
  end
  return out
end

function M.key(input, max)
  local s = table.concat(text_of(input, {}), " "):sub(1, max or M.settings.max_input_bytes)
  s = s:lower():gsub("%d+", "0"):gsub("[%p%s]+", " ")
  return (s:gsub("^ ", ""):gsub(" $", ""))
end

-- FNV-1a, 32 bits: a stable hash of the trace id
function M.hash(s)
  local h = 2166136261
  for i = 1, #s do
    h = h ~ s:byte(i)
    h = (h * 16777619) & 0xffffffff
  end
  return h
end

-- the failure's reason class: the first failing evaluator and its reason
-- with numbers and quoted values taken out
local function reason_key(f)
  local r = (f.reasons or {})[1]
  if type(r) ~= "table" then return f.negative and "negative feedback" or "(no reason)" end
  local why = tostring(r.reason or ""):gsub('"[^"]*"', '""'):gsub("'[^']*'", "''"):gsub("%d+", "0")
  return tostring(r.evaluator or "?") .. ": " .. why:sub(1, 120)
end

function M.select(failures, options)
  local max_shown, holdout = opt(options, "max_shown"), opt(options, "holdout")
  local seen, distinct, duplicates = {}, {}, 0
  local dup_of = {}
  for _, f in ipairs(failures or {}) do
    local k = M.key(f.input, opt(options, "max_input_bytes"))
    if seen[k] then
      duplicates = duplicates + 1
      dup_of[f.id] = seen[k]
    else
      seen[k] = f.id
      distinct[#distinct + 1] = f
    end
  end
  local held, pool = {}, {}
  for _, f in ipairs(distinct) do
    if #distinct > 1 and (M.hash(f.id) % 1000) < holdout * 1000 then held[#held + 1] = f.id
    else pool[#pool + 1] = f end
  end
  -- with a holdout asked for, at least one distinct failure is held out
  if holdout > 0 and #held == 0 and #pool > 1 then
    held[1] = pool[#pool].id
    pool[#pool] = nil
  end
  local groups, order = {}, {}
  for _, f in ipairs(pool) do
    local k = reason_key(f)
    if not groups[k] then groups[k] = {}; order[#order + 1] = k end
    table.insert(groups[k], f)
  end
  table.sort(order, function(a, b)
    if #groups[a] ~= #groups[b] then return #groups[a] > #groups[b] end
    return a < b
  end)
  local shown, shown_set = {}, {}
  local round = 1
  while #shown < max_shown do
    local took = false
    for _, k in ipairs(order) do
      local f = groups[k][round]
      if f and #shown < max_shown then
        shown[#shown + 1] = f.id
        shown_set[f.id] = true
        took = true
      end
    end
    if not took then break end
    round = round + 1
  end
  -- the gate gets every distinct failure not shown (held out, or over the cap)
  for _, f in ipairs(pool) do
    if not shown_set[f.id] then held[#held + 1] = f.id end
  end
  local group_list = {}
  for _, k in ipairs(order) do group_list[#group_list + 1] = { reason = k, failures = #groups[k] } end
  -- every distinct failure's group, held ones too: the gate tests each group
  local group_of = {}
  for _, f in ipairs(distinct) do group_of[f.id] = reason_key(f) end
  return { shown = shown, held = held, groups = group_list, group_of = group_of, duplicates = duplicates,
           distinct = #distinct }
end

-- the value of one stratum dimension for a trace
local function dimension(t, dim)
  local key = dim:match("^metadata%.(.+)$")
  if key then
    local v = type(t.metadata) == "table" and t.metadata[key] or nil
    return dim .. "=" .. (v == nil and "(none)" or tostring(v):sub(1, 40))
  end
  key = dim:match("^variables%.(.+)$")
  if key then
    local v = type(t.input) == "table" and t.input[key] or nil
    return dim .. "=" .. (v == nil and "(none)" or type(v) == "table" and "(table)" or tostring(v):sub(1, 40))
  end
  local text = table.concat(text_of(t.input, {}), " ")
  if dim == "length" then
    return "length=" .. (#text < 200 and "short" or #text < 2000 and "medium" or "long")
  elseif dim == "charset" then
    return "charset=" .. (text:find("[\128-\255]") and "non-ascii" or "ascii")
  end
  error("mining: unknown stratum dimension '" .. tostring(dim) .. "' (metadata.KEY, variables.KEY, length, charset)", 0)
end

-- Picks the passing traces the gate replays: traces: newest first,
-- { { id, input = {variables}, metadata, ts } }; options.replay: how many.
-- Near-identical inputs count once. Each stratum (the values of the
-- dimensions in options.strata) gets replay_floor traces first, rarest
-- strata first; what is left of the budget goes round-robin over the
-- strata, newest first, so rare strata are over-represented against their
-- share of traffic. Returns { cases = { { id, stratum } }, strata = { {
-- name, available, chosen } } }.
function M.replay(traces, options)
  local want, floor = opt(options, "replay") or 60, opt(options, "replay_floor")
  local dims = opt(options, "strata")
  local seen, strata, order = {}, {}, {}
  for _, t in ipairs(traces or {}) do
    local k = M.key(t.input, opt(options, "max_input_bytes"))
    if not seen[k] then
      seen[k] = true
      local parts = {}
      for _, d in ipairs(dims) do parts[#parts + 1] = dimension(t, d) end
      local name = #parts > 0 and table.concat(parts, ", ") or "all"
      if not strata[name] then strata[name] = {}; order[#order + 1] = name end
      table.insert(strata[name], t)
    end
  end
  table.sort(order, function(a, b)
    if #strata[a] ~= #strata[b] then return #strata[a] < #strata[b] end
    return a < b
  end)
  local cases, taken = {}, {}
  local function take(name, i)
    local t = strata[name][i]
    if not t or #cases >= want then return false end
    cases[#cases + 1] = { id = t.id, stratum = name }
    taken[name] = i
    return true
  end
  for _, name in ipairs(order) do
    for i = 1, math.min(floor, #strata[name]) do take(name, i) end
  end
  local more = true
  while more and #cases < want do
    more = false
    for _, name in ipairs(order) do
      if take(name, (taken[name] or 0) + 1) then more = true end
    end
  end
  local summary = {}
  for _, name in ipairs(order) do
    summary[#summary + 1] = { name = name, available = #strata[name], chosen = taken[name] or 0 }
  end
  return { cases = cases, strata = summary }
end

-- What the settings' defaults cannot say about a prompt's mining_options
-- (types and keys come from M.settings; docs/loop.md#policy-settings).
-- The engine checks the options against both when the config loads.
M.options = {
  max_shown = { type = "integer", min = 1, description = "failures shown to the optimizer at most" },
  holdout = { type = "number", min = 0, max = 1, description = "share of distinct failures kept for the gate" },
  max_input_bytes = { type = "integer", min = 1, description = "bytes of one input used for the near-duplicate key" },
  strata = { type = "list", items = "string",
    description = "dimensions of the replay's strata: metadata.KEY, variables.KEY, length, charset" },
  replay_floor = { type = "integer", min = 0, description = "replayed traces per stratum at least" },
}

return M
