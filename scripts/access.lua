-- access: who may enter which room, from the JWT claims.
--   * `rooms` claim (array of room names, or one string): when present it is
--     an allow-list; an entry ending in "*" allows every room with that
--     prefix ("team-*").
--   * rooms whose name starts with the private prefix ("private-") also need
--     claim role == "admin", or the room in the `rooms` allow-list.
local A = {}

local function listed(list, room)
  if type(list) == "string" then list = { list } end
  if type(list) ~= "table" then return false end
  for _, r in ipairs(list) do
    if type(r) == "string" then
      if r == room then return true end
      if r:sub(-1) == "*" and room:sub(1, #r - 1) == r:sub(1, -2) then return true end
    end
  end
  return false
end
A.listed = listed

-- Returns true, or false plus a one-line reason.
function A.room_allowed(claims, room, cfg)
  if type(room) ~= "string" then return true end   -- nothing room-specific
  claims = type(claims) == "table" and claims or {}
  local list = claims.rooms
  local in_list = list ~= nil and listed(list, room)
  if list ~= nil and not in_list then
    return false, "room " .. room .. " is not in your rooms claim"
  end
  local prefix = cfg.private_prefix
  if prefix ~= "" and room:sub(1, #prefix) == prefix then
    if claims.role ~= cfg.admin_role and not in_list then
      return false, "room " .. room .. " is private"
    end
  end
  return true
end

return A
