# workers: chatd --workers N, the supervisor of several nodes per machine
# (core/workers.c) and the unit test of its restart policy.
target_sources(chatcore PRIVATE core/workers.c)
chatd_unit_test(test_workers)
