/* The worker's side of registration: a thread that announces the worker to
 * the scheduler every second, so a restarted scheduler learns of it again
 * within a second. Used by every worker backend.
 *
 * Draining (scale-down without dropping requests): once *drain becomes
 * non-zero (set from a SIGTERM handler, say) the announcements say
 * "draining", the scheduler places nothing new on the worker, and when it
 * reports no request left there (or the scheduler stops answering, or
 * drain_timeout_ms passes) the registrar sets *drained. */
#ifndef INFERNO_REGISTRAR_H
#define INFERNO_REGISTRAR_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *model, *backend;
    uint32_t vocab_size, max_context;
    int32_t block_size, n_blocks, eos_id;
    volatile sig_atomic_t *drain, *drained; /* both NULL: never drains */
    int drain_timeout_ms;
} registrar_info;

typedef struct registrar registrar;

/* Starts announcing that this worker serves steps at worker_url. */
int registrar_start(const char *scheduler_url, const char *worker_url, const registrar_info *info, registrar **out,
                    char *err, size_t errlen);
void registrar_stop(registrar *r);

#endif
