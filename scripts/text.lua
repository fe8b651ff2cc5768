-- text: string helpers for the policy (trimming, UTF-8 length).
-- Every function here is linear in the input: Lua patterns such as
-- "^%s*(.-)%s*$" backtrack quadratically on long runs of spaces, and pattern
-- matching runs in C where the host's time budget cannot interrupt it.
local T = {}

-- Returns the first and last index of non-space characters, or nil when the
-- string is empty or whitespace-only.
function T.bounds(s)
  local i = s:find("%S")
  if not i then return nil end
  local j = s:find("%S%s*$", i)   -- each space run is scanned once
  return i, j
end

-- Trimmed copy of s ("" when whitespace-only).
function T.trim(s)
  local i, j = T.bounds(s)
  if not i then return "" end
  return s:sub(i, j)
end

-- Number of UTF-8 code points in s (continuation bytes 0x80-0xBF are not
-- counted; the core has already checked the body is valid UTF-8 JSON text).
function T.ulen(s)
  local _, n = s:gsub("[^\128-\191]", "")
  return n
end

-- True when s has at most max characters. Cheap bounds first: a byte count
-- <= max means <= max characters; a UTF-8 character is at most 4 bytes.
function T.within(s, max)
  local n = #s
  if n <= max then return true end
  if n > 4 * max then return false end
  return T.ulen(s) <= max
end

-- True when s begins with prefix (never for an empty prefix: a setting of
-- "" turns a prefix rule off).
function T.starts_with(s, prefix)
  return type(s) == "string" and type(prefix) == "string" and prefix ~= "" and
         s:sub(1, #prefix) == prefix
end

return T
