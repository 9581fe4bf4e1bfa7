/* The worker as a service (CPU or CUDA engine): answers WorkerRequest messages (info, one
 * batched step) from the scheduler over an nng REP socket.
 *
 * Threading: one thread receives, runs the step on the engine (whose own
 * pool parallelizes it) and replies; steps are strictly sequential, as the
 * engine and its KV cache are one. The worker keeps, per sequence, only the
 * token history that sampling penalties need; the k-th sampled token of a
 * sequence draws from a generator seeded by (seed, k), so seeded output
 * does not depend on batching, preemption or which worker runs it. */
#ifndef INFERNO_WORKER_SERVICE_H
#define INFERNO_WORKER_SERVICE_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "model.h"

typedef struct worker_state worker_state;

worker_state *worker_state_create(const model_desc *m, engine *e, int32_t eos_id, const char *model_name);
void worker_state_free(worker_state *w);

/* One packed WorkerRequest in, one packed WorkerResponse out (malloc'ed).
 * Bad requests get an Error response; -1 only when out of memory. */
int worker_handle(worker_state *w, const uint8_t *req, size_t len, uint8_t **resp, size_t *resp_len);

/* Serves on url until *stop becomes non-zero; calls on_ready(ctx) (if
 * given) once listening. */
int worker_serve(worker_state *w, const char *url, void (*on_ready)(void *), void *ctx, volatile sig_atomic_t *stop,
                 char *err, size_t errlen);

#endif
