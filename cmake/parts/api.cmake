# api: the server API (issue 13): routes and auth (core/api.c), the HTTP
# request mechanics under them (core/httpd.c), the control channel between
# nodes (core/ctl.c), bans (core/bans.c), moderation on local connections
# (core/chat_admin.c) and the cluster-wide rate limits (core/climit.c).
target_sources(chatcore PRIVATE
  core/api.c core/api_parse.c core/apikey.c core/httpd.c core/ctl.c core/bans.c
  core/chat_admin.c core/climit.c core/uconns.c core/adminstore.c)
chatd_unit_test(test_api)
chatd_unit_test(test_uconns)
# the token of a plain HTTP request (core/http.c http_token, core/httpd.c
# httpd_arg) with lws' header reads faked and allocation failures injected
chatd_unit_test(test_http_token)
chatd_alloc_fail(test_http_token)
target_link_options(test_http_token PRIVATE
  -Wl,--wrap=lws_hdr_total_length,--wrap=lws_hdr_copy,--wrap=lws_hdr_fragment_length,--wrap=lws_hdr_copy_fragment)
