# chat: the protocol's client side next to core/chat.c (in CHATD_MODULES):
# frames held during joins, joins/recovery, fan-out to local members, what a
# connection is told around a publish (chat_answer); below them the publish
# path (message -> seq -> durable row -> ack), the outbound JSON builders and
# the lag receipts.
target_sources(chatcore PRIVATE
  core/chat_hold.c core/chat_admit.c core/chat_join.c core/chat_fanout.c core/chat_update.c
  core/chat_answer.c
  core/publish.c core/wire.c core/lag.c)
# publish.c against a fake store (the store_* functions it calls are the test's)
chatd_unit_test(test_publish)
target_link_options(test_publish PRIVATE -Wl,--wrap=store_write,--wrap=store_target,--wrap=store_reactions)
# chat_join.c's timers: the wait for rows not stored yet, the deadline of
# its Postgres reads and the late read state lookup, owned by the join,
# cancelled by a leave or close (the bus's replay, the store's range and head
# reads and the read state lookup are the test's;
# lws faked as for test_drain)
chatd_unit_test(test_join)
target_link_options(test_join PRIVATE
  -Wl,--wrap=bus_replay,--wrap=store_range,--wrap=store_head,--wrap=readstate_lookup,--wrap=lws_get_socket_fd,--wrap=lws_set_timeout,--wrap=lws_callback_on_writable)
