-- Default room policy of chatd (see docs/scripting.md).
-- The host calls the on_* hooks below; each returns nil/true to accept,
-- false, code, reason to refuse, and on_message may return a new body.
-- Every number in M.config can be overridden with env CHAT_<KEY>.
local text = require "text"
local access = require "access"

local M = {}

M.config = {
  -- timings the core reads (ms)
  heartbeat_ms = 10000,
  presence_ttl_ms = 30000,
  typing_ttl_ms = 5000,
  max_rooms_per_conn = 32,
  -- message rules
  max_body = 4000,          -- characters (UTF-8 code points) after trimming
  message_rate = 20,        -- messages per second per user ...
  message_burst = 40,       -- ... with bursts up to this many
  typing_interval_ms = 2000, -- at most one typing event per user and room per interval
  -- message updates (edits share the message rate and body rules)
  react_rate = 10,          -- reactions per second per user ...
  react_burst = 30,         -- ... with bursts up to this many
  -- room access
  private_prefix = "private-",
  admin_role = "admin",
  -- read state and history (issue 14)
  read_receipts = true,     -- tell the room who read how far (the `read` receipt frames)
  history_days = 0,         -- delete messages older than this many days (0 = keep forever)
  ephemeral_prefix = "tmp-", -- rooms named tmp-* keep ...
  ephemeral_days = 1,       -- ... this many days of history (on_retention)
  -- host budgets
  hook_budget_ms = 50,
  memory_limit_mb = 64,
}

local function cfg() return chat.config end

-- Rule: room access by JWT claims (allow-list `rooms`, private-* rooms).
local function check_room(ctx)
  local ok, why = access.room_allowed(ctx.claims, ctx.room, cfg())
  if not ok then return false, "forbidden", why end
  return true
end

-- Connect: the URL's room is checked like a join.
function M.on_connect(ctx)
  return check_room(ctx)
end

function M.on_join(ctx)
  return check_room(ctx)
end

-- History over HTTP: same access rule as joining the room.
function M.on_history(ctx)
  return check_room(ctx)
end

-- The rules of a body (a message's, or an edit's new one): not empty,
-- trimmed, at most max_body characters, within the user's message rate.
-- Returns the body to publish, or false, code, reason.
local function check_body(ctx, body)
  local c = cfg()
  -- Rule: no empty or whitespace-only messages.
  local i, j = text.bounds(body)
  if not i then return false, "rejected", "empty message" end
  -- Rule: trim surrounding whitespace (replaces the body when it changes).
  if i > 1 or j < #body then body = body:sub(i, j) end
  -- Rule: body length limit, in characters.
  if not text.within(body, c.max_body) then
    return false, "rejected", "message too long (max " .. c.max_body .. " characters)"
  end
  -- Rule: per-user message rate (token bucket kept by the host). Messages
  -- of the server API (ctx.source == "api") come from the application's
  -- backend, limited per key by CHAT_API_RATE instead.
  if ctx.source ~= "api" and not chat.ratelimit("msg:" .. ctx.user, c.message_rate, c.message_burst) then
    return false, "rate_limited", "too many messages, slow down"
  end
  return body
end

function M.on_message(ctx, msg)
  local body, code, why = check_body(ctx, msg.body)
  if not body then return false, code, why end
  if body ~= msg.body then return body end
end

-- Message updates (docs/scripting.md "Message updates"); u.author is the
-- author of the target message, u.target its seq.
local function is_admin(ctx)
  return type(ctx.claims) == "table" and ctx.claims.role == cfg().admin_role
end

-- Rule: only the author edits a message; the new body follows the
-- message rules (and may be trimmed the same way).
function M.on_edit(ctx, u)
  if u.author ~= ctx.user then
    return false, "forbidden", "only the author can edit a message"
  end
  local body, code, why = check_body(ctx, u.body)
  if not body then return false, code, why end
  if body ~= u.body then return body end
end

-- Rule: the author deletes their own messages; a token with the admin
-- role deletes any.
function M.on_delete(ctx, u)
  if u.author == ctx.user or is_admin(ctx) then return true end
  return false, "forbidden", "only the author or an admin can delete a message"
end

-- Rule: anyone in the room reacts, within a per-user reaction rate.
function M.on_react(ctx, u)
  local c = cfg()
  if not chat.ratelimit("react:" .. ctx.user, c.react_rate, c.react_burst) then
    return false, "rate_limited", "too many reactions, slow down"
  end
end

-- Rule: one typing event per user and room per typing_interval_ms; the core
-- drops the frame silently when this refuses.
function M.on_typing(ctx)
  local c = cfg()
  local key = "typing:" .. ctx.user .. ":" .. (ctx.room or "")
  if not chat.ratelimit(key, 1000 / c.typing_interval_ms, 1) then
    return false, "rate_limited", "typing too often"
  end
end

-- Read receipts: on unless config.read_receipts is false (the core checks
-- that switch before calling here); private rooms never tell who read what.
-- The read itself is always stored and acked.
function M.on_read(ctx, read)
  if text.starts_with(ctx.room or "", cfg().private_prefix) then return false end
end

-- Retention per room: rooms named "<ephemeral_prefix>..." keep
-- ephemeral_days of history; every other room config.history_days (nil
-- here: the core then uses config.history_days).
function M.on_retention(room)
  local c = cfg()
  if text.starts_with(room, c.ephemeral_prefix) then return c.ephemeral_days end
end

-- Checked by the host before a reload is swapped in.
function M.selftest()
  if text.trim("  hi \n") ~= "hi" then return false, "trim" end
  if text.bounds(" \t\n ") ~= nil then return false, "bounds" end
  if text.ulen("h\195\169llo") ~= 5 then return false, "ulen" end
  local c = { private_prefix = "private-", admin_role = "admin" }
  if not access.room_allowed({}, "lobby", c) then return false, "public room" end
  if access.room_allowed({}, "private-x", c) then return false, "private room" end
  if not access.room_allowed({ role = "admin" }, "private-x", c) then return false, "admin" end
  if access.room_allowed({ rooms = { "a" } }, "b", c) then return false, "allow-list" end
  if not access.room_allowed({ rooms = { "team-*" } }, "team-1", c) then return false, "wildcard" end
  if not text.starts_with("tmp-x", "tmp-") or text.starts_with("lobby", "tmp-") then
    return false, "starts_with"
  end
  if type(chat.config.ephemeral_days) ~= "number" or chat.config.ephemeral_days < 0 then
    return false, "config.ephemeral_days must be a number >= 0"
  end
  for _, k in ipairs({ "max_body", "message_rate", "message_burst", "typing_interval_ms",
                       "react_rate", "react_burst" }) do
    if type(chat.config[k]) ~= "number" or chat.config[k] <= 0 then
      return false, "config." .. k .. " must be a positive number"
    end
  end
  return true
end

return M
