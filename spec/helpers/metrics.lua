-- spec/helpers/metrics.lua — reads GET /metrics strictly (the Prometheus text
-- format, version 0.0.4), so specs can check exact values by series.
--   local m = require("spec.helpers.metrics").scrape(e)   -- asserts 200
--   m['ratchet_loop_state{prompt="tickets",state="canary"}']  --> 1
local assert = require "luassert"

local M = {}

-- k="v",... where v escapes only \\, \" and \n
local function labels_ok(s)
  local i = 1
  while i <= #s do
    local k = s:match("^[%a_][%w_]*=\"", i)
    if not k then return false end
    i = i + #k
    while true do
      local ch = s:sub(i, i)
      if ch == "" then return false end
      if ch == "\\" then
        if not s:sub(i + 1, i + 1):match('[\\"n]') then return false end
        i = i + 2
      elseif ch == '"' then
        i = i + 1
        break
      else
        i = i + 1
      end
    end
    if s:sub(i, i) == "," then i = i + 1 elseif i <= #s then return false end
  end
  return true
end

-- The text format, read strictly: every sample belongs to the family whose
-- HELP and TYPE came just before; names and labels are well formed; no
-- series twice; histogram buckets are cumulative and end with +Inf = count.
-- Returns { [series] = value } where series is 'name{k="v",...}' as written.
function M.parse(text)
  local series, families, current = {}, {}, nil
  local hist = {}
  assert.equal("\n", text:sub(-1), "the exposition must end with a newline")
  for line in text:gmatch("([^\n]*)\n") do
    if line:match("^# HELP ") then
      local name = assert(line:match("^# HELP ([%a_:][%w_:]*) %S"), "bad HELP: " .. line)
      assert.is_nil(families[name], "family " .. name .. " twice")
      families[name] = {}
      current = name
    elseif line:match("^# TYPE ") then
      local name, ty = line:match("^# TYPE ([%a_:][%w_:]*) (%a+)$")
      assert.equal(current, name, "TYPE without its HELP: " .. line)
      assert.truthy(ty == "counter" or ty == "gauge" or ty == "histogram", line)
      families[name].type = ty
    else
      local name, labels, value = line:match('^([%a_:][%w_:]*)(%b{}) (%S+)$')
      if not name then
        name, value = line:match("^([%a_:][%w_:]*) (%S+)$")
        labels = ""
      end
      assert(name, "not a sample line: " .. line)
      local base = name
      if families[current] and families[current].type == "histogram" then
        base = name:gsub("_bucket$", ""):gsub("_sum$", ""):gsub("_count$", "")
      end
      assert.equal(current, base, "sample " .. name .. " outside its family")
      if families[current].type == "counter" then
        assert.truthy(name:match("_total$"), "a counter's name ends in _total: " .. name)
      end
      if labels ~= "" then assert.truthy(labels_ok(labels:sub(2, -2)), "malformed labels: " .. labels) end
      local v = value == "+Inf" and math.huge or value == "-Inf" and -math.huge or tonumber(value)
      assert(v or value == "NaN", "bad value: " .. line)
      local key = name .. labels
      assert.is_nil(series[key], "series twice: " .. key)
      series[key] = v
      if name:match("_bucket$") then
        local le = labels:match('le="([^"]+)"')
        local rest = labels:gsub(',?le="[^"]+"', "")
        local group = name .. (rest == "{}" and "" or rest)
        local h = hist[group] or { last = -1, prev_le = -math.huge }
        local lev = le == "+Inf" and math.huge or tonumber(le)
        assert.truthy(lev > h.prev_le, "buckets out of order: " .. line)
        assert.truthy(v >= h.last, "buckets not cumulative: " .. line)
        h.last, h.prev_le, h.inf = v, lev, le == "+Inf" and v or h.inf
        hist[group] = h
      end
    end
  end
  for group, h in pairs(hist) do
    local count_key = group:gsub("_bucket", "_count", 1)
    assert.is_not_nil(h.inf, group .. " has no +Inf bucket")
    assert.equal(series[count_key], h.inf, group .. ": +Inf bucket differs from _count")
  end
  return series, families
end


function M.scrape(e, opts)
  local r = e:get("/metrics", opts)
  assert.equal(200, r.status, r.body)
  return M.parse(r.body), r.body
end

return M
