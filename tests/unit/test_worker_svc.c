/* inferno-worker-cpu in isolation: steps through the protocol reproduce
 * the reference greedy continuations, alone and batched; seeded sampling
 * does not depend on the batch; bad requests get errors; the binary runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <limits.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "inferno.pb-c.h"
#include "protocol.h"
#include "worker_service.h"
#include "test_util.h"

static model_desc *m;
static engine *e;
static worker_state *w;
static json_t *ref;

static int setup(void **state) {
    (void)state;
    char err[512];
    engine_config cfg = {.n_threads = 2, .block_size = 8, .n_blocks = 64};
    if (model_open(ref_path("tinyA-f32.gguf"), &m, err, sizeof err) || engine_open(m, &cfg, &e, err, sizeof err))
        return -1;
    w = worker_state_create(m, e, 151645, "tinyA-f32");
    ref = json_load_file(ref_path("tinyA-exact.ref.json"), 0, NULL);
    return w && ref ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    worker_state_free(w);
    engine_close(e);
    model_close(m);
    json_decref(ref);
    return 0;
}

static Inferno__WorkerResponse *call(Inferno__WorkerRequest *q) {
    size_t len = inferno__worker_request__get_packed_size(q), out_len;
    uint8_t *buf = malloc(len + 1), *out;
    inferno__worker_request__pack(q, buf);
    assert_int_equal(worker_handle(w, buf, len, &out, &out_len), 0);
    Inferno__WorkerResponse *r = inferno__worker_response__unpack(NULL, out_len, out);
    assert_non_null(r);
    free(buf), free(out);
    return r;
}

/* A sequence being generated through steps. */
typedef struct {
    uint64_t id;
    int32_t tokens[256], n, n_prompt, computed, table[16];
    Inferno__SamplingParams sp;
} gen_seq;

/* One step over the given sequences: each sends its uncomputed tokens;
 * sampled tokens are appended. Pipelined, a decoding sequence sends -1,
 * as the scheduler does before it knows the token the worker drew. */
static void step_as(gen_seq **seqs, int n, bool pipelined) {
    Inferno__WorkerRequest q = INFERNO__WORKER_REQUEST__INIT;
    Inferno__StepRequest sr = INFERNO__STEP_REQUEST__INIT;
    Inferno__StepSequence ss[8], *ptrs[8];
    int32_t pending[8];
    q.version = INFERNO_PROTOCOL_VERSION, q.body_case = INFERNO__WORKER_REQUEST__BODY_STEP, q.step = &sr;
    for (int i = 0; i < n; i++) {
        gen_seq *g = seqs[i];
        inferno__step_sequence__init(&ss[i]);
        ss[i].seq_id = g->id, ss[i].pos0 = g->computed;
        ss[i].tokens = g->tokens + g->computed, ss[i].n_tokens = (size_t)(g->n - g->computed);
        if (pipelined && g->computed > 0 && ss[i].n_tokens == 1)
            pending[i] = -1, ss[i].tokens = &pending[i];
        ss[i].block_table = g->table, ss[i].n_block_table = 16;
        ss[i].sample = true, ss[i].sampling = &g->sp;
        ss[i].n_prompt = g->n_prompt, ss[i].n_generated = g->n - g->n_prompt;
        ptrs[i] = &ss[i];
    }
    sr.seqs = ptrs, sr.n_seqs = (size_t)n;
    Inferno__WorkerResponse *r = call(&q);
    if (r->body_case != INFERNO__WORKER_RESPONSE__BODY_STEP)
        fail_msg("step failed: %s", r->body_case == INFERNO__WORKER_RESPONSE__BODY_ERROR ? r->error->message : "?");
    assert_int_equal(r->step->n_tokens, (size_t)n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(r->step->tokens[i]->seq_id, seqs[i]->id);
        seqs[i]->computed = seqs[i]->n;
        seqs[i]->tokens[seqs[i]->n++] = r->step->tokens[i]->token;
    }
    inferno__worker_response__free_unpacked(r, NULL);
}

static void step(gen_seq **seqs, int n) { step_as(seqs, n, false); }

static void load_prompt(gen_seq *g, uint64_t id, int prompt, int first_block) {
    memset(g, 0, sizeof *g);
    inferno__sampling_params__init(&g->sp);
    g->id = id;
    json_t *ids = json_object_get(json_array_get(json_object_get(ref, "prompts"), (size_t)prompt), "ids");
    for (size_t i = 0; i < json_array_size(ids); i++)
        g->tokens[g->n++] = (int32_t)json_integer_value(json_array_get(ids, i));
    g->n_prompt = g->n;
    for (int i = 0; i < 16; i++)
        g->table[i] = first_block + i;
}

static void expect_greedy(const gen_seq *g, int prompt) {
    json_t *greedy = json_object_get(json_array_get(json_object_get(ref, "prompts"), (size_t)prompt), "greedy");
    for (int32_t i = g->n_prompt; i < g->n; i++)
        assert_int_equal(g->tokens[i], json_integer_value(json_array_get(greedy, (size_t)(i - g->n_prompt))));
}

static void test_info(void **state) {
    (void)state;
    Inferno__WorkerRequest q = INFERNO__WORKER_REQUEST__INIT;
    Inferno__WorkerInfoRequest ir = INFERNO__WORKER_INFO_REQUEST__INIT;
    q.version = INFERNO_PROTOCOL_VERSION, q.request_id = 5, q.body_case = INFERNO__WORKER_REQUEST__BODY_INFO,
    q.info = &ir;
    Inferno__WorkerResponse *r = call(&q);
    assert_int_equal(r->request_id, 5);
    assert_int_equal(r->body_case, INFERNO__WORKER_RESPONSE__BODY_INFO);
    assert_int_equal(r->info->vocab_size, 151936);
    assert_int_equal(r->info->block_size, 8);
    assert_int_equal(r->info->n_blocks, 64);
    assert_string_equal(r->info->backend, "cpu");
    inferno__worker_response__free_unpacked(r, NULL);
}

static void test_greedy_alone_and_batched(void **state) {
    (void)state;
    gen_seq a, b;
    load_prompt(&a, 1, 0, 0);
    gen_seq *one[1] = {&a};
    for (int i = 0; i < 24; i++)
        step(one, 1);
    expect_greedy(&a, 0);
    /* batched: b's prefill shares a step with a's decodes */
    load_prompt(&a, 2, 1, 0);
    load_prompt(&b, 3, 2, 16);
    step(one, 1);
    gen_seq *both[2] = {&a, &b};
    for (int i = 0; i < 20; i++)
        step(both, 2);
    expect_greedy(&a, 1);
    expect_greedy(&b, 2);
}

/* Decode steps that name their token -1 (pipelined: the worker fills in
 * what it drew) give the reference continuations too. */
static void test_pipelined_steps(void **state) {
    (void)state;
    gen_seq a, b;
    load_prompt(&a, 20, 1, 0);
    load_prompt(&b, 21, 2, 16);
    gen_seq *both[2] = {&a, &b};
    for (int i = 0; i < 24; i++)
        step_as(both, 2, true);
    expect_greedy(&a, 1);
    expect_greedy(&b, 2);
}

static void test_seeded_sampling_ignores_batch(void **state) {
    (void)state;
    gen_seq a, b, other;
    load_prompt(&a, 10, 2, 0);
    load_prompt(&b, 11, 2, 16);
    load_prompt(&other, 12, 0, 32);
    a.sp.temperature = b.sp.temperature = 1.0f, a.sp.seed = b.sp.seed = 42, a.sp.top_p = b.sp.top_p = 0.9f;
    gen_seq *alone[1] = {&a}, *mixed[2] = {&other, &b};
    for (int i = 0; i < 12; i++) {
        step(alone, 1);
        step(mixed, 2);
    }
    assert_memory_equal(a.tokens, b.tokens, (size_t)a.n * sizeof *a.tokens);
}

static void expect_error(const uint8_t *buf, size_t len, const char *needle) {
    uint8_t *out;
    size_t out_len;
    assert_int_equal(worker_handle(w, buf, len, &out, &out_len), 0);
    Inferno__WorkerResponse *r = inferno__worker_response__unpack(NULL, out_len, out);
    assert_non_null(r);
    assert_int_equal(r->body_case, INFERNO__WORKER_RESPONSE__BODY_ERROR);
    if (!strstr(r->error->message, needle))
        fail_msg("error '%s' lacks '%s'", r->error->message, needle);
    inferno__worker_response__free_unpacked(r, NULL);
    free(out);
}

static void test_errors(void **state) {
    (void)state;
    expect_error((const uint8_t *)"\xff\xff\xff", 3, "malformed");
    Inferno__WorkerRequest q = INFERNO__WORKER_REQUEST__INIT;
    Inferno__StepRequest sr = INFERNO__STEP_REQUEST__INIT;
    Inferno__StepSequence ss = INFERNO__STEP_SEQUENCE__INIT, *p = &ss;
    int32_t toks[2] = {1, 2}, table[1] = {64};
    ss.tokens = toks, ss.n_tokens = 2, ss.block_table = table, ss.n_block_table = 1, ss.sample = true;
    sr.seqs = &p, sr.n_seqs = 1;
    q.version = 7, q.body_case = INFERNO__WORKER_REQUEST__BODY_STEP, q.step = &sr;
    uint8_t buf[256];
    size_t len = inferno__worker_request__pack(&q, buf);
    expect_error(buf, len, "version 7");
    q.version = INFERNO_PROTOCOL_VERSION;
    len = inferno__worker_request__pack(&q, buf);
    expect_error(buf, len, "block id 64 out of range");
    table[0] = 0, toks[1] = 200000;
    len = inferno__worker_request__pack(&q, buf);
    expect_error(buf, len, "outside the vocabulary");
    toks[1] = 2, ss.pos0 = -135274560; /* found by fuzz_worker_svc: the history was written before any check */
    len = inferno__worker_request__pack(&q, buf);
    expect_error(buf, len, "position -135274560 out of range");
    ss.pos0 = 0, ss.n_tokens = 0;
    len = inferno__worker_request__pack(&q, buf);
    expect_error(buf, len, "no tokens");
    /* a pending token where this worker drew none */
    toks[0] = -1, ss.n_tokens = 1, ss.pos0 = 5, ss.seq_id = 99;
    len = inferno__worker_request__pack(&q, buf);
    expect_error(buf, len, "no token drawn for position 5");
    toks[1] = -1, ss.n_tokens = 2, ss.pos0 = 0, toks[0] = 1;
    len = inferno__worker_request__pack(&q, buf);
    expect_error(buf, len, "outside the vocabulary");
}

static void test_process(void **state) {
    (void)state;
    char url[128];
    snprintf(url, sizeof url, "ipc:///tmp/inferno-test-worker-%d.ipc", (int)getpid());
    char *argv[] = {(char *)bin_path("inferno-worker-cpu"),
                    "--model",
                    (char *)ref_path("tinyA-q8_0.gguf"),
                    "--listen",
                    url,
                    "--threads",
                    "1",
                    "--kv-tokens",
                    "256",
                    NULL};
    pid_t pid;
    nng_socket s;
    assert_int_equal(spawn_and_dial(argv, url, &pid, &s), 0);
    Inferno__WorkerRequest q = INFERNO__WORKER_REQUEST__INIT;
    Inferno__WorkerInfoRequest ir = INFERNO__WORKER_INFO_REQUEST__INIT;
    q.version = INFERNO_PROTOCOL_VERSION, q.body_case = INFERNO__WORKER_REQUEST__BODY_INFO, q.info = &ir;
    uint8_t buf[64];
    size_t len = inferno__worker_request__pack(&q, buf);
    assert_int_equal(nng_send(s, buf, len, 0), 0);
    void *ans;
    size_t ans_len;
    assert_int_equal(nng_recv(s, &ans, &ans_len, NNG_FLAG_ALLOC), 0);
    Inferno__WorkerResponse *r = inferno__worker_response__unpack(NULL, ans_len, ans);
    nng_free(ans, ans_len);
    assert_non_null(r);
    assert_int_equal(r->body_case, INFERNO__WORKER_RESPONSE__BODY_INFO);
    assert_int_equal(r->info->n_blocks, 16);
    inferno__worker_response__free_unpacked(r, NULL);
    nng_close(s);
    kill(pid, SIGTERM);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_info),
        cmocka_unit_test(test_greedy_alone_and_batched),
        cmocka_unit_test(test_pipelined_steps),
        cmocka_unit_test(test_seeded_sampling_ignores_batch),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_process),
    };
    return cmocka_run_group_tests_name("worker_svc", tests, setup, teardown);
}
