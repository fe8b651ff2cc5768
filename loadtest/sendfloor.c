/* sendfloor: the machine's floor for chatd's fan-out cost. Measures the CPU
 * time the sending process spends per send() of one small (~150 byte)
 * WebSocket text frame on a loopback TCP socket, and per writev() of 8 such
 * frames, while a reader process pinned to another core drains the socket.
 * A server can not deliver a frame for less than this; compare it with
 * chatload's "server CPU per delivery".
 *
 * usage: sendfloor [--count N] [--writer-cpu C] [--reader-cpu C] [--json FILE] */
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

int main(int argc, char **argv)
{
    long count = 200000;
    int wcpu = 0, rcpu = 1;
    const char *json = NULL;
    static struct option lo[] = {{"count", 1, 0, 'n'}, {"writer-cpu", 1, 0, 'w'},
                                 {"reader-cpu", 1, 0, 'r'}, {"json", 1, 0, 'j'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'n': count = atol(optarg); break;
        case 'w': wcpu = atoi(optarg); break;
        case 'r': rcpu = atoi(optarg); break;
        case 'j': json = optarg; break;
        default:
            fprintf(stderr, "usage: sendfloor [--count N] [--writer-cpu C] [--reader-cpu C] [--json FILE]\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    pin(wcpu);
    struct result s, v;
    if (run(0, count, rcpu, &s) < 0 || run(1, count / BATCH, rcpu, &v) < 0)
        return 1;
    printf("sendfloor: %d-byte frames on loopback TCP, writer cpu %d, reader cpu %d, %ld frames\n",
           FRAME_LEN, wcpu, rcpu, count);
    printf("send():        %.3f us CPU per call (%.3f us wall)  => floor %.0f frames/s per core\n",
           s.cpu_us_per_call, s.wall_us_per_call, 1e6 / s.cpu_us_per_call);
    printf("writev(x%d):    %.3f us CPU per call, %.3f us per frame  => floor %.0f frames/s per core\n", BATCH,
           v.cpu_us_per_call, v.cpu_us_per_frame, 1e6 / v.cpu_us_per_frame);
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            perror(json);
            return 1;
        }
        fprintf(f, "{\"frame_bytes\": %d, \"count\": %ld, \"send_cpu_us\": %.4f, \"send_wall_us\": %.4f, "
                   "\"writev_batch\": %d, \"writev_cpu_us_per_call\": %.4f, \"writev_cpu_us_per_frame\": %.4f}\n",
                FRAME_LEN, count, s.cpu_us_per_call, s.wall_us_per_call, BATCH, v.cpu_us_per_call,
                v.cpu_us_per_frame);
        fclose(f);
    }
    return 0;
}
