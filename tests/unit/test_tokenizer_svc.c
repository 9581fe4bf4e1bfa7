/* tokenizer-svc in isolation: the request handler (every request type,
 * malformed and mismatched messages), concurrent clients over nng against
 * an in-process service, and the real tokenizer-svc binary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <limits.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "inferno.pb-c.h"
#include "protocol.h"
#include "tokenizer_service.h"
#include "test_util.h"

static tokenizer *tk;
static jinja_template *tmpl;
static tokenizer_service_state st;
static json_t *ref, *chat;

static int setup(void **state) {
    (void)state;
    char err[512];
    if (tokenizer_load_file(ref_path("tinyA-q8_0.gguf"), &tk, err, sizeof err))
        return -1;
    const char *src = tokenizer_chat_template(tk);
    tmpl = jinja_compile(src, strlen(src), err, sizeof err);
    st = (tokenizer_service_state){tk, tmpl, "tinyA-q8_0.gguf"};
    ref = json_load_file(ref_path("tokenizer_ref.json"), 0, NULL);
    chat = json_load_file(ref_path("chat_ref.json"), 0, NULL);
    return tmpl && ref && chat ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    jinja_free(tmpl);
    tokenizer_free(tk);
    json_decref(ref);
    json_decref(chat);
    return 0;
}

static uint8_t *pack_request(Inferno__TokenizerRequest *q, size_t *len) {
    *len = inferno__tokenizer_request__get_packed_size(q);
    uint8_t *buf = malloc(*len + 1);
    inferno__tokenizer_request__pack(q, buf);
    return buf;
}

/* Packs q, runs the handler, unpacks the answer (caller frees). */
static Inferno__TokenizerResponse *roundtrip(Inferno__TokenizerRequest *q) {
    size_t len, out_len;
    uint8_t *req = pack_request(q, &len), *out;
    assert_int_equal(tokenizer_service_handle(&st, req, len, &out, &out_len), 0);
    Inferno__TokenizerResponse *r = inferno__tokenizer_response__unpack(NULL, out_len, out);
    assert_non_null(r);
    free(req);
    free(out);
    return r;
}

static Inferno__TokenizerRequest base_request(uint64_t id) {
    Inferno__TokenizerRequest q = INFERNO__TOKENIZER_REQUEST__INIT;
    q.version = INFERNO_PROTOCOL_VERSION;
    q.request_id = id;
    return q;
}

static void test_handle_tokenize_detokenize(void **state) {
    (void)state;
    Inferno__TokenizerRequest q = base_request(42);
    Inferno__TokenizeRequest t = INFERNO__TOKENIZE_REQUEST__INIT;
    const char *text = "<|im_start|>user\nHello, world!<|im_end|>";
    t.text.data = (uint8_t *)text, t.text.len = strlen(text), t.parse_special = true;
    q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_TOKENIZE, q.tokenize = &t;
    Inferno__TokenizerResponse *r = roundtrip(&q);
    assert_int_equal(r->request_id, 42);
    assert_int_equal(r->body_case, INFERNO__TOKENIZER_RESPONSE__BODY_TOKENIZE);
    assert_int_equal(r->tokenize->ids[0], 151644);
    assert_int_equal(r->tokenize->ids[r->tokenize->n_ids - 1], 151645);

    Inferno__DetokenizeRequest d = INFERNO__DETOKENIZE_REQUEST__INIT;
    d.ids = r->tokenize->ids, d.n_ids = r->tokenize->n_ids;
    q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_DETOKENIZE, q.detokenize = &d;
    Inferno__TokenizerResponse *r2 = roundtrip(&q);
    assert_int_equal(r2->body_case, INFERNO__TOKENIZER_RESPONSE__BODY_DETOKENIZE);
    assert_int_equal(r2->detokenize->text.len, strlen(text));
    assert_memory_equal(r2->detokenize->text.data, text, strlen(text));
    d.skip_special = true;
    Inferno__TokenizerResponse *r3 = roundtrip(&q);
    assert_int_equal(r3->detokenize->text.len, strlen("user\nHello, world!"));
    inferno__tokenizer_response__free_unpacked(r, NULL);
    inferno__tokenizer_response__free_unpacked(r2, NULL);
    inferno__tokenizer_response__free_unpacked(r3, NULL);
}

/* Every conversation of chat_ref.json renders and tokenizes as transformers does. */
static void test_handle_apply_template(void **state) {
    (void)state;
    size_t i;
    json_t *conv;
    json_array_foreach(chat, i, conv) {
        json_t *vars = json_deep_copy(conv);
        json_object_del(vars, "rendered");
        json_object_del(vars, "ids");
        char *vars_json = json_dumps(vars, 0);
        Inferno__TokenizerRequest q = base_request(i);
        Inferno__ApplyTemplateRequest a = INFERNO__APPLY_TEMPLATE_REQUEST__INIT;
        a.vars_json.data = (uint8_t *)vars_json, a.vars_json.len = strlen(vars_json), a.tokenize = true;
        q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_APPLY_TEMPLATE, q.apply_template = &a;
        Inferno__TokenizerResponse *r = roundtrip(&q);
        assert_int_equal(r->body_case, INFERNO__TOKENIZER_RESPONSE__BODY_APPLY_TEMPLATE);
        json_t *want = json_object_get(conv, "rendered"), *want_ids = json_object_get(conv, "ids");
        assert_int_equal(r->apply_template->text.len, json_string_length(want));
        assert_memory_equal(r->apply_template->text.data, json_string_value(want), json_string_length(want));
        assert_int_equal(r->apply_template->n_ids, json_array_size(want_ids));
        for (size_t k = 0; k < r->apply_template->n_ids; k++)
            assert_int_equal(r->apply_template->ids[k], json_integer_value(json_array_get(want_ids, k)));
        inferno__tokenizer_response__free_unpacked(r, NULL);
        free(vars_json);
        json_decref(vars);
    }
}

static void expect_error(Inferno__TokenizerRequest *q, Inferno__ErrorCode code, const char *needle) {
    Inferno__TokenizerResponse *r = roundtrip(q);
    assert_int_equal(r->body_case, INFERNO__TOKENIZER_RESPONSE__BODY_ERROR);
    assert_int_equal(r->error->code, code);
    if (!strstr(r->error->message, needle))
        fail_msg("error '%s' lacks '%s'", r->error->message, needle);
    inferno__tokenizer_response__free_unpacked(r, NULL);
}

static void test_handle_errors(void **state) {
    (void)state;
    Inferno__TokenizerRequest q = base_request(7);
    expect_error(&q, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "no body");
    q.version = 99;
    Inferno__TokenizerInfoRequest info = INFERNO__TOKENIZER_INFO_REQUEST__INIT;
    q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_INFO, q.info = &info;
    expect_error(&q, INFERNO__ERROR_CODE__ERROR_VERSION, "version 99");
    q.version = INFERNO_PROTOCOL_VERSION;
    int32_t bad_ids[2] = {5, 151936};
    Inferno__DetokenizeRequest d = INFERNO__DETOKENIZE_REQUEST__INIT;
    d.ids = bad_ids, d.n_ids = 2;
    q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_DETOKENIZE, q.detokenize = &d;
    expect_error(&q, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "151936 out of range");
    Inferno__ApplyTemplateRequest a = INFERNO__APPLY_TEMPLATE_REQUEST__INIT;
    a.vars_json.data = (uint8_t *)"[1,2", a.vars_json.len = 4;
    q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_APPLY_TEMPLATE, q.apply_template = &a;
    expect_error(&q, INFERNO__ERROR_CODE__ERROR_BAD_REQUEST, "not a JSON object");
    a.vars_json.data = (uint8_t *)"{\"messages\": 5}", a.vars_json.len = 15;
    expect_error(&q, INFERNO__ERROR_CODE__ERROR_TEMPLATE, "int object' has no element 0");

    /* garbage bytes: an error response with request id 0, never a crash */
    uint8_t junk[64];
    uint64_t x = 1;
    for (int round = 0; round < 2000; round++) {
        size_t n = (size_t)round % sizeof junk;
        for (size_t i = 0; i < n; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            junk[i] = (uint8_t)(x >> 56);
        }
        uint8_t *out;
        size_t out_len;
        assert_int_equal(tokenizer_service_handle(&st, junk, n, &out, &out_len), 0);
        Inferno__TokenizerResponse *r = inferno__tokenizer_response__unpack(NULL, out_len, out);
        assert_non_null(r);
        inferno__tokenizer_response__free_unpacked(r, NULL);
        free(out);
    }
}

/* ---- over nng ---- */

static char url[128];

struct client_arg {
    int id;
    int ok;
};

/* One client: its own REQ socket, 100 tokenize requests of reference
 * strings, each answer checked against the reference ids. */
static void *client_main(void *p) {
    struct client_arg *c = p;
    nng_socket s;
    if (nng_req0_open(&s) || nng_dial(s, url, NULL, 0))
        return NULL;
    nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, 10000);
    size_t n_ref = json_array_size(ref);
    for (int k = 0; k < 100; k++) {
        size_t idx = (size_t)(c->id * 131 + k * 17) % n_ref;
        json_t *row = json_array_get(ref, idx), *text = json_object_get(row, "text"),
               *ids = json_object_get(row, "ids");
        Inferno__TokenizerRequest q = base_request((uint64_t)c->id << 32 | (uint64_t)k);
        Inferno__TokenizeRequest t = INFERNO__TOKENIZE_REQUEST__INIT;
        t.text.data = (uint8_t *)json_string_value(text), t.text.len = json_string_length(text), t.parse_special = true;
        q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_TOKENIZE, q.tokenize = &t;
        size_t len;
        uint8_t *buf = pack_request(&q, &len);
        int rv = nng_send(s, buf, len, 0);
        free(buf);
        void *ans;
        size_t ans_len;
        if (rv || nng_recv(s, &ans, &ans_len, NNG_FLAG_ALLOC))
            break;
        Inferno__TokenizerResponse *r = inferno__tokenizer_response__unpack(NULL, ans_len, ans);
        nng_free(ans, ans_len);
        bool good = r && r->request_id == q.request_id && r->body_case == INFERNO__TOKENIZER_RESPONSE__BODY_TOKENIZE &&
                    r->tokenize->n_ids == json_array_size(ids);
        for (size_t i = 0; good && i < r->tokenize->n_ids; i++)
            good = r->tokenize->ids[i] == json_integer_value(json_array_get(ids, i));
        if (r)
            inferno__tokenizer_response__free_unpacked(r, NULL);
        if (!good)
            break;
        c->ok++;
    }
    nng_close(s);
    return NULL;
}

static void test_concurrent_clients(void **state) {
    (void)state;
    snprintf(url, sizeof url, "ipc:///tmp/inferno-test-tok-%d.ipc", (int)getpid());
    tokenizer_service *svc;
    char err[256];
    assert_int_equal(tokenizer_service_start(&st, url, 4, &svc, err, sizeof err), 0);
    enum { CLIENTS = 8 };
    pthread_t th[CLIENTS];
    struct client_arg args[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        args[i] = (struct client_arg){i, 0};
        pthread_create(&th[i], NULL, client_main, &args[i]);
    }
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].ok, 100);
    }
    tokenizer_service_stop(svc);
}

/* The binary: starts, answers an info request, exits 0 on SIGTERM. */
static void test_service_process(void **state) {
    (void)state;
    snprintf(url, sizeof url, "ipc:///tmp/inferno-test-toksvc-%d.ipc", (int)getpid());
    char *argv[] = {(char *)bin_path("tokenizer-svc"), "--model", (char *)ref_path("tinyA-q8_0.gguf"), "--listen", url,
                    "--workers", "2", NULL};
    pid_t pid;
    nng_socket s;
    assert_int_equal(spawn_and_dial(argv, url, &pid, &s), 0);
    Inferno__TokenizerRequest q = base_request(9);
    Inferno__TokenizerInfoRequest info = INFERNO__TOKENIZER_INFO_REQUEST__INIT;
    q.body_case = INFERNO__TOKENIZER_REQUEST__BODY_INFO, q.info = &info;
    size_t len;
    uint8_t *buf = pack_request(&q, &len);
    assert_int_equal(nng_send(s, buf, len, 0), 0);
    free(buf);
    void *ans;
    size_t ans_len;
    assert_int_equal(nng_recv(s, &ans, &ans_len, NNG_FLAG_ALLOC), 0);
    Inferno__TokenizerResponse *r = inferno__tokenizer_response__unpack(NULL, ans_len, ans);
    nng_free(ans, ans_len);
    assert_non_null(r);
    assert_int_equal(r->body_case, INFERNO__TOKENIZER_RESPONSE__BODY_INFO);
    assert_int_equal(r->info->vocab_size, 151936);
    assert_true(r->info->has_chat_template);
    inferno__tokenizer_response__free_unpacked(r, NULL);
    nng_close(s);

    kill(pid, SIGTERM);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handle_tokenize_detokenize),
        cmocka_unit_test(test_handle_apply_template),
        cmocka_unit_test(test_handle_errors),
        cmocka_unit_test(test_concurrent_clients),
        cmocka_unit_test(test_service_process),
    };
    return cmocka_run_group_tests_name("tokenizer_svc", tests, setup, teardown);
}
