-- Policy of tests/fuzz/fuzz_script.c: every hook returns values decoded from
-- the fuzz input, so the fuzzer drives the C code that turns a hook's Lua
-- return values into a script_result (core/script.c script_call).
-- The program arrives hex-encoded in ctx.name (the harness also passes the
-- raw bytes as the message body). Byte codes, each value read from the
-- program (missing bytes read as 0):
--   0 nil   1 true   2 false   3 <n> <n bytes>: a string (NULs and all)
--   4 <m1> <m2> <e> <s>: the number (m1*256+m2) * 2^(e-128), sign from s
--   5 NaN   6 <s>: +/-inf   7 <n>: a table of n%8 key/value pairs (nested,
--   depth <= 8)   8 <c> <k>: string.rep(char c, k*64)   9 a function
--   10 the message body (or the room)   11 error(<value>): raise any value
--   12 <k>: busy loop of k*4000 steps (may blow the hook budget)
--   13 <k>: allocate k%8 strings of ~1 MiB (may blow the memory limit)
-- The first byte is the count of returned values (0-4).
local M = {}
-- small budgets: trips are reachable without costing the fuzzer much time
M.config = { hook_budget_ms = 20, memory_limit_mb = 4 }

local function unhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

local function run(ctx, msg)
  local s = unhex(ctx.name or "")
  local pos = 1
  local function byte()
    local b = s:byte(pos) or 0
    pos = pos + 1
    return b
  end
  local value
  value = function(depth)
    local op = byte() % 14
    if op == 0 then return nil
    elseif op == 1 then return true
    elseif op == 2 then return false
    elseif op == 3 then
      local n = byte()
      local v = s:sub(pos, pos + n - 1)
      pos = pos + n
      return v
    elseif op == 4 then
      local m = byte() * 256 + byte()
      local e = byte() - 128
      local sign = byte() % 2 == 0 and 1 or -1
      return sign * math.ldexp(m, e)
    elseif op == 5 then return 0 / 0
    elseif op == 6 then return (byte() % 2 == 0 and 1 or -1) * math.huge
    elseif op == 7 then
      local t, n = {}, byte() % 8
      if depth < 8 then
        for _ = 1, n do
          local k, v = value(depth + 1), value(depth + 1)
          if k ~= nil and k == k then t[k] = v end
        end
      end
      return t
    elseif op == 8 then return string.rep(string.char(byte()), byte() * 64)
    elseif op == 9 then return function() end
    elseif op == 10 then return msg and msg.body or ctx.room
    elseif op == 11 then error(value(depth + 1))
    elseif op == 12 then
      local k, x = byte() * 4000, 0
      for i = 1, k do x = x + i end
      return x
    else
      local k, t = byte() % 8, {}
      for i = 1, k do t[i] = string.rep("m", 1048576 - i) end
      return #t
    end
  end
  local n = byte() % 5
  local out = {}
  for i = 1, n do out[i] = value(0) end
  return unpack(out, 1, n)
end

M.on_connect = run
M.on_join = run
M.on_leave = run
M.on_typing = run
M.on_history = run
M.on_disconnect = run
function M.on_message(ctx, msg) return run(ctx, msg) end
function M.on_presence(ctx, ev) return run(ctx, nil) end

return M
