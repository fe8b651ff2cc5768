-- The sandbox, the phase rules of the chat.* API and the budgets of the
-- real host (build/chathost.so runs core/script.c): a policy sees exactly
-- what docs/scripting.md lists, and a runaway or a memory bomb is stopped
-- by the C checks chatd runs.
local helpers = require "spec.helpers"
local cjson = require "cjson"

-- "eval:<code>" runs code in on_message of the hooks fixture and answers
-- "ok:<tostring(result)>", "err:<message>" or "load-error:<message>"
local function eval(P, code, over)
  local r = P:message("eval:" .. code, over)
  assert(r.verdict == "replace", "eval refused: " .. tostring(r.code) .. " " .. tostring(r.reason))
  return r.body
end

local function sorted_keys(P, expr)
  local body = eval(P, "local t = {} for k in pairs(" .. expr .. ") do t[#t + 1] = tostring(k) end " ..
                       "table.sort(t) return table.concat(t, ' ')")
  return body:match("^ok:(.*)$")
end

local function words(s)
  local t = {}
  for w in s:gmatch("%S+") do t[#t + 1] = w end
  table.sort(t)
  return table.concat(t, " ")
end

describe("policy sandbox", function()
  local P
  before_each(function()
    P = assert(helpers.load({ dir = helpers.fixture("hooks") }))
    helpers.clear_logs()
  end)
  after_each(function()
    P:close()
  end)

  it("offers exactly the documented globals", function()
    assert.equal(words([[assert error ipairs next pairs rawequal rawget rawset select setmetatable
      getmetatable tonumber tostring type unpack _VERSION _G pcall xpcall load loadstring require
      print chat string table math bit os]]), sorted_keys(P, "_G"))
    assert.equal(words([[byte char find format gmatch gsub len lower match rep reverse sub upper]]),
                 sorted_keys(P, "string"))
    assert.equal(words("concat insert maxn remove sort"), sorted_keys(P, "table"))
    assert.equal(words("clock date time"), sorted_keys(P, "os"))
    assert.equal(words("tobit tohex bnot band bor bxor lshift rshift arshift rol ror bswap"),
                 sorted_keys(P, "bit"))
    assert.equal(words([[abs acos asin atan atan2 ceil cos cosh deg exp floor fmod frexp huge ldexp
      log log10 max min modf pi pow rad random randomseed sin sinh sqrt tan tanh]]), sorted_keys(P, "math"))
    assert.equal(words("config json log now ratelimit"), sorted_keys(P, "chat"))
  end)

  it("has no way out", function()
    local cases = {
      { "return os.execute", "ok:nil" },
      { "return os.execute('touch /tmp/pwned-by-spec')", "err:" },
      { "return io", "ok:nil" },
      { "return io.open('/etc/passwd')", "err:" },
      { "return require('os')", "err:" },
      { "return require('io')", "err:" },
      { "return require('ffi')", "err:" },
      { "return require('jit')", "err:" },
      { "return require('debug')", "err:" },
      { "return require('../v2/policy')", "err:" },
      { "return require('/etc/passwd')", "err:" },
      { "return debug", "ok:nil" },
      { "return ffi", "ok:nil" },
      { "return jit", "ok:nil" },
      { "return package", "ok:nil" },
      { "return package.loadlib('libc.so.6', 'system')", "err:" },
      { "return loadfile", "ok:nil" },
      { "return dofile", "ok:nil" },
      { "return getfenv", "ok:nil" },
      { "return setfenv", "ok:nil" },
      { "return collectgarbage", "ok:nil" },
      { "return newproxy", "ok:nil" },
      { "return module", "ok:nil" },
      { "return coroutine", "ok:nil" },
      { "return string.dump", "ok:nil" },
      { "return ('').dump", "ok:nil" },
      { "return getmetatable('')", "ok:false" },
      { "return getmetatable('').__index", "err:" },
      { "return ('x'):upper()", "ok:X" },
      { "return os.getenv", "ok:nil" },
      { "return os.exit", "ok:nil" },
      { "return os.remove", "ok:nil" },
      { "return rawget(_G, 'io')", "ok:nil" },
      { "return _G == _G._G", "ok:true" },
      { "return load('return io')()", "ok:nil" },          -- load gets the sandbox too
      { "return type(os.time())", "ok:number" },
      { "return chat.json.decode('{\"a\":5}').a", "ok:5" },
      { "return require('cjson').encode({1})", "ok:[1]" },
      { "return select('#', pcall(error))", "ok:2" },
    }
    for _, c in ipairs(cases) do
      local got = eval(P, c[1])
      assert.equal(c[2], got:sub(1, #c[2]), c[1] .. " -> " .. got)
    end
    assert.is_nil(io.open("/tmp/pwned-by-spec"))
  end)

  it("refuses bytecode, from load and from require", function()
    -- bytecode made by the LuaJIT running this spec: the host's own format
    local bc = string.dump(function() return os.getenv("HOME") end)
    local r = P:message("eval:" .. bc)
    assert.equal("replace", r.verdict)
    assert.matches("^load%-error:.*binary chunk", r.body)
    local dir = helpers.copy_dir(helpers.fixture("hooks"))
    helpers.write(dir .. "/compiled.lua", bc)
    local Q = assert(helpers.load({ dir = dir }))
    assert.matches('^err:.*require "compiled": binary chunks are refused',
                   eval(Q, "return require('compiled')"))
    Q:close()
  end)

  it("allows each chat.* call only where the docs say", function()
    local Q = assert(helpers.load({ dir = helpers.fixture("phases") }))
    for _, h in ipairs(helpers.hooks) do
      if h ~= "on_message" then Q:call(h, {}, h == "on_presence" and { event = "join", user = "u",
                                                                       name = "U" } or nil) end
    end
    Q:message("go")
    local seen = cjson.decode(Q:message("report").body)
    local function row(log, now, config, ratelimit, json)
      return { log = log, now = now, config = config, ratelimit = ratelimit, json = json }
    end
    local validation = row(true, true, true, true, true)
    local notification = row(true, true, true, false, true)
    local want = {
      load = row(true, true, false, false, true),
      selftest = row(true, true, true, false, true),
      on_connect = validation, on_join = validation, on_message = validation,
      on_typing = validation, on_presence = validation, on_history = validation,
      on_leave = notification, on_disconnect = notification,
      on_read = validation,
      -- a query of the background retention pass: for no user, no rate limits
      on_retention = notification,
      on_edit = validation, on_delete = validation, on_react = validation,
    }
    for phase, r in pairs(seen) do r.why = nil end
    assert.same(want, seen)
    Q:close()
  end)

  it("names the phase when it refuses a chat.* call", function()
    local Q = assert(helpers.load({ dir = helpers.fixture("phases") }))
    Q:call("on_leave")
    local seen = cjson.decode(Q:message("report").body)
    assert.matches("chat%.ratelimit is not allowed at load time$", seen.load.why)
    assert.matches("chat%.ratelimit is not allowed in selftest$", seen.selftest.why)
    assert.matches("chat%.ratelimit is not allowed in on_leave$", seen.on_leave.why)
    Q:close()
    local R, err = helpers.load({ dir = helpers.fixture("loadconfig") })
    assert.is_nil(R)
    assert.equal("policy.lua:2: chat.config is not allowed at load time", err)
  end)

  describe("budgets", function()
    it("stops runaway loops at the time budget, wherever they loop", function()
      local runaway = { "loop", "pcall-loop", "xpcall-loop", "handler-loop", "handler-xpcall-loop",
                        "nested-pcall-loop", "sort-loop", "gsub-loop", "tostring-loop" }
      for _, b in ipairs(runaway) do
        local e0 = helpers.metric("chat_script_errors_total", 'hook="on_message"')
        local r, st = P:message(b, { expect_slow = true })
        assert.same({ verdict = "reject", code = "script_error", reason = "policy script too slow" }, r, b)
        -- never before the 50 ms budget; at most 150 ms of CPU (wall time
        -- is bounded loosely: a busy machine may deschedule us)
        assert.is_true(st.wall_ms >= 49, b .. " stopped after " .. st.wall_ms .. " ms")
        assert.is_true(st.cpu_ms < 150, b .. " used " .. st.cpu_ms .. " ms of CPU")
        assert.is_true(st.wall_ms < 2000, b .. " stopped after " .. st.wall_ms .. " ms")
        assert.equal(e0 + 1, helpers.metric("chat_script_errors_total", 'hook="on_message"'))
        -- the same state serves the next call
        assert.same({ verdict = "replace", body = "replaced:c1" }, P:message("replace"))
      end
      assert.equal(#runaway, #helpers.logged("^on_message: hook budget exceeded %(50 ms%)"))
      assert.equal(1, P:version())
    end)

    it("stops runaway validation and notification hooks alike", function()
      local r, st = P:call("on_join", { room = "loop", expect_slow = true })
      assert.equal("policy script too slow", r.reason)
      assert.is_true(st.cpu_ms < 150)
      local _, st2 = P:call("on_disconnect", { room = "loop" })
      assert.is_true(st2.wall_ms >= 49 and st2.cpu_ms < 150)
      assert.equal(1, #helpers.logged("^on_disconnect: hook budget exceeded"))
    end)

    it("takes the time budget from hook_budget_ms", function()
      local Q = assert(helpers.load({ dir = helpers.fixture("hooks"), env = { CHAT_HOOK_BUDGET_MS = "150" } }))
      local r, st = Q:message("loop", { expect_slow = true })
      assert.equal("policy script too slow", r.reason)
      assert.is_true(st.wall_ms >= 149, "stopped after " .. st.wall_ms .. " ms")
      assert.equal(1, #helpers.logged("hook budget exceeded %(150 ms%)"))
      Q:close()
    end)

    local function bombs(env, label)
      env.CHAT_HOOK_BUDGET_MS = "5000"    -- only the memory cap can stop them
      local Q = assert(helpers.load({ dir = helpers.fixture("hooks"), env = env }))
      for _, b in ipairs({ "bomb", "pcall-bomb" }) do
        local r, st = Q:message(b)
        assert.same({ verdict = "reject", code = "script_error", reason = "policy script failed" }, r,
                    label .. " " .. b)
        assert.is_true(st.wall_ms < 2000, b .. " stopped after " .. st.wall_ms .. " ms")
        assert.same({ verdict = "replace", body = "replaced:c1" }, Q:message("replace"))
        assert.same({ verdict = "replace", body = "X!" }, Q:message("util"))
      end
      if not env.CHATD_TEST_GCCOUNT then
        -- the allocator also refuses one huge allocation inside a C call
        -- (without it, that is only seen after the call), and the script's
        -- pcall cannot catch the trip
        assert.same({ verdict = "reject", code = "script_error", reason = "policy script failed" },
                    Q:message("eval:return #string.rep('x', 2^30)"))
        assert.same({ verdict = "reject", code = "script_error", reason = "policy script failed" },
                    Q:message("eval:return #table.concat({string.rep('x', 2^24), string.rep('y', 2^24)})"))
      end
      assert.is_true(helpers.metric("chat_script_memory_bytes") < 16 * 1048576)
      Q:close()
    end

    it("caps the state's memory (memory_limit_mb); the script cannot catch the trip", function()
      bombs({}, "allocator")
    end)

    it("caps memory without a custom allocator too (the non-GC64 fallback)", function()
      bombs({ CHATD_TEST_GCCOUNT = "1" }, "gccount")
    end)

    it("rebuilds a state left bloated by a memory trip", function()
      local Q = assert(helpers.load({ dir = helpers.fixture("hooks"), env = { CHAT_HOOK_BUDGET_MS = "5000" } }))
      local n0 = helpers.metric("chat_script_rebuilds_total")
      assert.equal("replace", Q:message("counts").verdict)
      assert.equal("script_error", Q:message("leak-bomb").code)
      assert.equal(n0 + 1, helpers.metric("chat_script_rebuilds_total"))
      assert.equal(2, Q:version())
      assert.equal(1, #helpers.logged("^policy state rebuilt after a memory trip %(version 2%)$"))
      assert.is_true(helpers.metric("chat_script_memory_bytes") < 16 * 1048576)
      assert.same({ verdict = "replace", body = "replaced:c1" }, Q:message("replace"))
      Q:close()
    end)
  end)
end)
