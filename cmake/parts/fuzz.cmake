# fuzz: the libFuzzer targets, one per tests/fuzz/fuzz_<target>.c (found by
# glob: adding a target is adding a file), built against the core with
# -DCHATD_FUZZ=ON and CC=clang (see tests/fuzz/README.md; tests/fuzz/run.sh
# builds and runs them); and the unit test of the pure parsers they drive.
chatd_unit_test(test_parse)
# The RESP seed capture (tests/fuzz/capture_resp.py) in check mode: every
# bus and presence script called as its header comment declares it, against
# a redis-server of its own, each answer checked (a script change that
# breaks a call fails here, not silently in the seeds); writes nothing, about
# 0.1 s; skipped (77) without redis-server.
if(EXISTS /usr/bin/python3)
  add_test(NAME fuzz_capture_resp
    COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/fuzz/capture_resp.py --check)
  set_tests_properties(fuzz_capture_resp PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 60)
endif()
if(CHATD_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "CHATD_FUZZ needs clang (CC=clang): libFuzzer is part of clang")
  endif()
  file(GLOB CHATD_FUZZ_SRCS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_*.c)
  add_custom_target(fuzz)
  foreach(src ${CHATD_FUZZ_SRCS})
    get_filename_component(t ${src} NAME_WE)
    add_executable(${t} ${src})
    target_link_libraries(${t} PRIVATE chatcore)
    target_link_options(${t} PRIVATE -fsanitize=fuzzer)
    target_compile_definitions(${t} PRIVATE CHATD_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
    add_dependencies(fuzz ${t})
  endforeach()
endif()
