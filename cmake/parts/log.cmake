# log: one-line records with secrets redacted and control characters
# escaped (core/log.c, compiled with the core modules); its unit test.
chatd_unit_test(test_log)
