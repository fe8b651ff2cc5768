-- spec/helpers.lua itself: the sandbox it builds must be the host's.
local helpers = require "spec.helpers"

describe("policy sandbox (helpers)", function()
  local P, E
  before_each(function()
    P = assert(helpers.load({ dir = "tests/fixtures/policies/hooks" }))
    E = P.env
  end)

  it("uses the allow-lists of core/script.c", function()
    assert.is_true(#helpers.allow.base > 10)
    assert.is_function(E.pairs)
    assert.is_function(E.string.format)
    assert.is_function(E.os.time)
    assert.same(8, #helpers.hooks)
  end)

  it("has no way out", function()
    for _, name in ipairs({ "io", "debug", "ffi", "jit", "package", "loadfile", "dofile",
                            "getfenv", "setfenv", "collectgarbage", "newproxy", "module" }) do
      assert.is_nil(E[name], name)
    end
    assert.is_nil(E.os.execute)
    assert.is_nil(E.os.getenv)
    assert.is_nil(E.string.dump)
    assert.has_error(function() E.require("os") end)
    assert.has_error(function() E.require("../v2/policy") end)
    local f, err = E.load(string.dump(function() end))
    assert.is_nil(f)
    assert.matches("binary chunk", err)
  end)

  it("refuses chat.ratelimit and chat.config at load time", function()
    local Q, err = helpers.load({ dir = "tests/fixtures/policies/loadrl" })
    assert.is_nil(Q)
    assert.matches("chat.ratelimit is not allowed at load time", err)
  end)

  it("refuses chat.ratelimit in notification hooks", function()
    local r = P:call("on_leave", { room = "rl" })
    assert.equal("accept", r.verdict)
    assert.matches("not allowed in on_leave", r.error)
  end)

  it("reports load failures like the host", function()
    local cases = {
      { "syntax", "^policy.lua:3:" },
      { "loaderr", "^policy.lua:2: bad at load" },
      { "badhook", "M.on_message must be a function %(got string%)" },
      { "selftest", "selftest failed: nope" },
      { "notable", "must return a table" },
      { "badconfig", "config.heartbeat_ms must be a positive integer" },
      { "escape", "only modules of the scripts folder" },
    }
    for _, c in ipairs(cases) do
      local Q, err = helpers.load({ dir = "tests/fixtures/policies/" .. c[1] })
      assert.is_nil(Q, c[1])
      assert.matches(c[2], err)
    end
  end)

  it("converts returns like the host", function()
    assert.same({ verdict = "replace", body = "replaced:c1" }, P:message("replace"))
    assert.same({ verdict = "reject", code = "rejected", reason = "nope" }, P:message("reject"))
    assert.same({ verdict = "reject", code = "ratelimited", reason = "line1" }, P:message("reject-weird"))
    assert.same({ verdict = "accept" }, P:message("same"))
    assert.equal("script_error", P:message("error").code)
    assert.equal("script_error", P:call("on_join", { room = "bad-return" }).code)
    assert.equal("refused by policy", P:call("on_join", { room = "deny-default" }).reason)
  end)
end)
