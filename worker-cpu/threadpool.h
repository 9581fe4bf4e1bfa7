/* A fork-join thread pool: threadpool_run calls fn(ctx, i, n) on each of the
 * n threads (the caller is thread 0) and returns when all have finished.
 * Workers spin briefly between jobs (a decode step runs hundreds of short
 * jobs back to back) and then sleep on a condition variable. */
#ifndef INFERNO_THREADPOOL_H
#define INFERNO_THREADPOOL_H

typedef struct threadpool threadpool;
typedef void (*threadpool_fn)(void *ctx, int ith, int nth);

threadpool *threadpool_create(int n_threads);
void threadpool_run(threadpool *tp, threadpool_fn fn, void *ctx);
int threadpool_size(const threadpool *tp);
void threadpool_free(threadpool *tp);

#endif
