# chat: the frames of a connection that wait for its joins (core/chat_hold.c,
# next to core/chat.c, which is in CHATD_MODULES).
target_sources(chatcore PRIVATE core/chat_hold.c)
