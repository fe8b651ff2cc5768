# conn: the connection (core/conn.c, in CHATD_MODULES) and the min-heap of
# its token deadlines (core/heap.c, the core's one priority queue).
target_sources(chatcore PRIVATE core/heap.c)
chatd_unit_test(test_heap)
# every 1011 "out of memory" close through conn_close_oom (allocation
# failures injected; lws and uconns_enabled faked)
chatd_unit_test(test_conn_oom)
chatd_alloc_fail(test_conn_oom)
target_link_options(test_conn_oom PRIVATE
  -Wl,--wrap=lws_get_socket_fd,--wrap=lws_set_timeout,--wrap=lws_callback_on_writable,--wrap=uconns_enabled)
# SIGTERM's drain closes 1001, also a connection whose queue is full
# (lws faked as for test_conn_oom)
chatd_unit_test(test_drain)
target_link_options(test_drain PRIVATE
  -Wl,--wrap=lws_get_socket_fd,--wrap=lws_set_timeout,--wrap=lws_callback_on_writable)
