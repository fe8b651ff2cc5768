-- Message updates (v2): the hooks on_edit, on_delete and on_react, through
-- the real host (build/chathost.so): what they receive, how their returns
-- become verdicts, and the default policy's rules (scripts/policy.lua):
-- the author edits and deletes their own messages, a token with the admin
-- role deletes any, anyone in the room reacts (within a rate).
local helpers = require "spec.helpers"
local cjson = require "cjson"

local THUMBS = "\240\159\145\141"

describe("update hooks in the host", function()
  local P
  before_each(function()
    local dir = helpers.tmpdir()
    helpers.write(dir .. "/policy.lua", [[
      local M = {}
      local function echo(kind)
        return function(ctx, u)
          if u.id == "boom" then error("boom") end
          if u.id == "number" then return 42 end
          if u.id == "string" then return "a string" end
          if u.id == "no" then return false, "Forbidden", "not yours\nsecond line" end
          chat.log("info", kind .. " " .. chat.json.encode({
            user = ctx.user, room = ctx.room, target = u.target, author = u.author,
            body = u.body, emoji = u.emoji, on = u.on, id = u.id,
            rl = chat.ratelimit("k", 1000, 1000) }))
          if kind == "edit" and u.body == "shout" then return "SHOUT" end
        end
      end
      M.on_edit, M.on_delete, M.on_react = echo("edit"), echo("delete"), echo("react")
      return M
    ]])
    P = assert(helpers.load({ dir = dir }))
    helpers.clear_logs()
  end)
  after_each(function() P:close() end)

  local function last(kind)
    local rec = helpers.logged("^%[in on_" .. kind .. "%] " .. kind .. " ")
    assert.is_true(#rec > 0, "no log of on_" .. kind)
    return cjson.decode(rec[#rec].msg:match(kind .. " (.*)$"))
  end

  it("passes the update and its target's author", function()
    assert.same({ verdict = "accept" },
                P:edit({ target = 7, author = "u1", body = "new", id = "e1" }, { room = "r" }))
    assert.same({ user = "u1", room = "r", target = 7, author = "u1", body = "new", id = "e1",
                  rl = true }, last("edit"))
    assert.same({ verdict = "accept" }, P:delete({ target = 9, author = "u2" }))
    local d = last("delete")
    assert.equal(9, d.target)
    assert.equal("u2", d.author)
    assert.is_nil(d.body)
    assert.same({ verdict = "accept" }, P:react({ target = 3, author = "u2", emoji = THUMBS, on = false }))
    local r = last("react")
    assert.equal(THUMBS, r.emoji)
    assert.is_false(r.on)
    assert.is_true(r.rl, "chat.ratelimit is allowed in the update hooks")
  end)

  it("lets on_edit replace the body, never on_delete or on_react", function()
    assert.same({ verdict = "replace", body = "SHOUT" }, P:edit({ target = 1, author = "u1", body = "shout" }))
    assert.same({ verdict = "reject", code = "script_error", reason = "policy script failed" },
                P:delete({ target = 1, author = "u1", id = "string" }))
    assert.same({ verdict = "reject", code = "script_error", reason = "policy script failed" },
                P:react({ target = 1, author = "u1", emoji = THUMBS, id = "string" }))
  end)

  it("refuses with the hook's code, and fails closed on errors", function()
    for _, call in ipairs({ "edit", "delete", "react" }) do
      local u = { target = 1, author = "u1", body = "x", emoji = THUMBS, id = "no" }
      assert.same({ verdict = "reject", code = "forbidden", reason = "not yours" }, P[call](P, u), call)
      u.id = "boom"
      local before = helpers.metric("chat_script_errors_total", 'hook="on_' .. call .. '"') or 0
      assert.same({ verdict = "reject", code = "script_error", reason = "policy script failed" },
                  P[call](P, u), call)
      assert.equal(before + 1, helpers.metric("chat_script_errors_total", 'hook="on_' .. call .. '"'))
      u.id = "number"
      assert.equal("script_error", P[call](P, u).code, call)
    end
  end)

  it("accepts everything when a policy has no update hooks", function()
    local dir = helpers.tmpdir()
    helpers.write(dir .. "/policy.lua", "return {}")
    local Q = assert(helpers.load({ dir = dir }))
    assert.same({ verdict = "accept" }, Q:edit({ target = 1, author = "someone else", body = "x" }))
    assert.same({ verdict = "accept" }, Q:delete({ target = 1, author = "someone else" }))
    Q:close()
  end)
end)

describe("default policy: message updates", function()
  local P
  before_each(function() P = assert(helpers.load()) end)
  after_each(function() P:close() end)

  it("lets only the author edit", function()
    assert.same({ verdict = "accept" }, P:edit({ target = 5, author = "u1", body = "fixed" }))
    assert.same({ verdict = "reject", code = "forbidden", reason = "only the author can edit a message" },
                P:edit({ target = 5, author = "u2", body = "fixed" }))
    -- an admin does not edit others' words either
    assert.equal("forbidden",
                 P:edit({ target = 5, author = "u2", body = "x" }, { claims = { role = "admin" } }).code)
  end)

  it("applies the message rules to an edit's body", function()
    assert.same({ verdict = "replace", body = "trimmed" }, P:edit({ target = 5, author = "u1", body = "  trimmed \n" }))
    assert.same({ verdict = "reject", code = "rejected", reason = "empty message" },
                P:edit({ target = 5, author = "u1", body = " \t " }))
    local long = P:edit({ target = 5, author = "u1", body = string.rep("x", 4001) })
    assert.equal("rejected", long.code)
    assert.matches("too long", long.reason)
  end)

  it("counts edits against the message rate", function()
    local refused
    for i = 1, 41 do
      local r = i % 2 == 0 and P:message("m" .. i) or P:edit({ target = 1, author = "u1", body = "e" .. i })
      if r.verdict == "reject" then refused = { i = i, r = r } break end
    end
    assert.is_not_nil(refused, "the burst of 40 is shared")
    assert.equal(41, refused.i)
    assert.equal("rate_limited", refused.r.code)
  end)

  it("lets the author, or a token with the admin role, delete", function()
    assert.same({ verdict = "accept" }, P:delete({ target = 5, author = "u1" }))
    assert.same({ verdict = "reject", code = "forbidden",
                  reason = "only the author or an admin can delete a message" },
                P:delete({ target = 5, author = "u2" }))
    assert.same({ verdict = "accept" }, P:delete({ target = 5, author = "u2" }, { claims = { role = "admin" } }))
    assert.equal("forbidden", P:delete({ target = 5, author = "u2" }, { claims = { role = "mod" } }).code)
    -- the admin role is the policy's setting
    local Q = assert(helpers.load({ env = { CHAT_ADMIN_ROLE = "moderator" } }))
    assert.same({ verdict = "accept" }, Q:delete({ target = 5, author = "u2" }, { claims = { role = "moderator" } }))
    assert.equal("forbidden", Q:delete({ target = 5, author = "u2" }, { claims = { role = "admin" } }).code)
    Q:close()
  end)

  it("lets anyone react, within react_rate / react_burst", function()
    assert.equal(10, P.config.react_rate)
    assert.equal(30, P.config.react_burst)
    for i = 1, 30 do
      assert.same({ verdict = "accept" }, P:react({ target = 5, author = "u2", emoji = THUMBS, on = i % 2 == 1 }), i)
    end
    assert.same({ verdict = "reject", code = "rate_limited", reason = "too many reactions, slow down" },
                P:react({ target = 5, author = "u2", emoji = THUMBS }))
    -- another user has a bucket of their own; time refills
    assert.same({ verdict = "accept" }, P:react({ target = 5, author = "u2", emoji = THUMBS }, { user = "u9" }))
    P.clock:advance(1000)
    assert.same({ verdict = "accept" }, P:react({ target = 5, author = "u2", emoji = THUMBS }))
  end)
end)
