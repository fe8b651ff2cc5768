-- scripts/text.lua: trimming and UTF-8 length, called inside the real host
-- (sandbox, budgets) through the probe policy (helpers.modules).
local helpers = require "spec.helpers"

describe("text module", function()
  local text
  setup(function()
    text = helpers.modules().require("text")
  end)

  it("trims surrounding whitespace only", function()
    assert.equal("hi", text.trim("  hi  "))
    assert.equal("a  b", text.trim("\t\na  b\r\n "))
    assert.equal("x", text.trim("x"))
    assert.equal("", text.trim(" \t\n"))
    assert.equal("", text.trim(""))
  end)

  it("reports the bounds of the non-space part", function()
    assert.same({ 3, 4 }, { text.bounds("  ab  ") })
    assert.is_nil(text.bounds("   "))
    assert.is_nil(text.bounds(""))
  end)

  it("counts UTF-8 characters, not bytes", function()
    assert.equal(5, text.ulen("h\195\169llo"))        -- héllo
    assert.equal(1, text.ulen("\240\159\152\128"))    -- one emoji, 4 bytes
    assert.is_true(text.within(string.rep("\195\169", 10), 10))
    assert.is_false(text.within(string.rep("\195\169", 11), 10))
    assert.is_false(text.within(string.rep("x", 41), 10))
  end)

  it("trims in linear time (no quadratic pattern backtracking)", function()
    -- a quadratic pattern would run for minutes in C, where the hook budget
    -- cannot stop it; the CPU time is measured inside the host
    local s = "x" .. string.rep(" ", 200000) .. "y" .. string.rep(" ", 200000)
    assert.equal(200002, #text.trim(s))
    assert.is_true(text.cpu_s < 0.05, "trim took " .. text.cpu_s .. " s of CPU")
  end)
end)
