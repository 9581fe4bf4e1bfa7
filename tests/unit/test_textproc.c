/* The gateway's text pipeline: stop strings found however the text is cut
 * into pieces, never emitted; reasoning split from content; tool calls
 * parsed out of Qwen3's <tool_call> blocks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "json_depth.h"
#include "textproc.h"

/* Feeds text in pieces of `step` bytes; returns what was emitted. */
static char *run_stop(const char *text, const char *const *stops, int n, size_t step, bool *stopped) {
    stop_matcher m;
    stop_init(&m, stops, n);
    strbuf out = {0};
    *stopped = false;
    for (size_t at = 0; at < strlen(text) && !*stopped; at += step) {
        size_t k = strlen(text) - at < step ? strlen(text) - at : step;
        *stopped = stop_feed(&m, text + at, k, &out);
        /* nothing emitted may ever hold a stop string */
        for (int i = 0; i < n && out.data; i++)
            assert_null(strstr(out.data, stops[i]));
    }
    if (!*stopped)
        stop_flush(&m, &out);
    stop_free(&m);
    strbuf_append(&out, "", 0);
    return out.data;
}

static void test_stop_strings(void **state) {
    (void)state;
    const char *stops[] = {"END", "\n\nUser:"};
    for (size_t step = 1; step <= 7; step++) {
        bool stopped;
        char *out = run_stop("hello wor\n\nUser: more", stops, 2, step, &stopped);
        assert_true(stopped);
        assert_string_equal(out, "hello wor");
        free(out);
        out = run_stop("an ENDing", stops, 2, step, &stopped);
        assert_true(stopped);
        assert_string_equal(out, "an ");
        free(out);
        out = run_stop("no stop here EN", stops, 2, step, &stopped);
        assert_false(stopped);
        assert_string_equal(out, "no stop here EN"); /* a held partial match comes out at the end */
        free(out);
    }
}

static void route(const char *text, size_t step, bool tools, char **reasoning, char **content, json_t **calls) {
    text_router r;
    router_init(&r, true, tools);
    strbuf re = {0}, co = {0};
    for (size_t at = 0; at < strlen(text); at += step) {
        size_t k = strlen(text) - at < step ? strlen(text) - at : step;
        router_feed(&r, text + at, k, &re, &co);
    }
    *calls = router_finish(&r, &re, &co);
    router_free(&r);
    strbuf_append(&re, "", 0), strbuf_append(&co, "", 0);
    *reasoning = re.data, *content = co.data;
}

static void test_reasoning_and_tool_calls(void **state) {
    (void)state;
    for (size_t step = 1; step <= 9; step++) {
        char *re, *co;
        json_t *calls;
        route("<think>\nLet me see.\n</think>\n\nParis.", step, false, &re, &co, &calls);
        assert_string_equal(re, "\nLet me see.\n");
        assert_string_equal(co, "Paris.");
        assert_null(calls);
        free(re), free(co);
        route("  plain <thin answer", step, false, &re, &co, &calls);
        assert_string_equal(re, "");
        assert_string_equal(co, "  plain <thin answer");
        free(re), free(co);
        route("<think>x</think>Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
              "</tool_call>\n<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>",
              step, true, &re, &co, &calls);
        assert_string_equal(re, "x");
        assert_string_equal(co, "Sure.\n"); /* streamed before the call was seen */
        assert_int_equal(json_array_size(calls), 2);
        json_t *fn = json_object_get(json_array_get(calls, 0), "function");
        assert_string_equal(json_string_value(json_object_get(fn, "name")), "get_weather");
        assert_string_equal(json_string_value(json_object_get(fn, "arguments")), "{\"city\":\"Paris\"}");
        assert_string_equal(json_string_value(json_object_get(json_array_get(calls, 1), "type")), "function");
        json_decref(calls);
        free(re), free(co);
        /* a broken call stays text */
        route("<tool_call>not json</tool_call>", step, true, &re, &co, &calls);
        assert_null(calls);
        assert_string_equal(co, "<tool_call>not json</tool_call>");
        free(re), free(co);
    }
}

/* Deep nesting is refused before jansson's recursive parser sees it;
 * brackets inside strings do not count. */
static void test_json_depth_guard(void **state) {
    (void)state;
    char deep[200];
    memset(deep, '[', sizeof deep);
    assert_true(json_nests_deeper(deep, sizeof deep, 64));
    assert_false(json_nests_deeper(deep, 64, 64));
    assert_true(json_nests_deeper(deep, 65, 64));
    const char *quoted = "{\"a\": \"[[[[[[[[[[\\\"[[[[[\", \"b\": [{}]}";
    assert_false(json_nests_deeper(quoted, strlen(quoted), 3)); /* { [ { */
    assert_true(json_nests_deeper(quoted, strlen(quoted), 2));
    assert_false(json_nests_deeper("]]]]{}", 6, 1)); /* not valid JSON; jansson rejects it */
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_stop_strings),
                                       cmocka_unit_test(test_reasoning_and_tool_calls),
                                       cmocka_unit_test(test_json_depth_guard)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
