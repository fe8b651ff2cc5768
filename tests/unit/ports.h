/* ports: the loopback TCP ports the C unit tests' own servers take
 * (shared by the test helpers that start servers: redis_procs.h,
 * pg_procs.h, test_presence.c). Each helper has its default range; with
 * CHATD_TEST_UNIT_PORT_LO and CHATD_TEST_UNIT_PORT_HI set (both, LO <= HI),
 * every one takes its ports from that range instead (like the integration
 * harness' CHATD_TEST_PORT_LO/HI; tests/integration/README.md). */
#ifndef CHATD_TEST_PORTS_H
#define CHATD_TEST_PORTS_H
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The range to take ports from: the environment's, else [dlo, dhi]. */
static inline void test_port_range(int dlo, int dhi, int *lo, int *hi)
{
    const char *l = getenv("CHATD_TEST_UNIT_PORT_LO"), *h = getenv("CHATD_TEST_UNIT_PORT_HI");
    int el = l ? atoi(l) : 0, eh = h ? atoi(h) : 0;
    int ok = el > 0 && eh >= el && eh <= 65535;
    *lo = ok ? el : dlo;
    *hi = ok ? eh : dhi;
}

static inline int test_port_free(int p)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* A free port of the range (test_port_range), trying them from one the
 * pid and the time pick (parallel tests and runs rarely collide); -1 when
 * none is free. */
static inline int test_port_pick(int dlo, int dhi)
{
    static unsigned next;
    int lo, hi;
    test_port_range(dlo, dhi, &lo, &hi);
    unsigned span = (unsigned)(hi - lo + 1);
    if (!next) next = (unsigned)(getpid() * 37u + (unsigned)time(NULL));
    for (unsigned i = 0; i < span; i++) {
        int p = lo + (int)(next++ % span);
        if (test_port_free(p)) return p;
    }
    return -1;
}
#endif
