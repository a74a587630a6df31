-- spec/helpers/stall_proxy.lua — a TCP proxy for specs that can stall: it forwards
-- 127.0.0.1:LISTEN to 127.0.0.1:TARGET both ways, and while the file STALL exists it stops
-- moving bytes (both ways; connections stay open), as a database behind a congested network
-- would look. It exits when the file STOP exists or after MAX_S seconds (bounded, loopback only).
--   lua5.4 spec/helpers/stall_proxy.lua LISTEN TARGET STALL STOP [MAX_S]
local socket = require "socket"

local listen_port, target_port, stall_file, stop_file, max_s =
  tonumber(arg[1]), tonumber(arg[2]), arg[3], arg[4], tonumber(arg[5] or "300")

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() end
  return f ~= nil
end

local server = assert(socket.bind("127.0.0.1", listen_port))
server:settimeout(0)
local peer = {} -- socket -> the other end
local conns = {}
local deadline = socket.gettime() + max_s

local function close_pair(s)
  local o = peer[s]
  for _, c in ipairs({ s, o }) do
    if c then
      c:close()
      peer[c] = nil
      for i = #conns, 1, -1 do if conns[i] == c then table.remove(conns, i) end end
    end
  end
end

while socket.gettime() < deadline and not exists(stop_file) do
  local c = server:accept()
  if c then
    local up = socket.tcp()
    if up:connect("127.0.0.1", target_port) then
      c:settimeout(0)
      up:settimeout(0)
      peer[c], peer[up] = up, c
      conns[#conns + 1] = c
      conns[#conns + 1] = up
    else
      c:close()
    end
  end
  if exists(stall_file) then
    socket.sleep(0.05)
  else
    local readable = socket.select(conns, nil, 0.05)
    for _, s in ipairs(readable or {}) do
      local data, err, partial = s:receive(65536)
      data = data or partial
      if data and #data > 0 and peer[s] then
        local o = peer[s]
        o:settimeout(5)
        o:send(data)
        o:settimeout(0)
      end
      if err == "closed" then close_pair(s) end
    end
  end
end
for _, c in ipairs(conns) do c:close() end
server:close()
