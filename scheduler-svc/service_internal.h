/* Internal state of the scheduler service, shared by service.c (the front:
 * clients, requests, events) and service_worker.c (worker threads). Every
 * field is guarded by sched_service.mu unless its comment says otherwise. */
#ifndef INFERNO_SCHED_SERVICE_INTERNAL_H
#define INFERNO_SCHED_SERVICE_INTERNAL_H

#include <nng/nng.h>
#include <pthread.h>
#include <stdbool.h>

#include "inferno.pb-c.h"
#include "scheduler.h"
#include "service.h"

#define SVC_FRONT_CONTEXTS      64
#define SVC_MAX_EVENTS_PER_POLL 8192
#define SVC_STEP_BUCKETS        12

typedef struct front_ctx front_ctx;
typedef struct svc_worker svc_worker;

/* A gateway (or any submitting process), known by the id it chose. */
typedef struct svc_client {
    uint64_t id;
    Inferno__SchedEvent **events; /* not yet acknowledged, seq increasing */
    int32_t n_events, cap_events;
    uint64_t next_seq;
    front_ctx *parked; /* a long poll waiting for events */
    uint64_t parked_ack;
    double parked_deadline, last_seen;
} svc_client;

typedef struct svc_request {
    svc_client *client;
    uint64_t client_request_id;
    uint64_t seq_id;                  /* its id inside the worker's sched; new after a failover */
    svc_worker *worker;               /* NULL: waiting for a live worker (orphan) */
    Inferno__SamplingParams sampling; /* bias arrays owned */
    int32_t stop_ids[SCHED_MAX_STOP_IDS], n_stop_ids;
    int32_t max_tokens, n_prompt;
    int32_t n_completion;
    /* an orphan's tokens so far, to submit to the next live worker */
    int32_t *tokens, n_tokens, n_generated;
    double orphaned_at;
} svc_request;

/* One step sent to a worker and not yet answered, on a context of its own
 * (a req socket's context has one request out at a time). */
typedef struct {
    svc_worker *w;
    nng_ctx ctx;
    nng_aio *aio; /* cancelled to stop the step */
    bool done;    /* the aio has completed (io_mu) */
    sched_step step;
    uint64_t request_id;
    double sent_at;
} svc_step_slot;

struct svc_worker {
    sched_service *svc;
    char *url, *model, *backend;
    uint64_t instance;
    int32_t block_size, n_blocks, eos_id, max_context;
    uint32_t vocab_size;
    sched *sch;
    bool alive;        /* false: lost; its thread is ending */
    bool draining;     /* leaving: finishes what it has, gets nothing new */
    volatile int lost; /* set by the pipe callback (any thread) */
    bool exited;       /* its thread has returned */
    pthread_t thread;
    pthread_cond_t wake;
    nng_socket sock;        /* the thread's own */
    svc_step_slot slots[2]; /* steps on their way: up to cfg.pipeline at once */
    pthread_mutex_t io_mu;  /* guards the slots' done flags */
    pthread_cond_t io_cv;
    uint64_t *released; /* finished sequences to tell the worker about */
    int32_t n_released, cap_released;
    uint64_t steps;
    svc_worker *next;
};

struct sched_service {
    sched_service_config cfg;
    pthread_mutex_t mu;
    bool stopping, started;
    svc_client **clients;
    int32_t n_clients, cap_clients;
    svc_request **requests;
    int32_t n_requests, cap_requests;
    svc_worker *workers; /* live and dead, newest first */
    uint64_t next_seq_id;
    uint64_t incarnation; /* random per process: clients notice a restart */
    /* counters beyond each sched's own (those die with their worker) */
    uint64_t requests_total, failovers, prompt_tokens, prefix_hit_tokens, generated_tokens, preemptions;
    uint64_t step_counts[SVC_STEP_BUCKETS + 1];
    double step_seconds_sum;
    nng_socket sock;
    front_ctx *front;
    pthread_t housekeeper;
};

/* service.c, called with mu held */
svc_request *svc_find_by_seq(sched_service *s, uint64_t seq_id);
void svc_push_token(sched_service *s, svc_request *r, const Inferno__SampledToken *t, int32_t token);
void svc_finish(sched_service *s, svc_request *r, Inferno__FinishReason why, const char *error, int32_t cached);
void svc_flush_polls(sched_service *s); /* answers parked polls that have events */
/* Places a request on the best live worker, or keeps it as an orphan;
 * returns 0, or SCHED_INVALID / SCHED_OVERLOADED from the worker's sched. */
int svc_place(sched_service *s, svc_request *r);
void svc_place_orphans(sched_service *s);
void svc_record_step(sched_service *s, double seconds);

/* service_worker.c */
/* Adds a registered worker and starts its thread (mu held). */
svc_worker *svc_worker_add(sched_service *s, const Inferno__RegisterWorker *reg, char *err, size_t errlen);
/* Takes a request off its worker: its blocks are freed at once and the
 * worker is told to drop the sequence's state with its next step (mu held). */
void svc_worker_drop(svc_request *r);
/* Marks a worker lost and moves its sequences to orphans (mu held). */
void svc_worker_lose(sched_service *s, svc_worker *w, const char *why);
/* Joins and frees workers whose threads ended (mu held; joins are quick). */
void svc_worker_reap(sched_service *s, bool all);

#endif
