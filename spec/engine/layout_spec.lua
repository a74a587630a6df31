-- The rooms of engine/ (docs/architecture.md): each folder is a subsystem on
-- a floor; a file may include its own room and rooms on lower floors, never
-- one above or a neighbour on its own floor; every file opens with the line
-- saying what it owns; the Makefile builds every room; the architecture page
-- names every file.
local engine = require "spec.helpers.engine"

-- the floors, ground first (docs/architecture.md draws the same picture)
local FLOORS = {
  base = 0, net = 1, store = 1, script = 2, llm = 3, conf = 4, loop = 5, api = 6, cli = 7, fake = 8,
}

local function lines_of(cmd)
  local p = io.popen(cmd)
  local out = {}
  for l in p:lines() do out[#out + 1] = l end
  p:close()
  return out
end

local function sources()
  return lines_of("cd " .. engine.shell_quote(engine.root) .. " && ls engine/*/*.c engine/*/*.h | grep -v '^engine/tests/'")
end

describe("the rooms of engine/", function()
  it("are the rooms the floors name, and nothing is left loose in engine/", function()
    local rooms = lines_of("cd " .. engine.shell_quote(engine.root) .. " && ls -d engine/*/ | sed 's|engine/||; s|/$||'")
    for _, r in ipairs(rooms) do
      if r ~= "tests" then assert.is_not_nil(FLOORS[r], "engine/" .. r .. "/ is on no floor") end
    end
    local loose = lines_of("cd " .. engine.shell_quote(engine.root) .. " && ls engine/*.c engine/*.h 2>/dev/null")
    assert.same({ "engine/main.c" }, loose)
    local mk = engine.read_file(engine.root .. "/Makefile")
    local listed = mk:match("\nROOMS := ([^\n]+)")
    for r in pairs(FLOORS) do assert.matches("%f[%w]" .. r .. "%f[%W]", listed, nil, false, "Makefile's ROOMS lacks " .. r) end
  end)

  it("include only their own room and the floors below", function()
    local up = {}
    for _, f in ipairs(sources()) do
      local room = f:match("^engine/([a-z]+)/")
      local text = engine.read_file(engine.root .. "/" .. f)
      for other in text:gmatch('#include "([a-z]+)/') do
        assert.is_not_nil(FLOORS[other], f .. " includes a room on no floor: " .. other)
        if other ~= room and FLOORS[other] >= FLOORS[room] then
          up[#up + 1] = string.format("%s (floor %d) includes %s/ (floor %d)", f, FLOORS[room], other, FLOORS[other])
        end
      end
      -- headers of the engine are named by their room, never bare
      for bare in text:gmatch('#include "([a-z_]+%.h)"') do
        up[#up + 1] = f .. " includes " .. bare .. " without its room"
      end
    end
    assert.same({}, up)
  end)

  it("open each file with one line saying what it owns", function()
    local bad = {}
    for _, f in ipairs(sources()) do
      local first = (engine.read_file(engine.root .. "/" .. f) or ""):match("^[^\n]*")
      local name = f:match("([^/]+)$")
      if not first:find("/* " .. name .. " — ", 1, true) then bad[#bad + 1] = f .. ": " .. first end
    end
    assert.same({}, bad)
  end)

  it("are all named on the architecture page", function()
    local doc = engine.read_file(engine.root .. "/docs/architecture.md")
    local missing = {}
    for _, f in ipairs(sources()) do
      if f:match("%.c$") and not doc:find("`" .. f .. "`", 1, true) then missing[#missing + 1] = f end
    end
    assert.same({}, missing)
  end)
end)
