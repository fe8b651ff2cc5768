/* sendfloor: the machine's floor for chatd's fan-out cost. Measures the CPU
 * time the sending process spends per send() of one small (~150 byte)
 * WebSocket text frame on loopback TCP:
 *  - busy reader: one socket, a reader process pinned to another core drains
 *    it flat out (it is always awake), and per writev() of 8 such frames;
 *  - sleeping readers (chatd's real case): send() round-robin over N sockets
 *    (--sockets, default 100 and 1000), each drained by its own reader process
 *    that sleeps in epoll_wait on the other core, in bursts of --burst sends
 *    (one room's fan-out) paced to --rate sends/s, so every send wakes a
 *    different sleeping reader (checked: reader wakeups per send); and the
 *    same N sockets read by ONE process asleep in epoll (chatload's shape:
 *    the first send of a burst wakes it, the others find it awake).
 * A server can not deliver a frame for less than these; compare chatload's
 * "server CPU per delivery" with the sleeping-reader figure.
 *
 * usage: sendfloor [--count N] [--writer-cpu C] [--reader-cpu C] [--sockets N,N..]
 *                  [--burst B] [--rate R] [--json FILE] */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FRAME_LEN 150
#define BATCH 8

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pin(int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) < 0)
        perror("sched_setaffinity");
}

/* a server->client text frame: 2-byte header + 148 bytes of JSON-ish payload */
static void make_frame(unsigned char *f)
{
    f[0] = 0x81;
    f[1] = FRAME_LEN - 2;
    int n = snprintf((char *)f + 2, FRAME_LEN - 1,
                     "{\"type\":\"message\",\"room\":\"r1\",\"seq\":123456,\"id\":\"abc\",\"user\":\"u1\","
                     "\"name\":\"n\",\"body\":\"");
    memset(f + 2 + n, 'x', (size_t)(FRAME_LEN - 2 - n));
    memcpy(f + FRAME_LEN - 3, "\"}", 2);
    f[FRAME_LEN - 1] = '\n';
}

static int tcp_pair(int *wfd, pid_t *reader, int reader_cpu)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1) < 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        pin(reader_cpu);
        int c = accept(ls, NULL, NULL);
        static char b[1 << 16];
        while (c >= 0 && read(c, b, sizeof b) > 0) {
        }
        _exit(0);
    }
    close(ls);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0)
        return -1;
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    *wfd = s;
    *reader = pid;
    return 0;
}

struct result {
    double cpu_us_per_call, wall_us_per_call, cpu_us_per_frame;
};

static int run(int mode, long count, int reader_cpu, struct result *r)
{
    int fd;
    pid_t rd;
    if (tcp_pair(&fd, &rd, reader_cpu) < 0) {
        perror("tcp_pair");
        return -1;
    }
    unsigned char f[BATCH][FRAME_LEN];
    struct iovec iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        make_frame(f[i]);
        iov[i] = (struct iovec){f[i], FRAME_LEN};
    }
    /* warm up */
    for (int i = 0; i < 1000; i++)
        if (send(fd, f[0], FRAME_LEN, 0) != FRAME_LEN)
            return -1;
    double c0 = cpu_now(), w0 = wall_now();
    for (long i = 0; i < count; i++) {
        ssize_t w = mode == 0 ? send(fd, f[0], FRAME_LEN, 0) : writev(fd, iov, BATCH);
        if (w < 0) {
            perror(mode == 0 ? "send" : "writev");
            return -1;
        }
    }
    double c1 = cpu_now(), w1 = wall_now();
    close(fd);
    waitpid(rd, NULL, 0);
    r->cpu_us_per_call = (c1 - c0) * 1e6 / (double)count;
    r->wall_us_per_call = (w1 - w0) * 1e6 / (double)count;
    r->cpu_us_per_frame = r->cpu_us_per_call / (mode == 0 ? 1 : BATCH);
    return 0;
}


/* ---- sleeping readers: N sockets, one reader process each, asleep in epoll */

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* voluntary context switches of waited-for children (a reader that blocks
 * in epoll_wait and is woken counts one) */
static long children_nvcsw(void)
{
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    return ru.ru_nvcsw;
}

/* one reader process: sleeps in epoll_wait over its sockets, drains the
 * ready ones, exits when all of them reached EOF */
static void reader_loop(const int *fds, int nfds, int cpu)
{
    pin(cpu);
    int ep = epoll_create1(0);
    if (ep < 0)
        _exit(1);
    for (int i = 0; i < nfds; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0)
            _exit(1);
    }
    static char b[1 << 16];
    struct epoll_event got[64];
    int open = nfds;
    while (open > 0) {
        int n = epoll_wait(ep, got, 64, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            _exit(1);
        for (int i = 0; i < n; i++) {
            int fd = got[i].data.fd;
            for (;;) {
                ssize_t r = read(fd, b, sizeof b);
                if (r > 0)
                    continue;
                if (r < 0 && errno == EAGAIN)
                    break;
                close(fd); /* EOF or error */
                open--;
                break;
            }
        }
    }
    _exit(0);
}

struct eresult {
    int sockets, readers, burst;
    double rate, cpu_us_per_send, wakeups_per_send;
};

/* n sockets read by nr reader processes (socket i by reader i % nr); count
 * sends round-robin in bursts of `burst`, paced to `rate` sends/s; CPU
 * measured around the bursts only (the pacing sleep excluded) */
static int run_sleepers(int n, int nr, long count, int burst, double rate, int reader_cpu, struct eresult *r)
{
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1024) < 0 ||
        getsockname(ls, (struct sockaddr *)&a, &al) < 0)
        return -1;
    int *cli = calloc((size_t)n, sizeof *cli), *srv = calloc((size_t)n, sizeof *srv);
    pid_t *rd = calloc((size_t)nr, sizeof *rd);
    if (!cli || !srv || !rd)
        return -1;
    for (int i = 0; i < n; i++) { /* sender = accepted side, like chatd */
        cli[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (cli[i] < 0 || connect(cli[i], (struct sockaddr *)&a, sizeof a) < 0)
            return -1;
        srv[i] = accept(ls, NULL, NULL);
        if (srv[i] < 0)
            return -1;
        int one = 1;
        setsockopt(srv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(srv[i], F_SETFL, fcntl(srv[i], F_GETFL) | O_NONBLOCK);
    }
    close(ls);
    for (int i = 0; i < nr; i++) {
        rd[i] = fork();
        if (rd[i] < 0)
            return -1;
        if (rd[i] == 0) {
            int m = 0;
            for (int j = 0; j < n; j++) {
                close(srv[j]);
                if (j % nr != i)
                    close(cli[j]);
                else
                    cli[m++] = cli[j];
            }
            reader_loop(cli, m, reader_cpu);
        }
    }
    for (int i = 0; i < n; i++)
        close(cli[i]);
    unsigned char f[FRAME_LEN];
    make_frame(f);
    /* warm up: every socket once, then let every reader fall asleep */
    for (int i = 0; i < n; i++)
        if (send(srv[i], f, FRAME_LEN, 0) != FRAME_LEN)
            return -1;
    usleep(200000);
    long cs0 = children_nvcsw();
    double cpu = 0, period = (double)burst / rate, next = wall_now();
    long sent = 0;
    int k = 0;
    while (sent < count) {
        double c0 = thread_cpu();
        for (int b = 0; b < burst && sent < count; b++, sent++) {
            if (send(srv[k], f, FRAME_LEN, 0) != FRAME_LEN) {
                perror("send");
                return -1;
            }
            if (++k == n)
                k = 0;
        }
        cpu += thread_cpu() - c0;
        next += period;
        double w = next - wall_now();
        if (w > 0) {
            struct timespec ts = {(time_t)w, (long)((w - (double)(time_t)w) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    usleep(100000);
    for (int i = 0; i < n; i++)
        close(srv[i]);
    for (int i = 0; i < nr; i++)
        waitpid(rd[i], NULL, 0);
    long cs1 = children_nvcsw();
    free(cli);
    free(srv);
    free(rd);
    r->sockets = n;
    r->readers = nr;
    r->burst = burst;
    r->rate = rate;
    r->cpu_us_per_send = cpu * 1e6 / (double)count;
    /* minus one final switch per reader (its exit path) */
    r->wakeups_per_send = (double)(cs1 - cs0 - nr) / (double)count;
    return 0;
}

int main(int argc, char **argv)
{
    long count = 200000;
    int wcpu = 0, rcpu = 1;
    const char *json = NULL;
    char socklist[128] = "100,1000";
    int burst = 100;
    double rate = 50000;
    static struct option lo[] = {{"count", 1, 0, 'n'},   {"writer-cpu", 1, 0, 'w'},
                                 {"reader-cpu", 1, 0, 'r'}, {"json", 1, 0, 'j'},
                                 {"sockets", 1, 0, 's'}, {"burst", 1, 0, 'b'},
                                 {"rate", 1, 0, 'R'},    {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'n': count = atol(optarg); break;
        case 'w': wcpu = atoi(optarg); break;
        case 'r': rcpu = atoi(optarg); break;
        case 'j': json = optarg; break;
        case 's': snprintf(socklist, sizeof socklist, "%s", optarg); break;
        case 'b': burst = atoi(optarg); break;
        case 'R': rate = atof(optarg); break;
        default:
            fprintf(stderr, "usage: sendfloor [--count N] [--writer-cpu C] [--reader-cpu C] [--sockets N,N..]\n"
                            "                 [--burst B] [--rate SENDS_PER_S] [--json FILE]\n"
                            "  --sockets 0 skips the sleeping-reader mode\n");
            return 2;
        }
    }
    if (burst < 1 || rate <= 0) {
        fprintf(stderr, "sendfloor: --burst and --rate must be positive\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    pin(wcpu);
    struct result s, v;
    if (run(0, count, rcpu, &s) < 0 || run(1, count / BATCH, rcpu, &v) < 0)
        return 1;
    struct eresult e[8];
    int ne = 0;
    char *list = socklist, *tok;
    while ((tok = strsep(&list, ",")) && ne < 8) {
        int n = atoi(tok);
        if (n <= 0)
            continue;
        if ((rlim_t)(2 * n + 16) > rl.rlim_cur) {
            fprintf(stderr, "sendfloor: %d sockets need %d fds, RLIMIT_NOFILE is %lu\n", n, 2 * n + 16,
                    (unsigned long)rl.rlim_cur);
            return 1;
        }
        /* one reader per socket (every send wakes a process), then one reader
         * process for all of them (chatload's shape: one wake per burst) */
        for (int one = 0; one < 2 && ne < 8; one++) {
            if (run_sleepers(n, one ? 1 : n, count, burst, rate, rcpu, &e[ne]) < 0) {
                perror("sleeping readers");
                return 1;
            }
            ne++;
        }
    }
    printf("sendfloor: %d-byte frames on loopback TCP, writer cpu %d, reader cpu %d, %ld frames\n",
           FRAME_LEN, wcpu, rcpu, count);
    printf("send():        %.3f us CPU per call (%.3f us wall)  => floor %.0f frames/s per core\n",
           s.cpu_us_per_call, s.wall_us_per_call, 1e6 / s.cpu_us_per_call);
    printf("writev(x%d):    %.3f us CPU per call, %.3f us per frame  => floor %.0f frames/s per core\n", BATCH,
           v.cpu_us_per_call, v.cpu_us_per_frame, 1e6 / v.cpu_us_per_frame);
    for (int i = 0; i < ne; i++)
        printf("send() to %4d sockets, %4d reader(s) asleep in epoll: %.3f us CPU per call  => %.0f frames/s "
               "per core  (bursts of %d at %.0f sends/s; %.3f reader wakeups per send)\n",
               e[i].sockets, e[i].readers, e[i].cpu_us_per_send, 1e6 / e[i].cpu_us_per_send, e[i].burst,
               e[i].rate, e[i].wakeups_per_send);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            perror(json);
            return 1;
        }
        fprintf(f, "{\"frame_bytes\": %d, \"count\": %ld, \"send_cpu_us\": %.4f, \"send_wall_us\": %.4f, "
                   "\"writev_batch\": %d, \"writev_cpu_us_per_call\": %.4f, \"writev_cpu_us_per_frame\": %.4f, "
                   "\"sleeping_readers\": [",
                FRAME_LEN, count, s.cpu_us_per_call, s.wall_us_per_call, BATCH, v.cpu_us_per_call,
                v.cpu_us_per_frame);
        for (int i = 0; i < ne; i++)
            fprintf(f, "%s{\"sockets\": %d, \"readers\": %d, \"burst\": %d, \"rate\": %.0f, \"send_cpu_us\": %.4f, "
                       "\"reader_wakeups_per_send\": %.3f}",
                    i ? ", " : "", e[i].sockets, e[i].readers, e[i].burst, e[i].rate, e[i].cpu_us_per_send,
                    e[i].wakeups_per_send);
        fprintf(f, "]}\n");
        fclose(f);
    }
    return 0;
}
