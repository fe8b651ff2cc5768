-- scripts/policy.lua: every rule of the default policy, through its hooks,
-- run by the real host (spec/helpers.lua loads build/chathost.so).
local helpers = require "spec.helpers"

describe("default policy", function()
  local P
  before_each(function()
    P = assert(helpers.load())
  end)
  after_each(function()
    P:close()
  end)

  describe("config", function()
    it("has the documented defaults", function()
      assert.equal(10000, P.config.heartbeat_ms)
      assert.equal(30000, P.config.presence_ttl_ms)
      assert.equal(5000, P.config.typing_ttl_ms)
      assert.equal(32, P.config.max_rooms_per_conn)
      assert.equal(4000, P.config.max_body)
      assert.equal(20, P.config.message_rate)
      assert.equal(40, P.config.message_burst)
      assert.equal(2000, P.config.typing_interval_ms)
      assert.equal(50, P.config.hook_budget_ms)
      assert.equal(64, P.config.memory_limit_mb)
    end)

    it("takes CHAT_<KEY> overrides", function()
      local Q = assert(helpers.load({ env = { CHAT_MAX_BODY = "10", CHAT_HEARTBEAT_MS = "2500",
                                              CHAT_PRIVATE_PREFIX = "secret-" } }))
      assert.equal(10, Q.config.max_body)
      assert.equal(2500, Q.config.heartbeat_ms)
      assert.equal("reject", Q:message(string.rep("x", 11)).verdict)
      assert.equal("accept", Q:message(string.rep("x", 10)).verdict)
      assert.equal("forbidden", Q:call("on_join", { room = "secret-1" }).code)
      assert.equal("accept", Q:call("on_join", { room = "private-1" }).verdict)
      Q:close()
    end)

    it("refuses overrides of the wrong type", function()
      local Q, err = helpers.load({ env = { CHAT_MAX_BODY = "big" } })
      assert.is_nil(Q)
      assert.equal('CHAT_MAX_BODY="big": not a number', err)
      Q, err = helpers.load({ env = { CHAT_HEARTBEAT_MS = "0" } })
      assert.is_nil(Q)
      assert.matches("heartbeat_ms must be a positive integer", err)
    end)

    it("passes its selftest, which catches a broken module", function()
      -- the host runs M.selftest before every swap: a reload succeeds ...
      assert.equal(2, P:reload())
      -- ... and a copy of the folder with a broken text.trim does not load
      local dir = helpers.copy_dir(helpers.root .. "/scripts")
      helpers.write(dir .. "/text.lua", (helpers.read(dir .. "/text.lua"):gsub(
        "return s:sub%(i, j%)", "return s")))
      local Q, err = helpers.load({ dir = dir })
      assert.is_nil(Q)
      assert.equal("policy.lua: selftest failed: trim", err)
    end)
  end)

  describe("on_message", function()
    it("accepts a normal message unchanged", function()
      assert.same({ verdict = "accept" }, P:message("hello"))
    end)

    it("rejects empty and whitespace-only bodies with code rejected", function()
      for _, b in ipairs({ "", " ", "\t\n  \r" }) do
        local r = P:message(b)
        assert.equal("reject", r.verdict)
        assert.equal("rejected", r.code)
        assert.equal("empty message", r.reason)
      end
    end)

    it("trims surrounding whitespace by replacing the body", function()
      assert.same({ verdict = "replace", body = "hi there" }, P:message("  hi there \n"))
    end)

    it("limits the body to max_body characters (after trimming)", function()
      assert.equal("accept", P:message(string.rep("x", 4000)).verdict)
      local r = P:message(string.rep("x", 4001))
      assert.equal("reject", r.verdict)
      assert.equal("rejected", r.code)
      assert.matches("too long %(max 4000 characters%)", r.reason)
      assert.equal("replace", P:message("   " .. string.rep("x", 4000) .. "   ").verdict)
      -- characters, not bytes: 4000 two-byte characters fit
      assert.equal("accept", P:message(string.rep("\195\169", 4000)).verdict)
      assert.equal("reject", P:message(string.rep("\195\169", 4001)).verdict)
    end)

    it("rate limits each user: burst 40, then 20 per second", function()
      for i = 1, 40 do assert.equal("accept", P:message("m" .. i).verdict) end
      local r = P:message("one too many")
      assert.equal("reject", r.verdict)
      assert.equal("rate_limited", r.code)
      assert.equal("too many messages, slow down", r.reason)
      -- another user has their own bucket
      assert.equal("accept", P:message("hi", { user = "u2" }).verdict)
      -- 50 ms later one token is back (20/s)
      P.clock:advance(50)
      assert.equal("accept", P:message("again").verdict)
      assert.equal("rate_limited", P:message("again").code)
      -- one second refills 20, not more
      P.clock:advance(1000)
      for i = 1, 20 do assert.equal("accept", P:message("m" .. i).verdict) end
      assert.equal("rate_limited", P:message("again").code)
    end)

    it("leaves server API messages (ctx.source == 'api') to the per-key limit", function()
      for i = 1, 60 do assert.equal("accept", P:message("a" .. i, { source = "api" }).verdict) end
      -- the user's WebSocket bucket was not touched by them
      for i = 1, 40 do assert.equal("accept", P:message("m" .. i, { source = "ws" }).verdict) end
      assert.equal("rate_limited", P:message("x").code)
      -- and content rules still apply to them
      assert.equal("empty message", P:message("  ", { source = "api" }).reason)
    end)

    it("does not spend a token on messages rejected for content", function()
      for _ = 1, 10 do
        assert.equal("empty message", P:message("").reason)
        assert.matches("too long", P:message(string.rep("x", 5000)).reason)
      end
      for i = 1, 40 do assert.equal("accept", P:message("m" .. i).verdict) end
      assert.equal("rate_limited", P:message("x").code)
    end)

    it("answers rate_limited (not a replacement) once the bucket is empty", function()
      local Q = assert(helpers.load({ env = { CHAT_MESSAGE_BURST = "1" } }))
      assert.same({ verdict = "replace", body = "x" }, Q:message(" x "))
      assert.same({ verdict = "reject", code = "rate_limited", reason = "too many messages, slow down" },
                  Q:message(" x "))
      Q:close()
    end)
  end)

  describe("on_typing", function()
    it("allows one typing event per 2 s per user and room", function()
      assert.equal("accept", P:call("on_typing").verdict)
      local r = P:call("on_typing")
      assert.equal("reject", r.verdict)
      assert.equal("rate_limited", r.code)
      assert.equal("accept", P:call("on_typing", { room = "other" }).verdict)
      assert.equal("accept", P:call("on_typing", { user = "u2" }).verdict)
      P.clock:advance(1999)
      assert.equal("reject", P:call("on_typing").verdict)
      P.clock:advance(1)
      assert.equal("accept", P:call("on_typing").verdict)
    end)
  end)

  describe("room access", function()
    for _, hook in ipairs({ "on_connect", "on_join", "on_history" }) do
      describe(hook, function()
        it("lets anyone into a public room", function()
          assert.equal("accept", P:call(hook, { room = "lobby" }).verdict)
        end)

        it("enforces the rooms claim allow-list", function()
          local claims = { sub = "u1", rooms = { "a", "team-*" } }
          assert.equal("accept", P:call(hook, { room = "a", claims = claims }).verdict)
          assert.equal("accept", P:call(hook, { room = "team-9", claims = claims }).verdict)
          local r = P:call(hook, { room = "b", claims = claims })
          assert.equal("reject", r.verdict)
          assert.equal("forbidden", r.code)
          assert.equal("room b is not in your rooms claim", r.reason)
        end)

        it("needs role admin or a grant for private-* rooms", function()
          assert.equal("forbidden", P:call(hook, { room = "private-ops" }).code)
          assert.equal("forbidden", P:call(hook, { room = "private-ops",
                                                   claims = { role = "user" } }).code)
          assert.equal("accept", P:call(hook, { room = "private-ops",
                                                claims = { role = "admin" } }).verdict)
          assert.equal("accept", P:call(hook, { room = "private-ops",
                                                claims = { rooms = { "private-ops" } } }).verdict)
        end)
      end)
    end

    it("accepts a connect without a room", function()
      -- room = false: ctx.room is NULL in C, nil in Lua
      assert.same({ verdict = "accept" }, P:call("on_connect", { room = false,
                                                                 claims = { rooms = { "a" } } }))
    end)
  end)

  it("accepts every presence event and ignores leave/disconnect", function()
    helpers.clear_logs()
    local e_leave = helpers.metric("chat_script_errors_total", 'hook="on_leave"')
    local e_disc = helpers.metric("chat_script_errors_total", 'hook="on_disconnect"')
    assert.same({ verdict = "accept" },
                P:call("on_presence", {}, { event = "join", user = "u2", name = "U2" }))
    assert.same({ verdict = "accept" },
                P:call("on_presence", {}, { event = "leave", user = "u2", name = "U2" }))
    assert.is_nil(P:call("on_leave"))         -- void in C
    assert.is_nil(P:call("on_disconnect"))
    assert.equal(e_leave, helpers.metric("chat_script_errors_total", 'hook="on_leave"'))
    assert.equal(e_disc, helpers.metric("chat_script_errors_total", 'hook="on_disconnect"'))
    assert.same({}, helpers.logged("."))
  end)
end)
