# read state and retention (issue 14): read marks, receipts, unread counts
# (core/readstate.c), background deletion of old history (core/retention.c).
target_sources(chatcore PRIVATE core/readstate.c core/retention.c)
add_executable(bench_unread loadtest/bench_unread.c)
target_link_libraries(bench_unread PRIVATE chatcore)
chatd_unit_test(test_readstate)
