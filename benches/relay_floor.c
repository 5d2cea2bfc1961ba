// The CPU floor of relaying a paced stream on this machine, for benches/chunk_cost.sh.
//
//   relay_floor THREADS [CHUNKS] [PACE_US]
//
// A producer process writes a 100-byte chunk every PACE_US to one unix socket; this process relays
// each chunk to a second socket, which a consumer process reads. THREADS 1: one thread waits in
// epoll on the upstream socket and writes each chunk to the client itself (one wake per chunk).
// THREADS 2: a reader thread hands each chunk to a writer thread through an eventfd, as a relay
// whose upstream and client sockets live on different event loops must (two wakes per chunk).
// Prints one JSON line: the relay process's CPU time per chunk.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { CHUNK = 100 };
static int chunks = 2000;
static long pace_us = 2500;
static int up[2], down[2], efd;
static char queue[1 << 16];
static size_t queued;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static double seconds(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int watch(int fd) {
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    return ep;
}

static void *reader(void *arg) {
    (void)arg;
    int ep = watch(up[1]);
    char buf[4096];
    long got = 0;
    while (got < (long)CHUNK * chunks) {
        struct epoll_event ev;
        epoll_wait(ep, &ev, 1, -1);
        ssize_t r = read(up[1], buf, sizeof buf);
        if (r <= 0) break;
        pthread_mutex_lock(&lock);
        if (queued + r <= sizeof queue) { memcpy(queue + queued, buf, r); queued += r; }
        pthread_mutex_unlock(&lock);
        uint64_t one = 1;
        if (write(efd, &one, 8) != 8) break;
        got += r;
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: relay_floor THREADS [CHUNKS] [PACE_US]\n"); return 2; }
    int threads = atoi(argv[1]);
    if (argc > 2) chunks = atoi(argv[2]);
    if (argc > 3) pace_us = atol(argv[3]);
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, up) || socketpair(AF_UNIX, SOCK_STREAM, 0, down)) return 1;
    if (fork() == 0) {  // producer: one chunk every pace_us, on an absolute schedule
        char c[CHUNK];
        memset(c, 'x', sizeof c);
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        for (int i = 0; i < chunks; i++) {
            t.tv_nsec += pace_us * 1000;
            while (t.tv_nsec >= 1000000000) { t.tv_nsec -= 1000000000; t.tv_sec++; }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
            if (write(up[0], c, sizeof c) != sizeof c) _exit(1);
        }
        _exit(0);
    }
    if (fork() == 0) {  // consumer
        char b[65536];
        long total = 0;
        while (total < (long)CHUNK * chunks) {
            ssize_t r = read(down[0], b, sizeof b);
            if (r <= 0) break;
            total += r;
        }
        _exit(0);
    }
    double c0 = seconds(CLOCK_PROCESS_CPUTIME_ID), w0 = seconds(CLOCK_MONOTONIC);
    char buf[65536];
    long got = 0;
    if (threads == 1) {
        int ep = watch(up[1]);
        while (got < (long)CHUNK * chunks) {
            struct epoll_event ev;
            epoll_wait(ep, &ev, 1, -1);
            ssize_t r = read(up[1], buf, sizeof buf);
            if (r <= 0 || write(down[1], buf, r) != r) break;
            got += r;
        }
    } else {
        efd = eventfd(0, 0);
        pthread_t th;
        pthread_create(&th, NULL, reader, NULL);
        int ep = watch(efd);
        while (got < (long)CHUNK * chunks) {
            struct epoll_event ev;
            uint64_t v;
            epoll_wait(ep, &ev, 1, -1);
            if (read(efd, &v, 8) != 8) break;
            pthread_mutex_lock(&lock);
            size_t n = queued;
            memcpy(buf, queue, n);
            queued = 0;
            pthread_mutex_unlock(&lock);
            if (write(down[1], buf, n) != (ssize_t)n) break;
            got += n;
        }
        pthread_join(th, NULL);
    }
    double c1 = seconds(CLOCK_PROCESS_CPUTIME_ID), w1 = seconds(CLOCK_MONOTONIC);
    printf("{\"threads\": %d, \"chunks\": %d, \"pace_us\": %ld, \"cpu_us_per_chunk\": %.2f, \"wall_s\": %.2f}\n",
           threads, chunks, pace_us, (c1 - c0) * 1e6 / chunks, w1 - w0);
    while (wait(NULL) > 0) {}
    return 0;
}
