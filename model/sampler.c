/* Sampling. Full sorts of the vocabulary are avoided: top-k selects with
 * quickselect, top-p pops a heap only until the nucleus is covered. */
#include "sampler.h"

#include <stdbool.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

sampling_params sampling_defaults(void) {
    return (sampling_params){.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f};
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void sampler_init(sampler *s, const sampling_params *p) {
    s->p = *p;
    uint64_t seed = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&seed);
}

static double next_uniform(sampler *s) { /* xoshiro256**, [0, 1) */
    uint64_t *r = s->rng, result = r[1] * 5;
    result = (result << 7 | result >> 57) * 9;
    uint64_t t = r[1] << 17;
    r[2] ^= r[0], r[3] ^= r[1], r[1] ^= r[2], r[0] ^= r[3], r[2] ^= t;
    r[3] = r[3] << 45 | r[3] >> 19;
    return (double)(result >> 11) * (1.0 / 9007199254740992.0);
}

typedef struct {
    float v;
    int32_t id;
} cand;

static void swap(cand *a, cand *b) {
    cand t = *a;
    *a = *b, *b = t;
}

/* Ties break toward the lower id, so results never depend on input order. */
static int greater(const cand *a, const cand *b) { return a->v > b->v || (a->v == b->v && a->id < b->id); }

/* Moves the k largest to c[0..k) (unordered). */
static void select_top(cand *c, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        cand pivot = c[(lo + hi) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (greater(&c[i], &pivot))
                i++;
            while (greater(&pivot, &c[j]))
                j--;
            if (i <= j)
                swap(&c[i++], &c[j--]);
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

static int cmp_desc(const void *a, const void *b) { return greater(b, a) - greater(a, b); }

static void sift_down(cand *c, int32_t n, int32_t i) {
    for (;;) {
        int32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && greater(&c[l], &c[m]))
            m = l;
        if (r < n && greater(&c[r], &c[m]))
            m = r;
        if (m == i)
            return;
        swap(&c[i], &c[m]);
        i = m;
    }
}

int32_t sampler_argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

static bool penalties_on(const sampling_params *p) {
    return (p->repetition_penalty != 1.0f && p->repetition_penalty > 0.0f) || p->presence_penalty != 0.0f ||
           p->frequency_penalty != 0.0f;
}

void sampler_plan(sampler *s, const int32_t *history, int32_t n_history, int32_t n_prompt, int32_t vocab,
                  uint32_t *seen, int32_t *seen_ids, int32_t *seen_counts, sample_plan *plan) {
    const sampling_params *p = &s->p;
    *plan = (sample_plan){.temperature = p->temperature,
                          .top_k = p->top_k,
                          .top_p = p->top_p,
                          .min_p = p->min_p,
                          .repetition_penalty = p->repetition_penalty,
                          .presence_penalty = p->presence_penalty,
                          .frequency_penalty = p->frequency_penalty,
                          .uniform = p->temperature > 0.0f ? next_uniform(s) : 0.0,
                          .bias_ids = p->bias_ids,
                          .bias_values = p->bias_values,
                          .n_bias = p->n_bias,
                          .seen_ids = seen_ids,
                          .seen_counts = seen_counts};
    if (!penalties_on(p))
        return;
    /* per token: bit 31 set when seen anywhere, low bits count output occurrences */
    for (int32_t i = 0; i < n_history; i++) {
        if (history[i] < 0 || history[i] >= vocab)
            continue;
        seen[history[i]] |= 0x80000000u;
        if (i >= n_prompt)
            seen[history[i]]++;
    }
    for (int32_t i = 0; i < n_history; i++) {
        int32_t id = history[i];
        if (id < 0 || id >= vocab || !(seen[id] & 0x80000000u))
            continue;
        seen_ids[plan->n_seen] = id, seen_counts[plan->n_seen++] = (int32_t)(seen[id] & 0x7fffffffu);
        seen[id] = 0; /* each distinct token once, and the counters zeroed again */
    }
}

void sampler_apply_edits(const sample_plan *p, float *logits, int32_t vocab) {
    for (int32_t i = 0; i < p->n_bias; i++)
        if (p->bias_ids[i] >= 0 && p->bias_ids[i] < vocab)
            logits[p->bias_ids[i]] += p->bias_values[i];
    bool repetition = p->repetition_penalty != 1.0f && p->repetition_penalty > 0.0f;
    bool occurrence = p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f;
    for (int32_t i = 0; i < p->n_seen; i++) {
        int32_t id = p->seen_ids[i], count = p->seen_counts[i];
        if (id < 0 || id >= vocab)
            continue;
        if (repetition)
            logits[id] = logits[id] > 0 ? logits[id] / p->repetition_penalty : logits[id] * p->repetition_penalty;
        if (occurrence && count)
            logits[id] -= p->presence_penalty + p->frequency_penalty * (float)count;
    }
}

/* log-softmax normaliser: max + log(sum(exp(x - max))). */
static float log_norm(const float *x, int32_t n) {
    float max = x[sampler_argmax(x, n)];
    double sum = 0;
    for (int32_t i = 0; i < n; i++)
        sum += exp((double)(x[i] - max));
    return max + (float)log(sum);
}

int32_t sampler_draw(const sample_plan *p, const float *logits, int32_t vocab) {
    if (vocab <= 0)
        return -1;
    if (p->temperature <= 0.0f)
        return sampler_argmax(logits, vocab);
    int32_t token;
    cand *c = malloc((size_t)vocab * sizeof *c);
    if (!c)
        return sampler_argmax(logits, vocab);
    for (int32_t i = 0; i < vocab; i++)
        c[i] = (cand){logits[i] / p->temperature, i};
    int32_t n = vocab;
    float max = c[0].v;
    bool sorted = false;
    if (p->top_k > 0 && p->top_k < n) {
        select_top(c, n, p->top_k);
        n = p->top_k;
        qsort(c, (size_t)n, sizeof *c, cmp_desc);
        sorted = true;
    }
    max = c[0].v;
    for (int32_t i = 1; i < n; i++)
        max = c[i].v > max ? c[i].v : max;
    double total = 0;
    for (int32_t i = 0; i < n; i++)
        total += exp((double)(c[i].v - max));
    if ((p->top_p > 0.0f && p->top_p < 1.0f) || p->min_p > 0.0f) {
        if (!sorted) { /* heap: pop in descending order only as far as needed */
            for (int32_t i = n / 2 - 1; i >= 0; i--)
                sift_down(c, n, i);
            int32_t heap = n;
            double cum = 0, pmax = 0;
            int32_t kept = 0;
            while (heap > 0) {
                cand top = c[0];
                double pr = exp((double)(top.v - max)) / total;
                if (kept == 0)
                    pmax = pr;
                if (kept > 0 && ((p->top_p < 1.0f && cum >= p->top_p) || pr < p->min_p * pmax))
                    break;
                c[0] = c[--heap];
                sift_down(c, heap, 0);
                c[heap] = top; /* popped items collect at the end, largest last */
                cum += pr, kept++;
            }
            /* the kept (at c[n-kept..n), ascending) to the front, descending
             * (swapping c[i] with c[n-1-i] for every kept i had swapped the
             * middle back when more than half were kept: the draw then walked
             * them out of order) */
            for (int32_t i = 0; i < kept / 2; i++)
                swap(&c[n - kept + i], &c[n - 1 - i]);
            memmove(c, c + (n - kept), (size_t)kept * sizeof *c);
            n = kept;
        } else {
            double cum = 0, pmax = exp((double)(c[0].v - max)) / total;
            int32_t kept = 0;
            while (kept < n) {
                double pr = exp((double)(c[kept].v - max)) / total;
                if (kept > 0 && ((p->top_p < 1.0f && cum >= p->top_p) || pr < p->min_p * pmax))
                    break;
                cum += pr, kept++;
            }
            n = kept;
        }
        total = 0;
        for (int32_t i = 0; i < n; i++)
            total += exp((double)(c[i].v - max));
    }
    double r = p->uniform * total, acc = 0;
    token = c[n - 1].id;
    for (int32_t i = 0; i < n; i++) {
        acc += exp((double)(c[i].v - max));
        if (acc > r) {
            token = c[i].id;
            break;
        }
    }
    free(c);
    return token;
}

int32_t sampler_sample(sampler *s, float *logits, int32_t vocab, const int32_t *history, int32_t n_history,
                       int32_t n_prompt, sample_result *out) {
    const sampling_params *p = &s->p;
    if (vocab <= 0)
        return -1;
    uint32_t *seen = NULL;
    int32_t *seen_ids = NULL;
    if (penalties_on(p) && n_history > 0) {
        seen = calloc((size_t)vocab, sizeof *seen);
        seen_ids = malloc(2 * (size_t)n_history * sizeof *seen_ids);
        if (!seen || !seen_ids) {
            free(seen), free(seen_ids);
            return sampler_argmax(logits, vocab);
        }
    }
    sample_plan plan;
    sampler_plan(s, history, seen ? n_history : 0, n_prompt, vocab, seen, seen_ids, seen_ids + n_history, &plan);
    sampler_apply_edits(&plan, logits, vocab);
    free(seen);
    /* the normaliser costs a pass of exp() over the vocabulary, more than
     * greedy sampling itself: only when logprobs were asked for */
    float lognorm = p->logprobs > 0 ? log_norm(logits, vocab) : 0.0f;
    int32_t token = sampler_draw(&plan, logits, vocab);
    free(seen_ids);
    if (out) {
        memset(out, 0, sizeof *out);
        out->token = token;
        out->logprob = p->logprobs > 0 ? logits[token] - lognorm : 0.0f;
        int32_t k = p->logprobs < SAMPLER_MAX_LOGPROBS ? p->logprobs : SAMPLER_MAX_LOGPROBS;
        if (k > 0) {
            cand *c = malloc((size_t)vocab * sizeof *c);
            if (c) {
                for (int32_t i = 0; i < vocab; i++)
                    c[i] = (cand){logits[i], i};
                select_top(c, vocab, k);
                qsort(c, (size_t)k, sizeof *c, cmp_desc);
                for (int32_t i = 0; i < k; i++)
                    out->top_ids[i] = c[i].id, out->top_logprobs[i] = c[i].v - lognorm;
                out->n_top = k;
                free(c);
            }
        }
    }
    return token;
}
