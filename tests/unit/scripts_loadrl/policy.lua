-- fixture: chat.ratelimit is not allowed at load time
chat.ratelimit("x", 1, 1)
return {}
