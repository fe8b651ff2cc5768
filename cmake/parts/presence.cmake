# presence: exact cross-node presence (core/presence.h); Redis and memory stores.
target_sources(chatcore PRIVATE
  core/presence.c core/presence_mem.c core/presence_redis.c)
chatd_unit_test(test_presence)
add_executable(bench_presence loadtest/bench_presence.c)
target_link_libraries(bench_presence PRIVATE chatcore)
chatd_unit_test(test_presence_oom)
chatd_alloc_fail(test_presence_oom)
