-- fixture: second version of a good policy
local M = { config = { heartbeat_ms = 2000 } }
function M.on_message(ctx, msg) return "v2:" .. msg.body end
return M
