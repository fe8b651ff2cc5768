-- The policy host itself (core/script.c, loaded as build/chathost.so): how
-- hook returns become what the core sees, ctx, load failures, reload,
-- settings, the logs and metrics it emits. Fixture policies live in
-- tests/fixtures/policies/ (shared with tests/unit/test_script.c).
local helpers = require "spec.helpers"

local function errors(hook)
  return helpers.metric("chat_script_errors_total", 'hook="' .. hook .. '"')
end

-- every load failure: fixture, error (a Lua pattern, anchored)
local LOAD_FAILURES = {
  { "syntax", "^policy%.lua:3: unexpected symbol near '='$" },
  { "loaderr", "^policy%.lua:2: bad at load$" },
  { "badhook", "^policy%.lua: M%.on_message must be a function %(got string%)$" },
  { "selftest", "^policy%.lua: selftest failed: nope$" },
  { "notable", "^policy%.lua: must return a table %(got number%)$" },
  { "badconfig", "^policy%.lua: config%.heartbeat_ms must be a positive integer %(at most 2147483647%)$" },
  { "loadrl", "^policy%.lua:2: chat%.ratelimit is not allowed at load time$" },
  { "loadconfig", "^policy%.lua:2: chat%.config is not allowed at load time$" },
  { "selftestrl", "^policy%.lua:3: chat%.ratelimit is not allowed in selftest$" },
  { "escape", '^policy%.lua:2: require "%.%./hooks/policy": only modules of the scripts folder can be required$' },
}

describe("policy host", function()
  local P
  before_each(function()
    P = assert(helpers.load({ dir = helpers.fixture("hooks"), node = "node-a" }))
    helpers.clear_logs()
  end)
  after_each(function()
    P:close()
  end)

  it("converts hook returns into the verdict the core gets", function()
    assert.same({ verdict = "replace", body = "replaced:c1" }, P:message("replace"))
    assert.same({ verdict = "replace", body = "replaced:noid" },
                P:call("on_message", {}, { body = "replace" }))          -- id NULL
    assert.same({ verdict = "reject", code = "rejected", reason = "nope" }, P:message("reject"))
    -- code: lower-cased, only [a-z0-9_]; reason: first line only
    assert.same({ verdict = "reject", code = "ratelimited", reason = "line1" }, P:message("reject-weird"))
    assert.same({ verdict = "accept" }, P:message("same"))              -- unchanged body
    assert.same({ verdict = "accept" }, P:message("true"))
    assert.same({ verdict = "accept" }, P:message("anything"))          -- returned nothing
    for _, hook in ipairs({ "on_connect", "on_join", "on_typing", "on_history" }) do
      assert.same({ verdict = "accept" }, P:call(hook, { room = "lobby" }), hook)
      assert.same({ verdict = "reject", code = "forbidden", reason = "no entry" },
                  P:call(hook, { room = "deny" }), hook)
      assert.same({ verdict = "reject", code = "rejected", reason = "refused by policy" },
                  P:call(hook, { room = "deny-default" }), hook)
      -- a number, or a string from a hook other than on_message: script error
      for _, room in ipairs({ "bad-return", "string-return", "boom" }) do
        assert.same({ verdict = "reject", code = "script_error", reason = "policy script failed" },
                    P:call(hook, { room = room }), hook .. " " .. room)
      end
    end
  end)

  it("passes the body with its NUL bytes; a replacement with one is a script error", function()
    assert.same({ verdict = "replace", body = "ok:3" }, P:message("eval:return #'a\\0b'"))
    -- a body with U+0000 is never broadcast (it could not be stored): the
    -- host refuses such a replacement (docs/scripting.md, found by fuzz_script)
    assert.same({ verdict = "reject", code = "script_error", reason = "policy script failed" },
                P:message("eval:return 'a\\0b'"))
    assert.same({ verdict = "replace", body = "ok:a\226\130\172b" }, P:message("eval:return 'a\\226\\130\\172b'"))
  end)

  it("builds ctx from script_ctx (claims decoded, ctx.now also chat.now())", function()
    local r = P:message("claims", { claims = { sub = "u1", role = "admin", rooms = { "a", "b" } },
                                    now = 1700000000123 })
    assert.same({ verdict = "replace", body = "role=admin n=2 node=node-a now=1700000000123 " ..
                  "name=User One room=lobby chatnow=1700000000123" }, r)
    r = P:message("claims", { claims = false, room = false })             -- NULL in C
    assert.equal("replace", r.verdict)
    assert.matches("role=nil n=0 .* room=nil", r.body)
    -- claims are decoded on first read: a ctx kept for later has its own call's,
    -- changes stay in the call's ctx, a claims set to nil stays nil
    assert.same({ verdict = "replace", body = "kept" }, P:message("ctx-keep", { claims = { role = "first" } }))
    assert.same({ verdict = "replace", body = "kept=first now=second same=false" },
                P:message("ctx-kept", { claims = { role = "second" } }))
    assert.same({ verdict = "replace", body = "again=true after_nil=nil mt=false setmt=false" },
                P:message("ctx-claims", { claims = { role = "admin" } }))
    assert.same({ verdict = "replace", body = "unread_nil=nil set=mine" },
                P:message("ctx-claims-set", { claims = { role = "admin" } }))
    assert.matches("^role=admin ", P:message("claims", { claims = { role = "admin" } }).body)
    assert.same({ verdict = "replace", body = "kept=first now=nil same=false" },
                P:message("ctx-kept", { claims = false }))
    -- presence: event, user, name reach the hook; a refusal suppresses
    assert.same({ verdict = "accept" },
                P:call("on_presence", {}, { event = "join", user = "u2", name = "Name of u2" }))
    assert.same({ verdict = "reject", code = "suppressed", reason = "refused by policy" },
                P:call("on_presence", {}, { event = "leave", user = "ghost", name = "Name of ghost" }))
    assert.same({ verdict = "reject", code = "bad_name", reason = "wrong" },
                P:call("on_presence", {}, { event = "join", user = "u2", name = "wrong" }))
  end)

  it("fails closed in validation hooks, logging file:line and counting the error", function()
    local e0 = errors("on_message")
    assert.same({ verdict = "reject", code = "script_error", reason = "policy script failed" },
                P:message("error"))
    assert.equal(e0 + 1, errors("on_message"))
    local lines = helpers.logged("^on_message: policy%.lua:%d+: kaboom stack traceback:")
    assert.equal(1, #lines)
    assert.equal("warn", lines[1].level)
    assert.equal("script", lines[1].module)
    -- writing chat.config is an error too
    assert.equal("script_error", P:message("config-write").code)
    assert.equal(1, #helpers.logged("chat%.config is read%-only"))
  end)

  it("never refuses from notification hooks: errors are logged and counted", function()
    local e0 = errors("on_leave")
    assert.is_nil(P:call("on_leave", { room = "lobby" }))
    assert.is_nil(P:call("on_leave", { room = "boom" }))
    assert.is_nil(P:call("on_leave", { room = "rl" }))   -- chat.ratelimit refused there
    assert.equal(e0 + 2, errors("on_leave"))
    assert.equal(1, #helpers.logged("^on_leave: policy%.lua:%d+: leave boom"))
    assert.equal(1, #helpers.logged("^on_leave: policy%.lua:%d+: chat%.ratelimit is not allowed in on_leave"))
    P:call("on_disconnect", { room = "lobby" })
    assert.same({ verdict = "replace", body = "leaves=3 disconnects=1" }, P:message("counts"))
  end)

  it("throttles script error lines to 10 per second", function()
    for _ = 1, 25 do P:message("error") end
    -- 25 errors within at most two wall-clock seconds: 10 lines per second
    local n = #helpers.logged("^on_message: .*kaboom")
    assert.is_true(n >= 10 and n <= 20, n .. " error lines")
  end)

  it("reports load failures as file:line: message", function()
    for _, c in ipairs(LOAD_FAILURES) do
      local Q, err = helpers.load({ dir = helpers.fixture(c[1]) })
      assert.is_nil(Q, c[1])
      assert.matches(c[2], err)
      assert.equal(1, #helpers.logged("^loading .* failed: " .. c[2]:sub(2)), c[1])
    end
    local Q, err = helpers.load({ dir = "/nonexistent/folder" })
    assert.is_nil(Q)
    assert.matches('require "policy": no policy%.lua in the scripts folder', err)
  end)

  it("swaps in a reloaded policy only when every check passes", function()
    local dir = helpers.copy_dir(helpers.fixture("hooks"))
    local Q = assert(helpers.load({ dir = dir }))
    local function put(fixture)
      for _, f in ipairs({ "policy.lua", "util.lua" }) do os.remove(dir .. "/" .. f) end
      helpers.copy_dir(helpers.fixture(fixture), dir)
    end
    local ok0 = helpers.metric("chat_script_reloads_total", 'result="ok"')
    local er0 = helpers.metric("chat_script_reloads_total", 'result="error"')
    for i, c in ipairs(LOAD_FAILURES) do
      put(c[1])
      local v, err = Q:reload()
      assert.is_nil(v, c[1])
      assert.matches(c[2], err)
      assert.equal(1, Q:version())
      assert.same({ verdict = "replace", body = "replaced:c1" }, Q:message("replace"))   -- old policy
      assert.equal(er0 + i, helpers.metric("chat_script_reloads_total", 'result="error"'))
      assert.equal(1, #helpers.logged("^reload of .* failed, keeping version 1: " .. c[2]:sub(2)))
    end
    assert.equal(ok0, helpers.metric("chat_script_reloads_total", 'result="ok"'))
    put("v2")
    assert.equal(2, Q:reload())
    assert.same({ verdict = "replace", body = "v2:replace" }, Q:message("replace"))
    assert.equal(2000, Q:setting("heartbeat_ms"))
    assert.equal(ok0 + 1, helpers.metric("chat_script_reloads_total", 'result="ok"'))
    assert.equal(1, #helpers.logged("^policy reloaded from .* %(version 2%)$"))
    -- a policy without hooks accepts everything
    put("empty")
    assert.equal(3, Q:reload())
    assert.same({ verdict = "accept" }, Q:message("reject"))
    assert.same({ verdict = "accept" }, Q:call("on_join", { room = "deny" }))
    Q:close()
  end)

  it("keeps token buckets in C: ctx.now refills them and they survive a reload", function()
    -- chat.ratelimit("k:"..user, 1/s, burst 2)
    assert.equal("true", P:message("rl").body)
    assert.equal("true", P:message("rl").body)
    assert.equal("false", P:message("rl").body)
    assert.equal("true", P:message("rl", { user = "u2" }).body)
    assert.equal(2, P:reload())
    assert.equal("false", P:message("rl").body)
    P.clock:advance(999)
    assert.equal("false", P:message("rl").body)
    P.clock:advance(1)
    assert.equal("true", P:message("rl").body)
    -- a clock step back refills nothing
    P.clock:advance(-60000)
    assert.equal("false", P:message("rl").body)
  end)

  it("reads settings from M.config, then CHAT_<KEY>, then the core's default", function()
    local Q = assert(helpers.load({ dir = helpers.fixture("hooks"), env = {
      CHAT_MAX_BODY = "7", CHAT_GREETING = "yo", CHAT_FLAG = "true", CHAT_TYPING_TTL_MS = "1234" } }))
    assert.equal(7, Q:setting("max_body", 1))              -- M.config, overridden
    assert.equal(10000, Q:setting("heartbeat_ms", 1))      -- M.config
    assert.equal(1234, Q:setting("typing_ttl_ms", 5000))   -- env only
    assert.equal(30000, Q:setting("presence_ttl_ms", 30000)) -- default
    assert.equal(1, Q.config.flag)                          -- booleans read as 0/1
    assert.same({ verdict = "replace", body = "greeting=yo max_body=7 flag=true" }, Q:message("config"))
    Q:close()
    local R, err = helpers.load({ dir = helpers.fixture("hooks"), env = { CHAT_MAX_BODY = "lots" } })
    assert.is_nil(R)
    assert.equal('CHAT_MAX_BODY="lots": not a number', err)
    R, err = helpers.load({ dir = helpers.fixture("hooks"), env = { CHAT_FLAG = "maybe" } })
    assert.is_nil(R)
    assert.equal('CHAT_FLAG="maybe": not a boolean', err)
    R, err = helpers.load({ dir = helpers.fixture("hooks"), env = { CHAT_MAX_BODY = "-3" } })
    assert.is_nil(R)
    assert.equal("policy.lua: config.max_body must be a positive integer (at most 2147483647)", err)
  end)

  it("logs chat.log and print at their level, one line, with the phase", function()
    assert.equal("replace", P:message("eval:chat.log('warn', 'careful\\nsecond line') return 1").verdict)
    assert.equal("replace", P:message("eval:print('hello', 42) return 1").verdict)
    assert.equal("replace", P:message("eval:chat.log('debug', 'hidden') return 1").verdict)
    local lines = helpers.logs()
    assert.equal(2, #lines)
    assert.same({ "warn", "script", "[in on_message] careful" },
                { lines[1].level, lines[1].module, lines[1].msg })   -- first line only
    -- control characters (the tab print puts between values) become spaces
    assert.same({ "info", "[in on_message] hello 42" }, { lines[2].level, lines[2].msg })
    local old = helpers.chathost.log_level("debug")
    P:message("eval:chat.log('debug', 'shown') return 1")
    helpers.chathost.log_level(old)
    assert.equal(1, #helpers.logged("^%[in on_message%] shown$"))
    assert.matches("unknown level", P:message("eval:chat.log('loud', 'x')").body)
  end)

  it("observes every call in chat_script_hook_duration_seconds", function()
    local name = "chat_script_hook_duration_seconds_count"
    local n0 = helpers.metric(name, 'hook="on_join"')
    for _ = 1, 5 do P:call("on_join") end
    assert.equal(n0 + 5, helpers.metric(name, 'hook="on_join"'))
    assert.is_number(helpers.metric("chat_script_memory_bytes"))
    assert.is_true(helpers.metric("chat_script_memory_bytes") > 0)
  end)
end)
