/* sched-submit: talks to scheduler-svc directly (no gateway, no tokenizer),
 * for tests and for operators poking at a running scheduler.
 *
 *   sched-submit --scheduler URL --requests FILE.jsonl   run requests concurrently
 *   sched-submit --scheduler URL --stats                 print statistics as JSON
 *   sched-submit --scheduler URL --wait-workers N        wait until N workers are live
 *
 * Each request line: {"prompt_ids": [...], "max_tokens": N, "temperature": T,
 * "top_k": K, "top_p": P, "seed": S, "logprobs": N, "stop_ids": [...],
 * "cancel_after": K (cancel once K tokens arrived), "delay_ms": D}.
 * Results, one JSON line per request in input order: {"index", "ids",
 * "finish", "prompt_tokens", "cached_tokens", "completion_tokens", "error",
 * "logprobs"}. Threading: one thread per request. */
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "sched_client.h"

#define PROG "sched-submit"

typedef struct {
    sched_client *client;
    json_t *spec, *result;
} job;

static int32_t *int_array(json_t *a, int32_t *n) {
    *n = json_is_array(a) ? (int32_t)json_array_size(a) : 0;
    int32_t *v = malloc(((size_t)*n + 1) * sizeof *v);
    for (int32_t i = 0; v && i < *n; i++)
        v[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return v;
}

static const char *finish_name(enum sched_client_finish f) {
    static const char *names[] = {"none", "stop", "length", "cancelled", "error"};
    return names[f];
}

static void *run_job(void *arg) {
    job *j = arg;
    json_t *s = j->spec;
    sched_submit_args a = {0};
    int32_t n_stop;
    int32_t *prompt = int_array(json_object_get(s, "prompt_ids"), &a.n_prompt);
    int32_t *stops = int_array(json_object_get(s, "stop_ids"), &n_stop);
    a.prompt = prompt, a.stop_ids = stops, a.n_stop_ids = n_stop;
    a.max_tokens = (int32_t)json_integer_value(json_object_get(s, "max_tokens"));
    a.sampling.temperature = (float)json_number_value(json_object_get(s, "temperature"));
    a.sampling.top_k = (int32_t)json_integer_value(json_object_get(s, "top_k"));
    a.sampling.top_p = (float)json_number_value(json_object_get(s, "top_p"));
    a.sampling.seed = (uint64_t)json_integer_value(json_object_get(s, "seed"));
    a.sampling.logprobs = (int32_t)json_integer_value(json_object_get(s, "logprobs"));
    json_int_t cancel_after = json_integer_value(json_object_get(s, "cancel_after"));
    json_int_t delay_ms = json_integer_value(json_object_get(s, "delay_ms"));
    if (delay_ms > 0)
        usleep((useconds_t)delay_ms * 1000);
    json_t *r = j->result = json_object(), *ids = json_array(), *lps = json_array();
    char err[256];
    sched_stream *st;
    int rc = sched_client_submit(j->client, &a, &st, err, sizeof err);
    if (rc != SCHED_CLIENT_OK) {
        json_object_set_new(r, "finish", json_string("rejected"));
        json_object_set_new(r, "error", json_string(err));
        json_object_set_new(r, "code", json_integer(rc));
    } else {
        sched_client_event ev;
        bool cancelled = false;
        for (;;) {
            if (!sched_client_next(st, &ev, 60000)) {
                json_object_set_new(r, "finish", json_string("timeout"));
                break;
            }
            if (ev.token >= 0) {
                json_array_append_new(ids, json_integer(ev.token));
                json_array_append_new(lps, json_real(ev.logprob));
            }
            if (ev.finish != SCHED_CLIENT_NOT_FINISHED) {
                json_object_set_new(r, "finish", json_string(finish_name(ev.finish)));
                json_object_set_new(r, "prompt_tokens", json_integer(ev.prompt_tokens));
                json_object_set_new(r, "cached_tokens", json_integer(ev.cached_tokens));
                json_object_set_new(r, "completion_tokens", json_integer(ev.completion_tokens));
                if (ev.error[0])
                    json_object_set_new(r, "error", json_string(ev.error));
                break;
            }
            if (cancel_after > 0 && !cancelled && (json_int_t)json_array_size(ids) >= cancel_after) {
                sched_client_cancel(st);
                cancelled = true;
            }
        }
        sched_stream_free(st);
    }
    json_object_set_new(r, "ids", ids);
    json_object_set_new(r, "logprobs", lps);
    free(prompt), free(stops);
    return NULL;
}

static int print_stats(sched_client *c) {
    char err[256];
    Inferno__SchedulerResponse *r = sched_client_stats(c, err, sizeof err);
    if (!r) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    const Inferno__SchedulerStats *s = r->stats;
    json_t *o =
        json_pack("{s:i,s:i,s:I,s:I,s:I,s:I,s:I,s:I,s:s,s:I}", "waiting", s->waiting, "running", s->running,
                  "prompt_tokens", (json_int_t)s->prompt_tokens, "prefix_hit_tokens", (json_int_t)s->prefix_hit_tokens,
                  "generated_tokens", (json_int_t)s->generated_tokens, "requests", (json_int_t)s->requests,
                  "preemptions", (json_int_t)s->preemptions, "failovers", (json_int_t)s->failovers, "model",
                  s->model ? s->model : "", "max_context", (json_int_t)s->max_context);
    json_t *ws = json_array();
    for (size_t i = 0; i < s->n_workers; i++) {
        const Inferno__WorkerStats *w = s->workers[i];
        json_array_append_new(ws, json_pack("{s:s,s:b,s:b,s:i,s:i,s:i,s:i,s:i,s:I}", "url", w->url, "alive", w->alive,
                                            "draining", w->draining, "waiting", w->waiting, "running", w->running,
                                            "blocks_used", w->blocks_used, "blocks_total", w->blocks_total,
                                            "blocks_cached", w->blocks_cached, "steps", (json_int_t)w->steps));
    }
    json_object_set_new(o, "workers", ws);
    char *text = json_dumps(o, JSON_COMPACT);
    printf("%s\n", text);
    free(text);
    json_decref(o);
    sched_client_stats_free(r);
    return 0;
}

static int wait_workers(sched_client *c, int n, int timeout_s) {
    for (int waited = 0; waited <= timeout_s * 10; waited++) {
        char err[256];
        Inferno__SchedulerResponse *r = sched_client_stats(c, err, sizeof err);
        size_t live = r ? r->stats->n_workers : 0;
        sched_client_stats_free(r);
        if ((int)live >= n)
            return 0;
        usleep(100000);
    }
    fprintf(stderr, PROG ": fewer than %d workers after %d s\n", n, timeout_s);
    return 1;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: " PROG " --scheduler URL (--requests FILE.jsonl | --stats | --wait-workers N [--timeout S])\n");
}

int main(int argc, char **argv) {
    const char *url = NULL, *requests = NULL;
    bool stats = false;
    int want_workers = 0, timeout_s = 30;
    const cli_flag flags[] = {{"--scheduler", CLI_STRING, &url},  {"--requests", CLI_STRING, &requests},
                              {"--stats", CLI_SWITCH, &stats},    {"--wait-workers", CLI_INT, &want_workers},
                              {"--timeout", CLI_INT, &timeout_s}, {NULL}};
    int parsed = cli_parse(argc, argv, PROG, usage, flags);
    if (parsed != CLI_RUN)
        return parsed;
    if (!url || (!requests && !stats && !want_workers)) {
        usage(stderr);
        return 2;
    }
    char err[256];
    sched_client *c;
    if (sched_client_open(url, &c, err, sizeof err)) {
        fprintf(stderr, PROG ": %s\n", err);
        return 1;
    }
    int rc = 0;
    if (want_workers)
        rc = wait_workers(c, want_workers, timeout_s);
    if (!rc && requests) {
        FILE *f = strcmp(requests, "-") ? fopen(requests, "r") : stdin;
        if (!f) {
            fprintf(stderr, PROG ": %s: cannot open\n", requests);
            sched_client_close(c);
            return 1;
        }
        job *jobs = NULL;
        size_t n = 0;
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, f) > 0) {
            json_error_t je;
            json_t *spec = json_loads(line, 0, &je);
            if (!spec)
                continue;
            jobs = realloc(jobs, (n + 1) * sizeof *jobs);
            jobs[n++] = (job){c, spec, NULL};
        }
        free(line);
        if (f != stdin)
            fclose(f);
        pthread_t *threads = calloc(n + 1, sizeof *threads);
        for (size_t i = 0; i < n; i++)
            pthread_create(&threads[i], NULL, run_job, &jobs[i]);
        for (size_t i = 0; i < n; i++) {
            pthread_join(threads[i], NULL);
            json_object_set_new(jobs[i].result, "index", json_integer((json_int_t)i));
            char *text = json_dumps(jobs[i].result, JSON_COMPACT);
            printf("%s\n", text);
            free(text);
            json_decref(jobs[i].result), json_decref(jobs[i].spec);
        }
        free(threads), free(jobs);
    }
    if (!rc && stats)
        rc = print_stats(c);
    sched_client_close(c);
    return rc;
}
