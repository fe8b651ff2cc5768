-- scripts/access.lua: room access from JWT claims, called inside the real
-- host through the probe policy (helpers.modules).
local helpers = require "spec.helpers"

describe("access module", function()
  local access
  local cfg = { private_prefix = "private-", admin_role = "admin" }
  setup(function()
    access = helpers.modules().require("access")
  end)

  it("lets anyone into public rooms without a rooms claim", function()
    assert.is_true(access.room_allowed({}, "lobby", cfg))
    assert.is_true(access.room_allowed(nil, "lobby", cfg))
  end)

  it("uses the rooms claim as an allow-list when present", function()
    local c = { rooms = { "a", "b" } }
    assert.is_true(access.room_allowed(c, "a", cfg))
    local ok, why = access.room_allowed(c, "lobby", cfg)
    assert.is_false(ok)
    assert.matches("not in your rooms claim", why)
    assert.is_false(access.room_allowed({ rooms = {} }, "a", cfg))
  end)

  it("accepts a single string and prefix wildcards in rooms", function()
    assert.is_true(access.room_allowed({ rooms = "a" }, "a", cfg))
    assert.is_true(access.room_allowed({ rooms = { "team-*" } }, "team-42", cfg))
    assert.is_false(access.room_allowed({ rooms = { "team-*" } }, "teams", cfg))
  end)

  it("requires role admin or an explicit grant for private rooms", function()
    local ok, why = access.room_allowed({}, "private-x", cfg)
    assert.is_false(ok)
    assert.matches("is private", why)
    assert.is_true(access.room_allowed({ role = "admin" }, "private-x", cfg))
    assert.is_true(access.room_allowed({ rooms = { "private-x" } }, "private-x", cfg))
    assert.is_false(access.room_allowed({ role = "user" }, "private-x", cfg))
    -- the allow-list still applies to admins
    assert.is_false(access.room_allowed({ role = "admin", rooms = { "a" } }, "private-x", cfg))
  end)

  it("does not treat an empty private prefix as matching everything", function()
    assert.is_true(access.room_allowed({}, "x", { private_prefix = "", admin_role = "admin" }))
  end)
end)
