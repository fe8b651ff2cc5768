# script: LuaJIT policy host (core/script.c), its token buckets
# (core/ratelimit.c), unit test and benchmark.
target_sources(chatcore PRIVATE core/script.c core/ratelimit.c)
chatd_unit_test(test_script)
add_executable(bench_script loadtest/bench_script.c)
target_link_libraries(bench_script PRIVATE chatcore)
