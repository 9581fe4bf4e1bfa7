/* libFuzzer target for scheduler-svc's request handler: any bytes off the
 * wire get a parseable response, and valid submits, polls, cancels and
 * stats in any order keep the service consistent (no worker is attached,
 * so requests wait as orphans). With INFERNO_FUZZ_WRITE_SEEDS=DIR it only
 * writes a seed corpus of valid requests there and exits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inferno.pb-c.h"
#include "protocol.h"
#include "service.h"

static sched_service *svc;
static int inputs;

static void write_seed(const char *dir, const char *name, Inferno__SchedulerRequest *q) {
    q->version = INFERNO_PROTOCOL_VERSION;
    size_t n = inferno__scheduler_request__get_packed_size(q);
    uint8_t *buf = malloc(n + 1);
    inferno__scheduler_request__pack(q, buf);
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(buf, 1, n, f);
        fclose(f);
    }
    free(buf);
}

static void write_seeds(const char *dir) {
    int32_t prompt[] = {1, 2, 3, 4, 5}, stops[] = {7}, bias_ids[] = {3};
    float bias_values[] = {-1.5f};
    Inferno__SamplingParams sp = INFERNO__SAMPLING_PARAMS__INIT;
    sp.temperature = 0.7f, sp.top_k = 5, sp.seed = 42, sp.logprobs = 2;
    sp.n_bias_ids = sp.n_bias_values = 1, sp.bias_ids = bias_ids, sp.bias_values = bias_values;
    Inferno__SubmitRequest sub = INFERNO__SUBMIT_REQUEST__INIT;
    sub.client_id = 9, sub.request_id = 1, sub.n_prompt = 5, sub.prompt = prompt, sub.max_tokens = 4;
    sub.n_stop_ids = 1, sub.stop_ids = stops, sub.sampling = &sp;
    Inferno__SchedulerRequest q = INFERNO__SCHEDULER_REQUEST__INIT;
    q.body_case = INFERNO__SCHEDULER_REQUEST__BODY_SUBMIT, q.submit = &sub;
    write_seed(dir, "submit", &q);
    Inferno__CancelRequest can = INFERNO__CANCEL_REQUEST__INIT;
    can.client_id = 9, can.request_id = 1;
    q.body_case = INFERNO__SCHEDULER_REQUEST__BODY_CANCEL, q.cancel = &can;
    write_seed(dir, "cancel", &q);
    Inferno__PollRequest poll = INFERNO__POLL_REQUEST__INIT;
    poll.client_id = 9, poll.ack = 3, poll.wait_ms = 10;
    q.body_case = INFERNO__SCHEDULER_REQUEST__BODY_POLL, q.poll = &poll;
    write_seed(dir, "poll", &q);
    Inferno__StatsRequest st = INFERNO__STATS_REQUEST__INIT;
    q.body_case = INFERNO__SCHEDULER_REQUEST__BODY_STATS, q.stats = &st;
    write_seed(dir, "stats", &q);
    Inferno__WorkerInfo info = INFERNO__WORKER_INFO__INIT;
    info.block_size = 16, info.n_blocks = 8, info.vocab_size = 100, info.model = "m";
    Inferno__RegisterWorker reg = INFERNO__REGISTER_WORKER__INIT;
    reg.url = "inproc://w", reg.instance = 5, reg.info = &info;
    q.body_case = INFERNO__SCHEDULER_REQUEST__BODY_REGISTER_WORKER, q.register_worker = &reg;
    write_seed(dir, "register", &q);
}

static sched_service *fresh(void) {
    sched_service_config cfg;
    sched_service_defaults(&cfg);
    cfg.max_waiting = 16;
    return sched_service_create(&cfg);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *dir = getenv("INFERNO_FUZZ_WRITE_SEEDS");
    if (dir) {
        write_seeds(dir);
        exit(0);
    }
    svc = fresh();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *out;
    size_t len;
    if (sched_service_handle(svc, data, size, &out, &len))
        abort();
    Inferno__SchedulerResponse *r = inferno__scheduler_response__unpack(NULL, len, out);
    if (!r || r->version != INFERNO_PROTOCOL_VERSION)
        abort();
    inferno__scheduler_response__free_unpacked(r, NULL);
    free(out);
    if (++inputs % 512 == 0) { /* state of many inputs at once, then a clean start (and a leak check) */
        sched_service_free(svc);
        svc = fresh();
    }
    return 0;
}
