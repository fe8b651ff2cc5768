# conn: the connection (core/conn.c, in CHATD_MODULES) and the min-heap of
# its token deadlines (core/heap.c, the core's one priority queue).
target_sources(chatcore PRIVATE core/heap.c)
chatd_unit_test(test_heap)
