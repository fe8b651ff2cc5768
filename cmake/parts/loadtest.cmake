# loadtest: the median of loadtest/scenarios/ab.sh (median.jq) on odd and
# even counts, nulls and none (needs jq, as the scenarios do).
find_program(CHATD_JQ jq)
if(CHATD_JQ)
  add_test(NAME loadtest_median
    COMMAND ${CHATD_JQ} -n -e -L ${CMAKE_SOURCE_DIR}/loadtest/scenarios
      "include \"median\"; [([1] | med(.)), ([3, 1] | med(.)), ([5, 1, 3] | med(.)), ([4, 1, 3, 2] | med(.)), ([] | med(.)), ([2, null] | med(.)), ([{\"a\": 7}, {\"a\": 1}] | med(.a))] == [1, 2, 3, 2.5, null, 2, 4]")
endif()
