/* Prometheus metrics: the gateway's own counters and latency histograms,
 * plus the scheduler's figures fetched at scrape time. Names follow the
 * conventions in ARCHITECTURE.md (inferno_ prefix, base units). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "gateway_internal.h"

#define N_BUCKETS 14
static const double latency_bounds[N_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
                                                 0.5,   1,    2.5,   5,    10,    30,  60};

typedef struct {
    uint64_t counts[N_BUCKETS + 1];
    double sum;
    uint64_t n;
} histogram;

struct gw_metrics {
    int status_codes[32];
    uint64_t status_counts[32];
    int n_status;
    histogram ttft, itl;
    uint64_t prompt_tokens, completion_tokens;
};

int gw_metrics_init(gateway *g) {
    pthread_mutex_init(&g->metrics_mu, NULL);
    g->metrics = calloc(1, sizeof *g->metrics);
    return g->metrics ? 0 : -1;
}

void gw_metrics_free(gateway *g) {
    free(g->metrics);
    pthread_mutex_destroy(&g->metrics_mu);
}

void gw_metrics_request(gateway *g, int status) {
    struct gw_metrics *m = g->metrics;
    pthread_mutex_lock(&g->metrics_mu);
    int i = 0;
    while (i < m->n_status && m->status_codes[i] != status)
        i++;
    if (i == m->n_status && m->n_status < 32)
        m->status_codes[m->n_status++] = status;
    if (i < 32)
        m->status_counts[i]++;
    pthread_mutex_unlock(&g->metrics_mu);
}

static void observe(gateway *g, histogram *h, double x) {
    pthread_mutex_lock(&g->metrics_mu);
    int b = 0;
    while (b < N_BUCKETS && x > latency_bounds[b])
        b++;
    h->counts[b]++, h->sum += x, h->n++;
    pthread_mutex_unlock(&g->metrics_mu);
}

void gw_metrics_ttft(gateway *g, double s) { observe(g, &g->metrics->ttft, s); }
void gw_metrics_itl(gateway *g, double s) { observe(g, &g->metrics->itl, s); }

void gw_metrics_tokens(gateway *g, long prompt, long completion) {
    pthread_mutex_lock(&g->metrics_mu);
    g->metrics->prompt_tokens += (uint64_t)prompt, g->metrics->completion_tokens += (uint64_t)completion;
    pthread_mutex_unlock(&g->metrics_mu);
}

static void put_histogram(strbuf *out, const char *name, const char *help, const histogram *h, const double *bounds,
                          int n_bounds, const uint64_t *cumulative_given) {
    char line[256];
    snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    strbuf_append(out, line, strlen(line));
    uint64_t cum = 0;
    for (int b = 0; b <= n_bounds; b++) {
        cum = cumulative_given ? cumulative_given[b] : cum + h->counts[b];
        if (b < n_bounds)
            snprintf(line, sizeof line, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[b], (unsigned long long)cum);
        else
            snprintf(line, sizeof line, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
        strbuf_append(out, line, strlen(line));
    }
    snprintf(line, sizeof line, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, (unsigned long long)cum);
    strbuf_append(out, line, strlen(line));
}

static void put(strbuf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(strbuf *out, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0)
        strbuf_append(out, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

char *gw_metrics_render(gateway *g) {
    strbuf out = {0};
    struct gw_metrics m;
    pthread_mutex_lock(&g->metrics_mu);
    m = *g->metrics;
    pthread_mutex_unlock(&g->metrics_mu);
    put(&out, "# HELP inferno_requests_total HTTP requests answered, by status code\n"
              "# TYPE inferno_requests_total counter\n");
    for (int i = 0; i < m.n_status; i++)
        put(&out, "inferno_requests_total{code=\"%d\"} %llu\n", m.status_codes[i],
            (unsigned long long)m.status_counts[i]);
    put_histogram(&out, "inferno_time_to_first_token_seconds", "Time from request to first generated token", &m.ttft,
                  latency_bounds, N_BUCKETS, NULL);
    put_histogram(&out, "inferno_inter_token_latency_seconds", "Time between consecutive tokens of a request", &m.itl,
                  latency_bounds, N_BUCKETS, NULL);
    put(&out, "# TYPE inferno_request_prompt_tokens_total counter\ninferno_request_prompt_tokens_total %llu\n",
        (unsigned long long)m.prompt_tokens);
    put(&out, "# TYPE inferno_request_completion_tokens_total counter\ninferno_request_completion_tokens_total %llu\n",
        (unsigned long long)m.completion_tokens);
    char err[256];
    Inferno__SchedulerResponse *r = sched_client_stats(g->sched, err, sizeof err);
    put(&out, "# TYPE inferno_scheduler_up gauge\ninferno_scheduler_up %d\n", r ? 1 : 0);
    if (r) {
        const Inferno__SchedulerStats *s = r->stats;
        put(&out, "# TYPE inferno_requests_running gauge\ninferno_requests_running %d\n", s->running);
        put(&out, "# TYPE inferno_requests_waiting gauge\ninferno_requests_waiting %d\n", s->waiting);
        put(&out, "# TYPE inferno_workers gauge\ninferno_workers %zu\n", s->n_workers);
        put(&out, "# TYPE inferno_kv_blocks_used gauge\n");
        for (size_t i = 0; i < s->n_workers; i++)
            put(&out, "inferno_kv_blocks_used{worker=\"%s\"} %d\n", s->workers[i]->url, s->workers[i]->blocks_used);
        put(&out, "# TYPE inferno_kv_blocks_total gauge\n");
        for (size_t i = 0; i < s->n_workers; i++)
            put(&out, "inferno_kv_blocks_total{worker=\"%s\"} %d\n", s->workers[i]->url, s->workers[i]->blocks_total);
        put(&out, "# TYPE inferno_kv_blocks_cached gauge\n");
        for (size_t i = 0; i < s->n_workers; i++)
            put(&out, "inferno_kv_blocks_cached{worker=\"%s\"} %d\n", s->workers[i]->url, s->workers[i]->blocks_cached);
        put(&out, "# TYPE inferno_prompt_tokens_total counter\ninferno_prompt_tokens_total %llu\n",
            (unsigned long long)s->prompt_tokens);
        put(&out, "# TYPE inferno_prefix_cache_hit_tokens_total counter\ninferno_prefix_cache_hit_tokens_total %llu\n",
            (unsigned long long)s->prefix_hit_tokens);
        put(&out, "# TYPE inferno_generated_tokens_total counter\ninferno_generated_tokens_total %llu\n",
            (unsigned long long)s->generated_tokens);
        put(&out, "# TYPE inferno_preemptions_total counter\ninferno_preemptions_total %llu\n",
            (unsigned long long)s->preemptions);
        put(&out, "# TYPE inferno_failovers_total counter\ninferno_failovers_total %llu\n",
            (unsigned long long)s->failovers);
        if (s->n_step_bounds + 1 == s->n_step_counts) {
            histogram h = {.sum = s->step_seconds_sum};
            put_histogram(&out, "inferno_step_seconds", "Time of one batched worker step", &h, s->step_bounds,
                          (int)s->n_step_bounds, s->step_counts);
        }
    }
    sched_client_stats_free(r);
    return out.data;
}
