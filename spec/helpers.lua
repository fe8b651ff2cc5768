-- spec/helpers.lua: loads a policy folder the way core/script.c does, for
-- busted specs. Same sandbox (the allow-lists are parsed out of
-- core/script.c, so they cannot drift), same sibling-only `require`, same
-- env overrides and config checks, same return conventions; the `chat` API
-- is a fake with a controllable clock and a token-bucket rate limiter that
-- follows core/ratelimit.c (and can be forced to true/false).
-- Differences from the host: no time/memory budgets, and string methods
-- ("x"):upper() resolve to the real string table of the test process.
local cjson = require "cjson"

local H = {}

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end
H.read = read

-- Allow-lists from core/script.c: static const char *const SB_X[] = { "a", ..., NULL };
local function c_list(src, name)
  local body = src:match(name .. "%[[%w_]*%]%s*=%s*(%b{})")
  assert(body, "no " .. name .. " in core/script.c")
  local out = {}
  for n in body:gmatch('"([%w_]+)"') do out[#out + 1] = n end
  return out
end

local csrc = assert(read("core/script.c"), "run busted from the repo root")
H.allow = {
  base = c_list(csrc, "SB_BASE"),
  string = c_list(csrc, "SB_STRING"),
  table = c_list(csrc, "SB_TABLE"),
  math = c_list(csrc, "SB_MATH"),
  os = c_list(csrc, "SB_OS"),
  bit = c_list(csrc, "SB_BIT"),
}
H.int_keys = c_list(csrc, "INT_KEYS")
H.hooks = c_list(csrc, "HOOK_NAMES")
H.notify = { on_leave = true, on_disconnect = true }
H.validate = {}
for _, h in ipairs(H.hooks) do if not H.notify[h] then H.validate[h] = true end end

-- A clock in ms that only moves when told to.
function H.clock(start)
  local c = { now = start or 1700000000000 }
  function c:advance(ms) self.now = self.now + ms end
  function c:set(ms) self.now = ms end
  return c
end

-- Token buckets as in core/ratelimit.c (new bucket starts full; refill at
-- rate tokens/s up to burst; one token per call).
function H.ratelimiter(clock)
  local rl = { buckets = {}, calls = {}, force = nil }
  function rl:take(key, rate, burst)
    assert(type(key) == "string" and #key >= 1 and #key <= 256 and rate > 0 and burst >= 1,
           "chat.ratelimit: bad arguments")
    self.calls[#self.calls + 1] = { key = key, rate = rate, burst = burst }
    if self.force ~= nil then return self.force end
    local now = clock.now
    local b = self.buckets[key]
    if not b then
      b = { tokens = burst, last = now }
      self.buckets[key] = b
    else
      if now > b.last then
        b.tokens = math.min(burst, b.tokens + (now - b.last) * rate / 1000)
        b.last = now
      end
      if b.tokens > burst then b.tokens = burst end
    end
    if b.tokens >= 1 then b.tokens = b.tokens - 1 return true end
    return false
  end
  function rl:reset() self.buckets, self.calls, self.force = {}, {}, nil end
  return rl
end

local function sanitize_code(s)
  if type(s) ~= "string" then return "rejected" end
  local c = s:lower():gsub("[^%w_]", ""):sub(1, 31)
  return c ~= "" and c or "rejected"
end

local function env_name(key)
  return "CHAT_" .. key:upper():gsub("[^%w]", "_")
end
H.env_name = env_name

-- H.load(opts) -> policy object P, or nil, "file:line: message"
--   opts.dir  folder (default "scripts"); opts.env table of CHAT_* values
--   opts.now  start of the clock (ms)
function H.load(opts)
  opts = opts or {}
  local dir = opts.dir or "scripts"
  local P = { dir = dir, clock = H.clock(opts.now), logs = {}, phase = "init" }
  P.rl = H.ratelimiter(P.clock)
  local E = {}
  local loaded = {}
  local Mref

  local function allowed(what, phases)
    if not phases[P.phase] then
      error(what .. " is not allowed " .. (P.phase == "load" and "at load time"
            or P.phase == "selftest" and "in selftest" or "in " .. P.phase), 3)
    end
  end
  local ANY = { load = true, selftest = true }
  local HOOKS, VALIDATE = { selftest = true }, {}
  for _, h in ipairs(H.hooks) do ANY[h] = true HOOKS[h] = true end
  for h in pairs(H.validate) do VALIDATE[h] = true end

  for _, n in ipairs(H.allow.base) do E[n] = _G[n] end
  local libs = { string = string, table = table, math = math, os = os, bit = require "bit" }
  for lib, src in pairs(libs) do
    local t = {}
    for _, n in ipairs(H.allow[lib]) do t[n] = src[n] end
    E[lib] = t
  end
  E.pcall, E.xpcall = pcall, xpcall
  local function load_text(s, name)
    if type(s) ~= "string" then error("bad argument #1 to 'load' (string expected)", 2) end
    if s:byte(1) == 27 then return nil, "attempt to load a binary chunk (refused by the sandbox)" end
    local f, e = loadstring(s, name or "=(load)")
    if not f then return nil, e end
    return setfenv(f, E)
  end
  E.load, E.loadstring = load_text, load_text
  E.print = function(...)
    local t = {}
    for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
    P.logs[#P.logs + 1] = { level = "info", msg = table.concat(t, "\t") }
  end
  local json = { encode = cjson.encode, decode = cjson.decode, null = cjson.null }
  E.require = function(name)
    assert(type(name) == "string", "bad argument #1 to 'require'")
    if loaded[name] == false then error('require "' .. name .. '": loop while loading the module', 2) end
    if loaded[name] ~= nil then return loaded[name] end
    if name == "cjson" then return json end
    if #name > 64 or not name:match("^[%w_%-]+[%w_%.%-]*$") or name:find("..", 1, true)
       or name:sub(-1) == "." then
      error('require "' .. name .. '": only modules of the scripts folder can be required', 2)
    end
    local rel = name:gsub("%.", "/")
    local src = read(dir .. "/" .. rel .. ".lua")
    if not src then error('require "' .. name .. '": no ' .. rel .. ".lua in the scripts folder", 2) end
    if src:byte(1) == 27 then error('require "' .. name .. '": binary chunks are refused', 2) end
    local f, e = loadstring(src, "@" .. rel .. ".lua")
    if not f then error(e, 0) end
    setfenv(f, E)
    loaded[name] = false
    local r = f(name)
    if r == nil then r = true end
    loaded[name] = r
    return r
  end
  local config_proxy = setmetatable({}, {
    __index = function(_, k)
      allowed("chat.config", HOOKS)
      return Mref and Mref.config[k]
    end,
    __newindex = function() error("chat.config is read-only (set M.config or CHAT_* env vars)", 2) end,
    __metatable = false,
  })
  E.chat = {
    log = function(level, msg)
      allowed("chat.log", ANY)
      assert(({ debug = 1, info = 1, warn = 1, error = 1 })[level],
             "chat.log: unknown level \"" .. tostring(level) .. "\" (debug, info, warn, error)")
      assert(type(msg) == "string" or type(msg) == "number", "chat.log: message must be a string")
      P.logs[#P.logs + 1] = { level = level, msg = tostring(msg) }
    end,
    now = function()
      allowed("chat.now", ANY)
      return P.clock.now
    end,
    ratelimit = function(key, rate, burst)
      allowed("chat.ratelimit", VALIDATE)
      if burst == nil then burst = rate < 1 and 1 or rate end
      return P.rl:take(key, rate, burst)
    end,
    json = json,
    config = config_proxy,
  }
  E._G = E
  P.env = E

  -- load + checks, as op_load() in core/script.c
  P.phase = "load"
  local ok, M = pcall(E.require, "policy")
  if not ok then return nil, tostring(M) end
  local function fail(msg) return nil, "policy.lua: " .. msg end
  if type(M) ~= "table" then return fail("must return a table (got " .. type(M) .. ")") end
  for _, h in ipairs(H.hooks) do
    if M[h] ~= nil and type(M[h]) ~= "function" then
      return fail("M." .. h .. " must be a function (got " .. type(M[h]) .. ")")
    end
  end
  if M.selftest ~= nil and type(M.selftest) ~= "function" then
    return fail("M.selftest must be a function (got " .. type(M.selftest) .. ")")
  end
  if M.config == nil then M.config = {} end
  if type(M.config) ~= "table" then return fail("M.config must be a table (got " .. type(M.config) .. ")") end
  local env = opts.env or {}
  local is_int = {}
  for _, k in ipairs(H.int_keys) do is_int[k] = true end
  for k, v in pairs(M.config) do
    if type(k) ~= "string" then return fail("M.config keys must be strings (got " .. type(k) .. ")") end
    local t = type(v)
    if t ~= "number" and t ~= "string" and t ~= "boolean" then
      return fail("config." .. k .. " is a " .. t .. " (number, string or boolean expected)")
    end
    local en = env_name(k)
    local ev = env[en]
    if ev ~= nil then
      if t == "number" then
        local n = tonumber(ev)
        if not n then return nil, en .. '="' .. ev .. '": not a number' end
        M.config[k] = n
      elseif t == "boolean" then
        local b = ({ ["1"] = true, ["true"] = true, yes = true, on = true,
                     ["0"] = false, ["false"] = false, no = false, off = false })[ev]
        if b == nil then return nil, en .. '="' .. ev .. '": not a boolean' end
        M.config[k] = b
      else
        M.config[k] = ev
      end
    end
    if is_int[k] then
      local n = M.config[k]
      if type(n) ~= "number" or n ~= math.floor(n) or n <= 0 or n > 1e12 then
        return fail("config." .. k .. " must be a positive integer")
      end
    end
  end
  Mref = M
  P.M = M
  P.config = M.config
  if M.selftest then
    P.phase = "selftest"
    local sok, r, why = pcall(M.selftest)
    if not sok then return nil, tostring(r) end
    if r ~= true then return fail("selftest failed: " .. tostring(why or "did not return true")) end
  end
  P.phase = "idle"

  -- ctx as the host builds it; overrides replace fields
  function P:ctx(over)
    local c = { user = "u1", name = "User One", claims = {}, room = "lobby", node = "test-node",
                now = self.clock.now }
    for k, v in pairs(over or {}) do c[k] = v end
    return c
  end

  -- P:call(hook, ctx_overrides, arg) -> { verdict = "accept"|"replace"|"reject",
  --   code, reason, body, error } following core/script.c's conversion
  function P:call(hook, over, arg)
    local f = self.M[hook]
    if f == nil then return { verdict = "accept" } end
    local ctx = self:ctx(over)
    if hook == "on_message" and type(arg) == "string" then arg = { body = arg } end
    self.phase = hook
    local res = { pcall(f, ctx, arg) }
    self.phase = "idle"
    local ok, r1, r2, r3 = res[1], res[2], res[3], res[4]
    if not ok then
      self.logs[#self.logs + 1] = { level = "warn", msg = hook .. ": " .. tostring(r1) }
      if H.notify[hook] then return { verdict = "accept", error = tostring(r1) } end
      return { verdict = "reject", code = "script_error", reason = "policy script failed", error = tostring(r1) }
    end
    if H.notify[hook] then return { verdict = "accept" } end
    if r1 == nil or r1 == true then return { verdict = "accept" } end
    if r1 == false then
      return { verdict = "reject", code = sanitize_code(r2),
               reason = type(r3) == "string" and r3:gsub("\n.*", ""):sub(1, 255) or "refused by policy" }
    end
    if type(r1) == "string" and hook == "on_message" then
      if r1 == arg.body then return { verdict = "accept" } end
      return { verdict = "replace", body = r1 }
    end
    return { verdict = "reject", code = "script_error", reason = "policy script failed",
             error = "returned a " .. type(r1) }
  end

  -- run M.selftest in its phase (as the host does before a swap)
  function P:selftest()
    self.phase = "selftest"
    local r = { pcall(self.M.selftest) }
    self.phase = "idle"
    if not r[1] then error(r[2], 0) end
    return r[2], r[3]
  end

  -- shorthand: P:message("body", ctx_overrides)
  function P:message(body, over) return self:call("on_message", over, { body = body, id = "c1" }) end

  return P
end

-- H.claims(t): a claims table as the core passes it (decoded JSON)
function H.claims(t)
  return cjson.decode(cjson.encode(t))
end

return H
