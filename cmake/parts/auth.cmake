# auth + frame: JWT verification (core/auth.c) and client frame parsing
# (core/frame.c), plus unit tests for auth, frame, util and metrics.
target_sources(chatcore PRIVATE core/auth.c core/frame.c core/emoji.c)
chatd_unit_test(test_emoji)
chatd_unit_test(test_auth)
chatd_unit_test(test_frame)
chatd_unit_test(test_util)
chatd_unit_test(test_metrics)
