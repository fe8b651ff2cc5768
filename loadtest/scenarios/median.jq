# median.jq: the median of the values f gives over an array of results
# (nulls left out): odd count, the middle value; even count, the mean of the
# two middle values; none, null. Used by ab.sh (jq -L loadtest/scenarios
# 'include "median"; ...'); checked by the ctest loadtest_median.
def med(f): [.[] | f | select(. != null)] | sort |
  if length == 0 then null
  elif length % 2 == 1 then .[(length - 1) / 2]
  else (.[length / 2 - 1] + .[length / 2]) / 2 end;
