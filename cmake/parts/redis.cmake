# redis: the one Redis connection layer (URL, slots, replies, TLS, connection,
# node, client with the Cluster slot map), used by the bus and presence.
target_sources(chatcore PRIVATE
  core/redis_url.c core/redis_slot.c core/redis_reply.c core/redis_alloc.c core/redis_tls.c
  core/redis_conn.c core/redis_node.c core/redis_topo.c core/redis_client.c)
chatd_unit_test(test_redis)
add_executable(bench_alloc loadtest/bench_alloc.c)
target_link_libraries(bench_alloc PRIVATE chatcore)
