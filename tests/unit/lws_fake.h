/* lws_fake.h: the lws calls conn.c makes, faked for unit tests of real
 * conn objects without a socket (link with
 * -Wl,--wrap=lws_get_socket_fd,--wrap=lws_set_timeout,--wrap=lws_callback_on_writable):
 * no descriptor, no timeout, and WRITEABLE never comes, so what is queued
 * stays queued. Included by one test file each. */
#ifndef CHATD_TEST_LWS_FAKE_H
#define CHATD_TEST_LWS_FAKE_H
#include <libwebsockets.h>

int __wrap_lws_get_socket_fd(struct lws *wsi);
int __wrap_lws_get_socket_fd(struct lws *wsi) { (void)wsi; return -1; }
void __wrap_lws_set_timeout(struct lws *wsi, enum pending_timeout reason, int secs);
void __wrap_lws_set_timeout(struct lws *wsi, enum pending_timeout reason, int secs)
{
    (void)wsi; (void)reason; (void)secs;
}
int __wrap_lws_callback_on_writable(struct lws *wsi);
int __wrap_lws_callback_on_writable(struct lws *wsi) { (void)wsi; return 0; }

#endif
