# wsedge: the network edge: RFC 6455 client framing (core/wsframe.c), the
# reader of WebSocket connections after the upgrade (core/wsread.c), the
# listening socket (core/listener.c), client IP and trusted proxies
# (core/client_ip.c), connection limits (core/connlimit.c).
target_sources(chatcore PRIVATE core/wsframe.c core/wsread.c core/listener.c core/client_ip.c
  core/connlimit.c)
chatd_unit_test(test_wsframe)
chatd_unit_test(test_client_ip)
