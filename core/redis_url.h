/* redis_url: the one parser of CHAT_REDIS_URL (used by the bus and
 * presence through redis_client). Forms:
 *   redis://[[user]:password@]host[:port][/db][?options]      one Redis
 *   rediss://...                                               one Redis, TLS
 *   redis+cluster://[[user]:password@]host[:port][,host[:port]...][?options]
 *   rediss+cluster://...                                       Cluster, TLS
 *   unix://[[user]:password@]/path/to/redis.sock[?db=N]         one Redis, its
 *                                   unix socket (a Redis on the same host: no
 *                                   TCP stack per command; docs/cost.md 20)
 * host is a name, an IPv4 literal or a bracketed IPv6 literal ([::1]); user
 * and password are percent-decoded; port defaults to 6379; db (standalone
 * only: SELECT is an error on a Cluster) defaults to 0. Options (TLS only,
 * named as redis-py names them): ssl_ca_certs=<file>, ssl_certfile=<file>,
 * ssl_keyfile=<file>, ssl_cert_reqs=required|none. Anything else is refused
 * with a message saying what is wrong. A unix socket's path (absolute, at
 * most REDIS_UNIX_PATH_MAX bytes) is kept in redis_addr.host with port 0;
 * its db is the db option (redis-py's form), its only option.
 * Owns nothing (plain value types). */
#ifndef CHATD_REDIS_URL_H
#define CHATD_REDIS_URL_H
#include <stddef.h>

#define REDIS_URL_MAX_SEEDS 16
#define REDIS_HOST_MAX 255
#define REDIS_UNIX_PATH_MAX 107         /* sun_path, with its NUL */

typedef struct redis_addr {
    char host[REDIS_HOST_MAX + 1];  /* without brackets; a unix socket's path */
    int port;                       /* 0: host is a unix socket's path */
} redis_addr;

typedef struct redis_url {
    int tls;                        /* rediss:// */
    int cluster;                    /* redis+cluster:// */
    redis_addr seeds[REDIS_URL_MAX_SEEDS];
    int nseeds;                     /* 1 in standalone mode */
    int db;
    char user[128];
    char pass[256];
    char ca_file[256], cert_file[256], key_file[256];
    int verify;                     /* verify the server certificate (default 1) */
} redis_url;

/* 0, or -1 with a message "redis url: ..." in err. */
int redis_url_parse(const char *url, redis_url *out, char *err, size_t errlen);

/* "host:port" ("[v6]:port" for IPv6, "unix:/path" for a socket) of a into out. */
void redis_addr_format(const redis_addr *a, char *out, size_t n);

#endif
