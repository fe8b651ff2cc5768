# store: durable history in Postgres (issue 4). Owner: store.
target_sources(chatcore PRIVATE core/store.c core/store_schema.c)
chatd_unit_test(test_store)
add_executable(bench_store loadtest/bench_store.c)
target_link_libraries(bench_store PRIVATE chatcore)
