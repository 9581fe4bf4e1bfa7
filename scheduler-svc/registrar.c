/* Worker registration loop (see registrar.h). */
#include "clock.h"
#include "registrar.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "inferno.pb-c.h"
#include "protocol.h"

struct registrar {
    nng_socket sock;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    uint8_t *msg[2]; /* packed RegisterWorker: [0] serving, [1] draining */
    size_t len[2];
    char *scheduler_url;
    volatile sig_atomic_t *drain, *drained;
    int drain_timeout_ms;
};

/* Waits up to ms, or less once a drain is asked for and not yet begun. */
static void registrar_wait(registrar *r, int ms, bool draining) {
    for (int waited = 0; waited < ms && !r->stop; waited += 100) {
        if (!draining && r->drain && *r->drain)
            return;
        struct timespec until = clock_deadline(100);
        pthread_cond_timedwait(&r->cv, &r->mu, &until);
    }
}

static void *registrar_main(void *arg) {
    registrar *r = arg;
    bool registered = false, draining = false;
    double drain_deadline = 0;
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        pthread_mutex_unlock(&r->mu);
        if (!draining && r->drain && *r->drain) {
            draining = true, drain_deadline = clock_now() + r->drain_timeout_ms / 1e3;
            fprintf(stderr, "worker: draining: finishing the requests it has, taking no new ones\n");
        }
        void *buf = NULL;
        size_t len = 0;
        int rv = nng_send(r->sock, r->msg[draining], r->len[draining], 0);
        if (rv == 0)
            rv = nng_recv(r->sock, &buf, &len, NNG_FLAG_ALLOC);
        Inferno__SchedulerResponse *resp = rv == 0 ? inferno__scheduler_response__unpack(NULL, len, buf) : NULL;
        const char *drained_why = NULL;
        if (resp && resp->body_case == INFERNO__SCHEDULER_RESPONSE__BODY_REGISTERED) {
            if (!registered || resp->registered->is_new)
                fprintf(stderr, "worker: registered with the scheduler at %s\n", r->scheduler_url);
            registered = true;
            if (draining && resp->registered->active == 0)
                drained_why = "no requests left";
        } else if (resp && resp->body_case == INFERNO__SCHEDULER_RESPONSE__BODY_ERROR) {
            fprintf(stderr, "worker: registration refused: %s\n", resp->error->message);
        } else if (registered) {
            fprintf(stderr, "worker: scheduler at %s not answering; retrying\n", r->scheduler_url);
            registered = false;
        }
        if (draining && !drained_why && !registered)
            drained_why = "the scheduler is not answering";
        if (draining && !drained_why && clock_now() > drain_deadline)
            drained_why = "drain timeout";
        if (drained_why) {
            fprintf(stderr, "worker: drained (%s); exiting\n", drained_why);
            *r->drained = 1;
        }
        if (resp)
            inferno__scheduler_response__free_unpacked(resp, NULL);
        if (buf)
            nng_free(buf, len);
        pthread_mutex_lock(&r->mu);
        if (drained_why)
            break;
        registrar_wait(r, draining ? 200 : 1000, draining);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

int registrar_start(const char *scheduler_url, const char *worker_url, const registrar_info *info, registrar **out,
                    char *err, size_t errlen) {
    registrar *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    Inferno__WorkerInfo wi = INFERNO__WORKER_INFO__INIT;
    wi.model = (char *)info->model, wi.backend = (char *)info->backend, wi.vocab_size = info->vocab_size;
    wi.block_size = info->block_size, wi.n_blocks = info->n_blocks, wi.eos_id = info->eos_id;
    wi.max_context = info->max_context;
    Inferno__RegisterWorker reg = INFERNO__REGISTER_WORKER__INIT;
    reg.instance = clock_start_id(); /* new per process start: the scheduler drops the old KV state */
    reg.url = (char *)worker_url, reg.info = &wi;
    Inferno__SchedulerRequest q = INFERNO__SCHEDULER_REQUEST__INIT;
    q.version = INFERNO_PROTOCOL_VERSION, q.request_id = 1;
    q.body_case = INFERNO__SCHEDULER_REQUEST__BODY_REGISTER_WORKER, q.register_worker = &reg;
    for (int draining = 0; draining < 2; draining++) {
        reg.draining = draining;
        r->len[draining] = inferno__scheduler_request__get_packed_size(&q);
        if ((r->msg[draining] = malloc(r->len[draining])))
            inferno__scheduler_request__pack(&q, r->msg[draining]);
    }
    r->scheduler_url = strdup(scheduler_url);
    r->drain = info->drain, r->drained = info->drained;
    r->drain_timeout_ms = info->drain_timeout_ms;
    int rv = 0;
    if (!r->msg[0] || !r->msg[1] || !r->scheduler_url || (rv = nng_req0_open(&r->sock))) {
        snprintf(err, errlen, "registrar: %s", rv ? nng_strerror(rv) : "out of memory");
        free(r->msg[0]), free(r->msg[1]), free(r->scheduler_url), free(r);
        return -1;
    }
    nng_socket_set_ms(r->sock, NNG_OPT_RECVTIMEO, 2000);
    nng_socket_set_ms(r->sock, NNG_OPT_SENDTIMEO, 2000);
    if ((rv = nng_dial(r->sock, scheduler_url, NULL, NNG_FLAG_NONBLOCK))) {
        snprintf(err, errlen, "registrar: dial %s: %s", scheduler_url, nng_strerror(rv));
        nng_close(r->sock);
        free(r->msg[0]), free(r->msg[1]), free(r->scheduler_url), free(r);
        return -1;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    pthread_create(&r->thread, NULL, registrar_main, r);
    *out = r;
    return 0;
}

void registrar_stop(registrar *r) {
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    nng_close(r->sock); /* ends a send or receive in progress */
    pthread_join(r->thread, NULL);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->msg[0]), free(r->msg[1]), free(r->scheduler_url), free(r);
}
