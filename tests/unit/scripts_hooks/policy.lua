-- Fixture for tests/unit/test_script.c: every hook, behaviour chosen by the
-- room name or the message body.
local util = require "util"
local M = {}
M.config = { max_body = 100, heartbeat_ms = 10000, greeting = "hi", flag = false,
             hook_budget_ms = 50, memory_limit_mb = 32 }

local leaves, disconnects = 0, 0

local function by_room(ctx)
  local r = ctx.room
  if r == "deny" then return false, "forbidden", "no entry" end
  if r == "deny-default" then return false end
  if r == "boom" then error("boom in " .. ctx.user) end
  if r == "loop" then while true do end end
  if r == "bad-return" then return 42 end
  if r == "string-return" then return "yes" end
  return true
end
M.on_connect = by_room
M.on_join = by_room
M.on_typing = by_room
M.on_history = by_room

function M.on_presence(ctx, ev)
  if ev.event == "leave" and ev.user == "ghost" then return false, "suppressed" end
  if ev.event ~= "join" and ev.event ~= "leave" then return false, "bad_event", ev.event end
  if ev.name ~= "Name of " .. ev.user then return false, "bad_name", tostring(ev.name) end
  return true
end

function M.on_leave(ctx)
  leaves = leaves + 1
  if ctx.room == "boom" then error("leave boom") end
  if ctx.room == "rl" then chat.ratelimit("x", 1, 1) end
end

function M.on_disconnect(ctx)
  disconnects = disconnects + 1
  if ctx.room == "loop" then while true do end end
end

function M.on_message(ctx, msg)
  local b = msg.body
  if b == "replace" then return "replaced:" .. (msg.id or "noid") end
  if b == "reject" then return false, "rejected", "nope" end
  if b == "reject-weird" then return false, "Rate Limited!", "line1\nline2" end
  if b == "same" then return "same" end
  if b == "true" then return true end
  if b == "claims" then
    return "role=" .. tostring(ctx.claims.role) .. " n=" .. #(ctx.claims.rooms or {}) ..
           " node=" .. ctx.node .. " now=" .. ctx.now .. " name=" .. ctx.name ..
           " room=" .. tostring(ctx.room) .. " chatnow=" .. chat.now()
  end
  if b == "config" then
    return "greeting=" .. chat.config.greeting .. " max_body=" .. chat.config.max_body ..
           " flag=" .. tostring(chat.config.flag)
  end
  if b == "config-write" then chat.config.max_body = 1 end
  if b == "counts" then return "leaves=" .. leaves .. " disconnects=" .. disconnects end
  if b == "loop" then while true do end end
  if b == "pcall-loop" then
    while true do pcall(function() while true do end end) end
  end
  if b == "xpcall-loop" then
    while true do xpcall(function() while true do end end, function() while true do end end) end
  end
  if b == "handler-loop" then    -- a plain error, then a handler that never returns
    xpcall(function() error("x") end, function() while true do end end)
  end
  if b == "handler-xpcall-loop" then   -- handlers that nest xpcall and swallow everything
    local function h() return select(2, xpcall(function() error("y") end, h)) end
    while true do xpcall(function() error("x") end, h) end
  end
  if b == "nested-pcall-loop" then     -- deep pcall nesting, each level loops after a catch
    local function f(n) if n > 0 then pcall(f, n - 1) end while true do end end
    f(150)
  end
  if b == "sort-loop" then             -- Lua called back from C
    local t = {} for i = 1, 50 do t[i] = 51 - i end
    while true do pcall(table.sort, t, function(x, y) while true do end end) end
  end
  if b == "gsub-loop" then
    while true do pcall(string.gsub, "aaaa", "a", function() while true do end end) end
  end
  if b == "tostring-loop" then
    local o = setmetatable({}, { __tostring = function() while true do end end })
    while true do pcall(error, o) pcall(tostring, o) end
  end
  if b == "bomb" then
    local t = {} while true do t[#t + 1] = string.rep('x', 1e6) .. #t end
  end
  if b == "pcall-bomb" then
    local t = {}
    while true do pcall(function() t[#t + 1] = string.rep('x', 1e6) .. #t end) end
  end
  if b == "error" then error("kaboom") end
  if b == "rl" then return tostring(chat.ratelimit("k:" .. ctx.user, 1, 2)) end
  if b == "util" then return util.shout("x") end
  if b == "json" then
    return chat.json.encode({ a = chat.json.decode('[1,2,3]')[3] })
  end
  if b:sub(1, 5) == "eval:" then
    local f, e = loadstring(b:sub(6))
    if not f then return "load-error:" .. tostring(e) end
    local ok, r = pcall(f)
    return (ok and "ok:" or "err:") .. tostring(r)
  end
  return nil
end

function M.selftest()
  return util.shout("a") == "A!"
end

return M
