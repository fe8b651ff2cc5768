-- fixture: syntax error on line 3
local M = {}
M.on_message = function(ctx, msg) return = 1 end
return M
