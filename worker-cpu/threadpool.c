#include "threadpool.h"

#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>

#define SPIN_ITERATIONS 200000 /* about a millisecond of pause instructions */

struct threadpool {
    int n;
    pthread_t *threads;
    threadpool_fn fn;
    void *ctx;
    atomic_uint generation; /* bumped for each job */
    atomic_int pending;     /* workers still running the current job */
    atomic_bool stop;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    int sleepers;
};

struct worker_arg {
    threadpool *tp;
    int index;
};

static void *worker_main(void *p) {
    struct worker_arg *arg = p;
    threadpool *tp = arg->tp;
    int index = arg->index;
    free(arg);
    unsigned seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&tp->generation, memory_order_acquire) == seen && !atomic_load(&tp->stop)) {
            if (++spins < SPIN_ITERATIONS) {
                _mm_pause();
                continue;
            }
            pthread_mutex_lock(&tp->mu);
            tp->sleepers++;
            while (atomic_load(&tp->generation) == seen && !atomic_load(&tp->stop))
                pthread_cond_wait(&tp->wake, &tp->mu);
            tp->sleepers--;
            pthread_mutex_unlock(&tp->mu);
        }
        if (atomic_load(&tp->stop))
            return NULL;
        seen = atomic_load(&tp->generation);
        tp->fn(tp->ctx, index, tp->n);
        atomic_fetch_sub_explicit(&tp->pending, 1, memory_order_release);
    }
}

threadpool *threadpool_create(int n_threads) {
    threadpool *tp = calloc(1, sizeof *tp);
    if (!tp)
        return NULL;
    tp->n = n_threads < 1 ? 1 : n_threads;
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->wake, NULL);
    tp->threads = calloc((size_t)tp->n, sizeof *tp->threads);
    for (int i = 1; i < tp->n; i++) {
        struct worker_arg *arg = malloc(sizeof *arg);
        *arg = (struct worker_arg){tp, i};
        pthread_create(&tp->threads[i], NULL, worker_main, arg);
    }
    return tp;
}

void threadpool_run(threadpool *tp, threadpool_fn fn, void *ctx) {
    if (tp->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    tp->fn = fn;
    tp->ctx = ctx;
    atomic_store(&tp->pending, tp->n - 1);
    pthread_mutex_lock(&tp->mu);
    atomic_fetch_add_explicit(&tp->generation, 1, memory_order_release);
    if (tp->sleepers)
        pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mu);
    fn(ctx, 0, tp->n);
    while (atomic_load_explicit(&tp->pending, memory_order_acquire) > 0)
        _mm_pause();
}

int threadpool_size(const threadpool *tp) { return tp->n; }

void threadpool_free(threadpool *tp) {
    if (!tp)
        return;
    pthread_mutex_lock(&tp->mu);
    atomic_store(&tp->stop, true);
    pthread_cond_broadcast(&tp->wake);
    pthread_mutex_unlock(&tp->mu);
    for (int i = 1; i < tp->n; i++)
        pthread_join(tp->threads[i], NULL);
    pthread_mutex_destroy(&tp->mu);
    pthread_cond_destroy(&tp->wake);
    free(tp->threads);
    free(tp);
}
