# script: LuaJIT policy host (core/script.c, script_policy.c, script_sandbox.c), its token buckets
# (core/ratelimit.c), unit test and benchmark.
target_sources(chatcore PRIVATE core/script.c core/script_policy.c core/script_sandbox.c core/ratelimit.c)
chatd_unit_test(test_script)
chatd_unit_test(test_ratelimit)
add_executable(bench_script loadtest/bench_script.c)
target_link_libraries(bench_script PRIVATE chatcore)
# chathost: the same host (script.c and the modules it runs on) as a Lua C
# module, build/chathost.so, which the busted specs load (spec/helpers.lua).
# Not linked against LuaJIT: its lua_* symbols bind to the interpreter that
# loads it (Debian's luajit exports its LuaJIT), never to a second copy.
# Only the module's entry point is exported. Not built with the sanitizers
# (an ASan module cannot be loaded by a plain luajit).
if(NOT CHATD_SANITIZE)
  pkg_check_modules(LUAJIT REQUIRED luajit)
  add_library(chathost MODULE spec/chathost.c
    core/script.c core/script_policy.c core/script_sandbox.c core/ratelimit.c core/log.c core/metrics.c core/util.c)
  target_include_directories(chathost PRIVATE core ${LUAJIT_INCLUDE_DIRS})
  target_link_libraries(chathost PRIVATE m)
  # never unloaded: at lua_close the interpreter may dlclose the module
  # before the __gc of the last host (which runs script_free) has run
  target_link_options(chathost PRIVATE -Wl,-z,nodelete)
  set_target_properties(chathost PROPERTIES PREFIX "" C_VISIBILITY_PRESET hidden
    LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR})
endif()
