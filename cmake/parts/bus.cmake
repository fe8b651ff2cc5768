# bus: Redis pub/sub + publish script, in-process variant (issue 3), on the
# Redis connection layer (cmake/parts/redis.cmake).
target_sources(chatcore PRIVATE
  core/bus.c core/bus_core.c core/bus_order.c
  core/bus_script.c core/bus_redis_head.c core/bus_redis_sub.c core/bus_redis.c core/bus_redis_ids.c core/bus_local.c core/bus_backfill.c
  core/bus_update.c)
# what the Redis replies mean (pure; fuzzed by tests/fuzz/fuzz_resp.c)
target_sources(chatcore PRIVATE core/bus_reply.c)
chatd_unit_test(test_bus)
chatd_unit_test(test_bus_update)
# the bus tests share tests/unit/bus_harness.h; each starts its own redis-server
chatd_unit_test(test_bus_backfill)
chatd_unit_test(test_bus_seed)
chatd_unit_test(test_bus_idback)
