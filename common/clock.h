/* Time for services and tools: a monotonic clock for measuring, absolute
 * deadlines for pthread_cond_timedwait (which uses CLOCK_REALTIME), and a
 * value that differs per process start (ids that must not repeat across
 * restarts). */
#ifndef INFERNO_CLOCK_H
#define INFERNO_CLOCK_H

#include <stdint.h>
#include <time.h>
#include <unistd.h>

/* Seconds on the monotonic clock. */
static inline double clock_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The wall-clock instant ms milliseconds from now, for timed waits. */
static inline struct timespec clock_deadline(long ms) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L)
        t.tv_sec++, t.tv_nsec -= 1000000000L;
    return t;
}

/* Wall-clock seconds in the high bits, nanoseconds and the pid below: new
 * with every process start, and increasing from one start to the next. */
static inline uint64_t clock_start_id(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return ((uint64_t)t.tv_sec << 32) ^ ((uint64_t)t.tv_nsec << 2) ^ (uint64_t)getpid();
}

#endif
