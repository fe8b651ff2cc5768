-- Read state and retention in the policy (issue 14): the read_receipts
-- switch and on_read, history_days and on_retention, through the real host
-- (build/chathost.so): what the core gets back, phases, errors, config
-- validation; and the default policy's rules.
local helpers = require "spec.helpers"

describe("read receipts and retention hooks", function()
  local P
  before_each(function()
    P = assert(helpers.load({ dir = helpers.fixture("readstate"), node = "node-r" }))
  end)
  after_each(function() P:close() end)

  it("on_read decides receipts per room and per seq", function()
    assert.equal("accept", P:call("on_read", { room = "lobby" }, { seq = 12 }).verdict)
    local r = P:call("on_read", { room = "quiet-1" }, { seq = 12 })
    assert.same({ verdict = "reject", code = "forbidden", reason = "quiet room" }, r)
    assert.equal("reject", P:call("on_read", { room = "lobby" }, { seq = 13 }).verdict)
  end)

  it("an on_read error fails closed (no receipt) and is counted", function()
    local e0 = helpers.metric("chat_script_errors_total", 'hook="on_read"') or 0
    local r = P:call("on_read", { room = "lobby" }, { seq = 666 })
    assert.same({ verdict = "reject", code = "script_error", reason = "policy script failed" }, r)
    assert.equal(e0 + 1, helpers.metric("chat_script_errors_total", 'hook="on_read"'))
  end)

  it("on_retention gives days per room; nil means config.history_days", function()
    assert.equal(10, P:retention("lobby"))
    assert.equal(0, P:retention("keep"))
    assert.equal(0.5, P:retention("half"))
    assert.equal(3, P:retention("default"))
    assert.same({ verdict = "accept" }, P:call("on_retention", { room = "default", user = false }))
    assert.same({ verdict = "accept", days = 10 }, P:call("on_retention", { room = "lobby", user = false }))
  end)

  it("gets the room first and a ctx without a user", function()
    assert.equal(42, P:retention("ctx"))
  end)

  it("refuses a return that is not days >= 0, an error and a runaway, counting each", function()
    for _, room in ipairs({ "negative", "text", "nan", "boom", "loop" }) do
      local e0 = helpers.metric("chat_script_errors_total", 'hook="on_retention"') or 0
      assert.equal("error", P:retention(room), room)
      assert.equal(e0 + 1, helpers.metric("chat_script_errors_total", 'hook="on_retention"'), room)
    end
    assert.is_true(#helpers.logged("^on_retention: returned %-1 %(days >= 0 or nil expected%)") >= 1)
    assert.is_true(#helpers.logged("^on_retention: returned a string") >= 1)
    assert.is_true(#helpers.logged("retention failed") >= 1)
  end)

  it("may not rate-limit (a background query for no user)", function()
    assert.equal("error", P:retention("ratelimit"))
    assert.is_true(#helpers.logged("chat%.ratelimit is not allowed in on_retention") >= 1)
  end)
end)

describe("config: read_receipts and history_days", function()
  local function load_with(config)
    local dir = helpers.tmpdir()
    helpers.write(dir .. "/policy.lua", "local M = {config = " .. config .. "}\nreturn M\n")
    return helpers.load({ dir = dir })
  end

  it("are validated at load", function()
    local P, err = load_with("{history_days = -1}")
    assert.is_nil(P)
    assert.matches("config.history_days must be a number of days >= 0", err)
    P, err = load_with("{history_days = '30'}")
    assert.is_nil(P)
    assert.matches("config.history_days must be a number", err)
    P, err = load_with("{read_receipts = 'no'}")
    assert.is_nil(P)
    assert.matches("config.read_receipts must be true or false", err)
  end)

  it("are read by the core, fractional days included, env overrides", function()
    local P = assert(load_with("{history_days = 1.5, read_receipts = false}"))
    assert.equal(1.5, P:setting_num("history_days"))
    assert.equal(0, P.config.read_receipts)
    assert.equal(1.5, P:retention("any"))     -- no hook: the config's days
    P:close()
    local dir = helpers.tmpdir()
    helpers.write(dir .. "/policy.lua", "local M = {config = {history_days = 0, read_receipts = true}}\nreturn M\n")
    P = assert(helpers.load({ dir = dir, env = { CHAT_HISTORY_DAYS = "30", CHAT_READ_RECEIPTS = "off" } }))
    assert.equal(30, P:retention("any"))
    assert.equal(0, P.config.read_receipts)
    P:close()
    local R, err = helpers.load({ dir = dir, env = { CHAT_HISTORY_DAYS = "-2" } })
    assert.is_nil(R)
    assert.matches("config.history_days must be a number of days >= 0", err)
  end)
end)

describe("the default policy (scripts/)", function()
  local P
  before_each(function() P = assert(helpers.load()) end)
  after_each(function() P:close() end)

  it("keeps history forever and sends receipts by default", function()
    assert.equal(0, P:retention("lobby"))
    assert.equal(1, P.config.read_receipts)
    assert.equal("accept", P:call("on_read", { room = "lobby" }, { seq = 5 }).verdict)
  end)

  it("keeps ephemeral rooms one day and sends no receipts in private rooms", function()
    assert.equal(1, P:retention("tmp-standup"))
    assert.equal(0, P:retention("lobby"))
    assert.equal("reject", P:call("on_read", { room = "private-x", claims = { role = "admin" } }, { seq = 5 }).verdict)
  end)

  it("follows its settings", function()
    local Q = assert(helpers.load({ env = { CHAT_HISTORY_DAYS = "90", CHAT_EPHEMERAL_DAYS = "2",
                                            CHAT_READ_RECEIPTS = "false" } }))
    assert.equal(90, Q:retention("lobby"))
    assert.equal(2, Q:retention("tmp-x"))
    assert.equal(0, Q.config.read_receipts)
    Q:close()
  end)
end)
