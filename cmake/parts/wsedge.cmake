# wsedge: the network edge: RFC 6455 client framing (core/wsframe.c), the
# reader of WebSocket connections after the upgrade (core/wsread.c).
target_sources(chatcore PRIVATE core/wsframe.c core/wsread.c core/listener.c)
chatd_unit_test(test_wsframe)
