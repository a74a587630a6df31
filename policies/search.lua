-- search.lua — the judgments of a search template's search (loop.template =
-- "gepa", docs/loop.md "The gepa strategy"): which pool member to improve
-- next, whether a child earns its place in the pool, which two members to
-- merge, and which members go to the gate. The engine runs the search (the
-- pool, the runs, the optimizer calls, the seeded draws, the budget); every
-- function here is a pure function of the numbers it is given.
--
-- A pool is a list of members { id, parents = {ids}, origin = "seed" |
-- "reflect" | "merge", scores = { per feedback case: 1 pass, 0 fail } }; the
-- seed (id 0) is the production version. options carry the prompt's
-- search_options over these settings, plus `draw` (a number in [0, 1) from
-- the run's seeded generator), `minibatch` and `candidates`.
local M = {}

M.settings = {
  -- a child is admitted when its minibatch total beats the best parent's by
  -- more than this (0: strictly better, as GEPA does)
  min_gain = 0,
  -- merge only members that each win at least this many cases the other loses
  merge_min_wins = 1,
}

M.options = {
  min_gain = { type = "number", min = 0, description = "how much a child must beat its parent's minibatch total by" },
  merge_min_wins = { type = "integer", min = 1, description = "cases each merged member must win over the other" },
}

local function score(m, i)
  local s = m.scores[i]
  if type(s) ~= "number" then return nil end -- a case not run (JSON null)
  return s
end

local function ncases(pool)
  local n = 0
  for _, m in ipairs(pool) do n = math.max(n, #m.scores) end
  return n
end

-- The Pareto front over per-case scores: for every case, the members with the
-- best score on it; a member is on the front when it is best on at least one
-- case and no other member is at least as good on every case and better on
-- one. Returns { [id] = cases won } for the members on the front.
function M.front(pool)
  local n = ncases(pool)
  local wins = {}
  for i = 1, n do
    local best = nil
    for _, m in ipairs(pool) do
      local s = score(m, i)
      if type(s) == "number" and (best == nil or s > best) then best = s end
    end
    if best and best > 0 then
      for _, m in ipairs(pool) do
        if score(m, i) == best then wins[m.id] = (wins[m.id] or 0) + 1 end
      end
    end
  end
  local function dominated(a)
    for _, b in ipairs(pool) do
      if b.id ~= a.id then
        local ge, gt = true, false
        for i = 1, n do
          local sa, sb = tonumber(score(a, i)) or 0, tonumber(score(b, i)) or 0
          if sb < sa then ge = false; break end
          if sb > sa then gt = true end
        end
        if ge and gt then return true end
      end
    end
    return false
  end
  local out = {}
  for _, m in ipairs(pool) do
    if wins[m.id] and not dominated(m) then out[m.id] = wins[m.id] end
  end
  return out
end

local function sorted_ids(set)
  local ids = {}
  for id in pairs(set) do ids[#ids + 1] = id end
  table.sort(ids)
  return ids
end

-- GEPA's parent sampling: a member of the front, with a chance proportional
-- to the number of cases it is best on; the seed when no member wins any
-- case (nothing passes yet).
function M.select_parent(pool, options)
  local front = M.front(pool)
  local ids = sorted_ids(front)
  if #ids == 0 then return { parent = pool[1].id, reason = "no member passes any case: improve the seed" } end
  local total = 0
  for _, id in ipairs(ids) do total = total + front[id] end
  local x = (tonumber(options.draw) or 0) * total
  for _, id in ipairs(ids) do
    x = x - front[id]
    if x < 0 then
      return { parent = id, front = ids, reason = string.format("member %d is best on %d case(s)", id, front[id]) }
    end
  end
  return { parent = ids[#ids], front = ids }
end

local function total(scores)
  local t = 0
  for _, s in ipairs(scores) do t = t + (tonumber(s) or 0) end
  return t
end

-- A child joins the pool only if it strictly improves the minibatch over the
-- best of its parents (GEPA's acceptance test).
function M.accept_child(child, parents, options)
  local best = nil
  for _, p in ipairs(parents) do
    local t = total(p.scores)
    if best == nil or t > best then best = t end
  end
  best = best or 0
  local mine = total(child.scores)
  local gain = tonumber(options.min_gain) or 0
  if mine > best + gain then
    return { accept = true, reason = string.format("%g > %g on the minibatch", mine, best) }
  end
  return { accept = false, reason = string.format("%g on the minibatch, its best parent %g", mine, best) }
end

-- Two members of the front (the seed aside) that win on different cases
-- (each passes at least merge_min_wins cases the other fails), the most
-- complementary pair first; {} when there is none. A child may be
-- complementary to its own parent when its edit lost what the parent had,
-- so lineage does not rule a pair out: complementarity does.
function M.pick_merge(pool, options)
  local front = sorted_ids(M.front(pool))
  local byid = {}
  for _, m in ipairs(pool) do byid[m.id] = m end
  local need = tonumber(options.merge_min_wins) or 1
  local best, pair = -1, nil
  for i = 1, #front do
    for j = i + 1, #front do
      local a, b = byid[front[i]], byid[front[j]]
      if a.id ~= 0 and b.id ~= 0 then
        local aw, bw = 0, 0
        for k = 1, math.max(#a.scores, #b.scores) do
          local sa, sb = tonumber(score(a, k)) or 0, tonumber(score(b, k)) or 0
          if sa > sb then aw = aw + 1 elseif sb > sa then bw = bw + 1 end
        end
        if aw >= need and bw >= need and math.min(aw, bw) > best then best, pair = math.min(aw, bw), { a.id, b.id } end
      end
    end
  end
  if not pair then return {} end
  return { a = pair[1], b = pair[2], reason = string.format("each wins %d case(s) the other loses", best) }
end

-- What goes to the gate: members other than the seed on the front, best
-- mean first (ties: the older member), at most options.candidates.
function M.final(pool, options)
  local front = M.front(pool)
  local list = {}
  for _, m in ipairs(pool) do
    if m.id ~= 0 and front[m.id] then list[#list + 1] = { id = m.id, mean = total(m.scores) / math.max(1, #m.scores) } end
  end
  table.sort(list, function(x, y) if x.mean ~= y.mean then return x.mean > y.mean end return x.id < y.id end)
  local ids = {}
  for i = 1, math.min(#list, tonumber(options.candidates) or 3) do ids[i] = list[i].id end
  return { ids = ids }
end

return M
