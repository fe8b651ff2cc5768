/* test_client_ip: address and CIDR parsing (IPv4, IPv6, mapped, ports),
 * matching, the trusted-proxy list, the right-most untrusted
 * X-Forwarded-For rule; and the connection counts of limits.h. */
#define _GNU_SOURCE
#include "client_ip.h"
#include "connlimit.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parses(const char *s, const char *want)
{
    ip_net n;
    if (ip_parse(s, strlen(s), &n) < 0) return want == NULL;
    char out[CLIENT_IP_MAX];
    ip_format(&n, out);
    return want && strcmp(out, want) == 0;
}

static int in(const char *cidr, const char *ip)
{
    ip_net n, a;
    if (cidr_parse(cidr, strlen(cidr), &n) < 0 || ip_parse(ip, strlen(ip), &a) < 0) return -1;
    return cidr_match(&n, &a);
}

static void test_parse(void)
{
    CHECK(parses("1.2.3.4", "1.2.3.4"), "v4");
    CHECK(parses(" 1.2.3.4 ", "1.2.3.4"), "spaces");
    CHECK(parses("1.2.3.4:5678", "1.2.3.4"), "v4 with port");
    CHECK(parses("::1", "::1"), "v6");
    CHECK(parses("[2001:db8::1]:443", "2001:db8::1"), "bracketed v6 with port");
    CHECK(parses("[::1]", "::1"), "bracketed v6");
    CHECK(parses("::ffff:10.0.0.7", "10.0.0.7"), "v4-mapped v6 is v4");
    CHECK(parses("1.2.3", NULL) && parses("1.2.3.256", NULL) && parses("", NULL) &&
          parses("unknown", NULL) && parses("[::1", NULL) && parses("::1]", NULL), "garbage refused");
    ip_net n;
    CHECK(cidr_parse("10.0.0.0/33", 11, &n) < 0, "v4 prefix over 32");
    CHECK(cidr_parse("::/129", 6, &n) < 0, "v6 prefix over 128");
    CHECK(cidr_parse("10.0.0.0/", 9, &n) < 0 && cidr_parse("10.0.0.0/x", 10, &n) < 0, "bad prefix");
    CHECK(in("10.0.0.0/8", "10.255.1.2") == 1 && in("10.0.0.0/8", "11.0.0.1") == 0, "/8");
    CHECK(in("192.168.1.0/25", "192.168.1.127") == 1 && in("192.168.1.0/25", "192.168.1.128") == 0, "/25");
    CHECK(in("0.0.0.0/0", "8.8.8.8") == 1, "/0 matches every v4");
    CHECK(in("0.0.0.0/0", "::1") == 0, "a v4 net never matches v6");
    CHECK(in("fd00::/8", "fd12:3456::1") == 1 && in("fd00::/8", "fe80::1") == 0, "v6 /8");
    CHECK(in("2001:db8::/33", "2001:db8:7fff::1") == 1 && in("2001:db8::/33", "2001:db8:8000::1") == 0, "v6 /33");
    CHECK(in("127.0.0.1", "127.0.0.1") == 1 && in("127.0.0.1", "127.0.0.2") == 0, "single address");
    CHECK(in("10.0.0.0/8", "::ffff:10.1.1.1") == 1, "mapped peer matches a v4 net");
}

static const char *resolve(const char *peer, const char *xff)
{
    static char out[CLIENT_IP_MAX];
    ip_net p;
    ip_parse(peer, strlen(peer), &p);
    client_ip_resolve(&p, xff, out);
    return out;
}

static void test_resolve(void)
{
    char err[160];
    CHECK(client_ip_set_trusted(NULL, err, sizeof err) == 0, "no list");
    CHECK(!strcmp(resolve("9.9.9.9", "1.1.1.1"), "9.9.9.9"), "no trusted proxy: XFF ignored");
    CHECK(client_ip_set_trusted("127.0.0.1, 10.0.0.0/8,fd00::/8", err, sizeof err) == 0, "list: %s", err);
    CHECK(!strcmp(resolve("9.9.9.9", "1.1.1.1"), "9.9.9.9"), "untrusted peer: XFF ignored");
    CHECK(!strcmp(resolve("127.0.0.1", NULL), "127.0.0.1"), "trusted peer, no XFF");
    CHECK(!strcmp(resolve("127.0.0.1", "203.0.113.5"), "203.0.113.5"), "one hop");
    CHECK(!strcmp(resolve("127.0.0.1", "6.6.6.6, 203.0.113.5"), "203.0.113.5"),
          "a forged left entry is not believed");
    CHECK(!strcmp(resolve("127.0.0.1", "6.6.6.6, 203.0.113.5, 10.1.2.3"), "203.0.113.5"),
          "skips trusted hops from the right");
    CHECK(!strcmp(resolve("127.0.0.1", "10.0.0.9, 10.1.2.3"), "10.0.0.9"), "all trusted: left-most");
    CHECK(!strcmp(resolve("127.0.0.1", "203.0.113.5, garbage"), "127.0.0.1"),
          "garbage right of the client: the last good hop");
    CHECK(!strcmp(resolve("127.0.0.1", "[2001:db8::5]:1234"), "2001:db8::5"), "v6 client");
    CHECK(!strcmp(resolve("::ffff:127.0.0.1", "198.51.100.1"), "198.51.100.1"), "mapped trusted peer");
    CHECK(!strcmp(resolve("fd00::1", "198.51.100.1,fd00::2"), "198.51.100.1"), "v6 proxies");
    CHECK(client_ip_set_trusted("10.0.0.0/8,nope", err, sizeof err) < 0 && strstr(err, "nope"),
          "bad entry refused: %s", err);
    CHECK(client_ip_set_trusted("10.1.2.3/8", err, sizeof err) == 0, "host bits");
    CHECK(!strcmp(resolve("10.200.0.1", "198.51.100.1"), "198.51.100.1"), "host bits are masked");
    client_ip_free();
}

static void each_user(void *ud, const char *user, int64_t n)
{
    struct { long *total; int *users; } *x = ud;
    int i = atoi(user + 5);
    if (strncmp(user, "user-", 5) == 0 && n == i % 3 + 1) { *x->total += n; (*x->users)++; }
}

static void test_limits(void)
{
    connlimit_init(3, 2);
    CHECK(connlimit_acquire("1.1.1.1", "alice") == LIMIT_OK, "1st");
    CHECK(connlimit_acquire("1.1.1.1", "alice") == LIMIT_OK, "2nd");
    CHECK(connlimit_acquire("2.2.2.2", "alice") == LIMIT_USER, "3rd for alice: per user");
    CHECK(connlimit_count_ip("2.2.2.2") == 0, "a refused acquire takes nothing");
    CHECK(connlimit_acquire("1.1.1.1", "bob") == LIMIT_OK, "3rd from the ip");
    CHECK(connlimit_acquire("1.1.1.1", "carol") == LIMIT_IP, "4th from the ip");
    CHECK(connlimit_count_user("carol") == 0, "a refused acquire takes nothing (user)");
    connlimit_release("1.1.1.1", "alice");
    CHECK(connlimit_count_ip("1.1.1.1") == 2 && connlimit_count_user("alice") == 1, "release");
    CHECK(connlimit_acquire("1.1.1.1", "carol") == LIMIT_OK, "a freed slot is usable");
    connlimit_release("1.1.1.1", "alice");
    connlimit_release("1.1.1.1", "bob");
    connlimit_release("1.1.1.1", "carol");
    CHECK(connlimit_count_ip("1.1.1.1") == 0 && connlimit_count_user("alice") == 0, "back to 0");
    /* a loopback address is not limited per IP (local tools, benchmarks, a
     * local proxy whose clients all share its address); per user it is */
    for (int i = 0; i < 5; i++) {
        char lu[16];
        snprintf(lu, sizeof lu, "lo-%d", i);
        CHECK(connlimit_acquire(i % 2 ? "::1" : "127.0.0.2", lu) == LIMIT_OK, "loopback %d", i);
    }
    CHECK(connlimit_count_ip("127.0.0.2") == 0 && connlimit_count_ip("::1") == 0,
          "loopback not counted per IP");
    CHECK(connlimit_acquire("127.0.0.1", "lo-0") == LIMIT_OK &&
          connlimit_acquire("127.0.0.1", "lo-0") == LIMIT_USER, "per user still");
    for (int i = 0; i < 5; i++) {
        char lu[16];
        snprintf(lu, sizeof lu, "lo-%d", i);
        connlimit_release(i % 2 ? "::1" : "127.0.0.2", lu);
    }
    connlimit_release("127.0.0.1", "lo-0");
    CHECK(connlimit_count_user("lo-0") == 0 && connlimit_count_user("lo-1") == 0, "released");
    CHECK(ip_is_loopback("127.255.0.1") && ip_is_loopback("::1") && !ip_is_loopback("::2") &&
          !ip_is_loopback("128.0.0.1") && !ip_is_loopback("10.0.0.1") && !ip_is_loopback("x"),
          "ip_is_loopback");
    connlimit_init(0, 0);
    /* every user with connections, walked in parts, with their counts */
    char u[32];
    for (int i = 0; i < 100; i++) {
        snprintf(u, sizeof u, "user-%d", i);
        for (int j = 0; j <= i % 3; j++) CHECK(connlimit_acquire("3.3.3.3", u) == LIMIT_OK);
    }
    long total = 0;
    int users = 0;
    size_t cap = connlimit_each_user(0, 0, NULL, NULL);
    for (size_t from = 0; from < cap; from += 7) {
        struct { long *total; int *users; } x = { &total, &users };
        connlimit_each_user(from, from + 7, each_user, &x);
    }
    CHECK(users == 100 && total == 199, "each_user: %d users, %ld connections", users, total);
    for (int i = 0; i < 100; i++) {
        snprintf(u, sizeof u, "user-%d", i);
        for (int j = 0; j <= i % 3; j++) connlimit_release("3.3.3.3", u);
    }
    CHECK(connlimit_count_ip("3.3.3.3") == 0 && connlimit_count_user("user-5") == 0, "released");
    int refused = 0;
    for (int i = 0; i < 5000; i++) refused += connlimit_acquire("1.1.1.1", "alice") != LIMIT_OK;
    CHECK(refused == 0, "0 = unlimited: %d refused", refused);
    CHECK(connlimit_count_ip("1.1.1.1") == 5000, "5000 counted");
    for (int i = 0; i < 5000; i++) connlimit_release("1.1.1.1", "alice");
    CHECK(connlimit_count_ip("1.1.1.1") == 0, "all released");
    connlimit_free();
}

int main(void)
{
    test_parse();
    test_resolve();
    test_limits();
    return check_summary("test_client_ip");
}
