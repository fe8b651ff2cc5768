-- sibling module, loaded through the sandboxed require
local U = {}
function U.shout(s) return s:upper() .. "!" end
return U
