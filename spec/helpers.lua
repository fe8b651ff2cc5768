-- spec/helpers.lua: the busted specs drive the REAL policy host. chatd's
-- core/script*.c (with ratelimit, log, metrics, util) is built as the Lua C
-- module build/chathost.so (spec/chathost.c, CMake target `chathost`); it
-- creates its own sandboxed lua_State exactly as chatd does, so return
-- conversion, phase rules, budgets, the sandbox and the token buckets under
-- test are the production ones. This file only builds contexts, keeps a
-- clock, and reads logs and metrics.
--
--   local helpers = require "spec.helpers"
--   local P = assert(helpers.load({ dir = "scripts", env = { CHAT_MAX_BODY = "10" } }))
--   assert.same({ verdict = "replace", body = "hi" }, P:message("  hi "))
--   assert.equal("forbidden", P:call("on_join", { room = "private-x" }).code)
--   P.clock:advance(2000)          -- ms, the ctx.now of the next calls
local cjson = require "cjson"

local H = {}

-- The repo root, from this file's path (busted runs from the root, but do
-- not depend on it).
local src = debug.getinfo(1, "S").source:gsub("^@", "")
H.root = src:match("^(.*)/spec/helpers%.lua$") or (src == "spec/helpers.lua" and ".") or "."
H.build = os.getenv("CHATD_BUILD_DIR") or (H.root .. "/build")

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

if not exists(H.build .. "/chathost.so") then
  error("spec/helpers.lua: " .. H.build .. "/chathost.so is not built; the specs run the real " ..
        "policy host. Build it first:\n  cmake -S . -B build && cmake --build build -j2\n" ..
        "(or set CHATD_BUILD_DIR to a build folder)", 0)
end
package.cpath = H.build .. "/?.so;" .. package.cpath
local chathost = require "chathost"
H.chathost = chathost

function H.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- tests/fixtures/policies/<name>
function H.fixture(name) return H.root .. "/tests/fixtures/policies/" .. name end

H.hooks = { "on_connect", "on_join", "on_leave", "on_message", "on_typing", "on_presence",
            "on_history", "on_disconnect", "on_read", "on_retention", "on_edit", "on_delete",
            "on_react" }
H.notify = { on_leave = true, on_disconnect = true }

-- ---------- temporary folders ----------

local lfs = require "lfs"
local tmpdirs = {}

function H.rmtree(path)
  local attr = lfs.symlinkattributes(path)
  if not attr then return end
  if attr.mode == "directory" then
    for e in lfs.dir(path) do
      if e ~= "." and e ~= ".." then H.rmtree(path .. "/" .. e) end
    end
    lfs.rmdir(path)
  else
    os.remove(path)
  end
end

-- removed when the spec process ends (with os.execute: at lua_close, C
-- modules such as lfs may already be unloaded when this finalizer runs)
local reaper = newproxy(true)
getmetatable(reaper).__gc = function()
  for d in pairs(tmpdirs) do
    if d:match("^[%w/_.-]+$") then os.execute("rm -rf '" .. d .. "'") end
  end
end
H._reaper = reaper

function H.tmpdir()
  local p = os.tmpname()         -- creates a file: make it a folder
  os.remove(p)
  assert(lfs.mkdir(p))
  tmpdirs[p] = true
  return p
end

-- copies the folder `from` (recursively) into a new temporary folder
function H.copy_dir(from, to)
  to = to or H.tmpdir()
  for e in lfs.dir(from) do
    if e ~= "." and e ~= ".." then
      local a, b = from .. "/" .. e, to .. "/" .. e
      if lfs.attributes(a, "mode") == "directory" then
        assert(lfs.mkdir(b))
        H.copy_dir(a, b)
      else
        H.write(b, assert(H.read(a)))
      end
    end
  end
  return to
end

function H.write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- ---------- clock, logs, metrics ----------

-- A clock in ms that only moves when told to (ctx.now, chat.now() and the
-- token buckets of the host follow it).
function H.clock(start)
  local c = { now = start or 1700000000000 }
  function c:advance(ms) self.now = self.now + ms end
  function c:set(ms) self.now = ms end
  return c
end

-- Log records the host wrote (to stderr, captured by the module) since the
-- last H.clear_logs(): { level, module, msg, line }.
local records = {}
function H.logs()
  for _, r in ipairs(chathost.logs()) do records[#records + 1] = r end
  return records
end
function H.clear_logs()
  H.logs()
  records = {}
end

-- The records of H.logs() whose msg matches a Lua pattern.
function H.logged(pattern)
  local out = {}
  for _, r in ipairs(H.logs()) do
    if r.msg and r.msg:find(pattern) then out[#out + 1] = r end
  end
  return out
end

-- Value of one series in the host's Prometheus text (nil when absent).
--   H.metric("chat_script_errors_total", 'hook="on_message"')
function H.metric(name, labels)
  local want = labels and (name .. "{" .. labels .. "}") or name
  for line in chathost.metrics():gmatch("[^\n]+") do
    if line:sub(1, 1) ~= "#" then
      local series, value = line:match("^(%S+) (%S+)$")
      if series == want then return tonumber(value) end
    end
  end
  return nil
end

-- ---------- the host ----------

-- Calls refused as "too slow" that used almost no CPU were descheduled on a
-- busy machine (the budget is wall-clock, and the product is right to
-- refuse them): they are retried, at most 3 times, and counted here.
H.retries = 0

local function slow_by_load(r, stats)
  return r and r.verdict == "reject" and r.reason == "policy script too slow" and stats.cpu_ms < 25
end

local P = {}
P.__index = P

-- H.load(opts) -> policy P, or nil, "file:line: message" (script_new's error)
--   opts.dir   folder (default: the repo's scripts/)
--   opts.env   { CHAT_X = "value" | false }, set around every call into the host
--   opts.now   start of the clock (ms); opts.node node id
function H.load(opts)
  opts = opts or {}
  local dir = opts.dir or (H.root .. "/scripts")
  local host, err = chathost.new(dir, opts.node or "test-node", opts.env)
  if not host then return nil, err end
  local self = setmetatable({ host = host, dir = dir, clock = H.clock(opts.now),
                              node = opts.node or "test-node" }, P)
  -- P.config.key: the core's view of the setting (script_setting), nil when unset
  self.config = setmetatable({}, {
    __index = function(_, k) return self:setting(k) end,
    __newindex = function() error("P.config is read-only", 2) end,
  })
  return self
end

-- ctx as the core fills script_ctx; over replaces fields, `false` leaves
-- one out (NULL in C); claims may be a table (sent as JSON) or JSON text.
function P:ctx(over)
  local c = { user = "u1", name = "User One", claims = {}, room = "lobby", node = self.node,
              now = self.clock.now }
  for k, v in pairs(over or {}) do
    if k ~= "expect_slow" then
      if v == false then c[k] = nil else c[k] = v end
    end
  end
  if type(c.claims) == "table" then c.claims = cjson.encode(c.claims) end
  return c
end

-- P:call(hook, over, arg) -> result, stats
--   result: what C gets (script_result): { verdict = "accept"|"replace"|"reject",
--   code, reason, body }; nil for on_leave/on_disconnect (void in C).
--   arg: on_message body (string) or { body, id }; on_presence { event, user, name };
--   on_read { seq = N }. on_retention: the room is over.room; the result is
--   { verdict = "accept" | "reject", days = N | nil } (script_on_retention).
--   on_edit / on_delete / on_react: { target, author, id, body, emoji, on }.
--   Calls refused for slowness by a busy machine are retried (see H.retries)
--   unless over.expect_slow.
function P:call(hook, over, arg)
  local expect_slow = over and over.expect_slow
  local a1, a2, a3
  if hook == "on_message" then
    if type(arg) == "table" then a1, a2 = arg.body, arg.id else a1 = arg end
  elseif hook == "on_presence" then
    arg = arg or {}
    a1, a2, a3 = arg.event, arg.user, arg.name
  elseif hook == "on_read" then
    a1 = string.format("%d", (arg or {}).seq or 0)
  elseif hook == "on_edit" or hook == "on_delete" or hook == "on_react" then
    a1 = arg or {}
  end
  local r, stats
  for try = 1, 4 do
    r, stats = self.host:call(hook, self:ctx(over), a1, a2, a3)
    if expect_slow or try == 4 or not slow_by_load(r, stats) then break end
    H.retries = H.retries + 1
  end
  return r, stats
end

-- shorthand: P:message("body", over, id)
function P:message(body, over, id)
  return self:call("on_message", over, { body = body, id = id or "c1" })
end

-- shorthand: days of history the policy keeps for room, as the retention
-- pass sees them: the hook's number, else config history_days (0 = keep
-- forever); "error" when on_retention failed (the pass keeps the room).
function P:retention(room)
  local r = self:call("on_retention", { room = room, user = false, name = false })
  if r.verdict == "reject" then return "error" end
  if r.days then return r.days end
  return self:setting_num("history_days") or 0
end

-- script_setting_num (fractional values)
function P:setting_num(key)
  local v = self.host:setting_num(key)
  return v
end
-- shorthands for the message-update hooks: u = { target, author, ... }
function P:edit(u, over) return self:call("on_edit", over, u) end
function P:delete(u, over) return self:call("on_delete", over, u) end
function P:react(u, over) return self:call("on_react", over, u) end

function P:setting(key, default)
  local none = -4503599627370496        -- a value no setting has: "unset"
  local v = self.host:setting(key, default or none)
  if v == none then return nil end
  return v
end

function P:reload() return self.host:reload() end
function P:version() return self.host:version() end
function P:close() self.host:close() end

-- ---------- modules of a policy folder, called inside the host ----------

-- H.modules(opts) -> M with M.require(name) returning a proxy whose
-- functions run inside the real host: the folder (opts.dir, default
-- scripts/) is copied with its policy.lua replaced by the probe fixture,
-- so every call goes through the sandbox, the budgets and chat.json.
--   local text = helpers.modules().require("text")
--   text.trim("  a ")  --> "a"
--   text.cpu_s         --> CPU seconds of the last call, measured inside
function H.modules(opts)
  opts = opts or {}
  local dir = H.copy_dir(opts.dir or (H.root .. "/scripts"))
  H.write(dir .. "/policy.lua", assert(H.read(H.fixture("probe") .. "/policy.lua")))
  local Q = assert(H.load({ dir = dir, env = opts.env }))
  local M = { policy = Q }
  function M.require(name)
    local proxy = {}
    return setmetatable(proxy, { __index = function(_, f)
      if f == "cpu_s" then return rawget(proxy, "_cpu_s") end
      return function(...)
        local n = select("#", ...)
        local a = {}
        for i = 1, n do
          local v = select(i, ...)
          if v == nil then v = cjson.null end
          a[tostring(i)] = v
        end
        local r = Q:message(cjson.encode({ m = name, f = f, n = n, a = a }))
        if r.verdict ~= "replace" then
          local last = H.logs()[#H.logs()]
          error(name .. "." .. f .. ": " .. tostring(r.code) .. ": " .. tostring(r.reason) ..
                (last and (" (log: " .. last.line .. ")") or ""), 2)
        end
        local out = cjson.decode(r.body)
        rawset(proxy, "_cpu_s", out.cpu_s)
        local res = {}
        for i = 1, out.n do
          local v = out.r[tostring(i)]
          if v == cjson.null then v = nil end
          res[i] = v
        end
        if not out.ok then error(name .. "." .. f .. ": " .. tostring(res[1]), 2) end
        return unpack(res, 1, out.n)
      end
    end })
  end
  return M
end

return H
