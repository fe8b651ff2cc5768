/* client_ip: who the client is, for limits and logs. The peer address of
 * the TCP connection, or, when that peer is a trusted proxy
 * (CHAT_TRUSTED_PROXIES: comma-separated IPv4/IPv6 addresses and CIDRs),
 * the right-most address of X-Forwarded-For that is not a trusted proxy
 * (entries to its left can be forged by the client; a proxy appends the
 * address it saw); the left-most one when every entry is trusted; a
 * malformed entry stops the walk at the last address read before it.
 * IPv4-mapped IPv6 addresses count as IPv4.
 * Owns: the parsed trusted-proxy list (process-wide, set at start). */
#ifndef CHATD_CLIENT_IP_H
#define CHATD_CLIENT_IP_H
#include <stddef.h>
#include <stdint.h>

#define CLIENT_IP_MAX 46    /* INET6_ADDRSTRLEN */

typedef struct ip_net {
    int family;             /* 4 or 6 */
    uint8_t addr[16];
    int prefix;             /* bits */
} ip_net;

/* Parses one address, optionally with a port ("1.2.3.4", "::1",
 * "[::1]:80", "1.2.3.4:5678"). 0 ok. */
int ip_parse(const char *s, size_t len, ip_net *out);
/* Parses "a.b.c.d/n" or an address (prefix = all bits). 0 ok. */
int cidr_parse(const char *s, size_t len, ip_net *out);
int cidr_match(const ip_net *net, const ip_net *ip);
void ip_format(const ip_net *ip, char out[CLIENT_IP_MAX]);
/* 1 when the address text is a loopback address (127.0.0.0/8, ::1, or
 * IPv4-mapped 127.x), 0 otherwise (also for text that is not an address) */
int ip_is_loopback(const char *s);

/* Sets the trusted proxies from a comma-separated list (NULL/"" = none).
 * -1 with err on a bad entry. */
int client_ip_set_trusted(const char *list, char *err, size_t errlen);
void client_ip_free(void);
/* The client address from the peer address and the X-Forwarded-For value
 * (NULL when absent). out gets the canonical text form. */
void client_ip_resolve(const ip_net *peer, const char *xff, char out[CLIENT_IP_MAX]);

#endif
