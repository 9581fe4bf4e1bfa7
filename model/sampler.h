/* Token sampling from a row of logits. Order of operations (as vLLM):
 * logit bias, repetition penalty (prompt and output tokens), presence and
 * frequency penalties (output tokens), then logprobs are taken from that
 * distribution; then temperature (0: greedy), top-k, top-p, min-p, and a
 * draw from the request's own seeded generator, so a seed reproduces a
 * sequence exactly whatever else runs in the same batch. */
#ifndef INFERNO_SAMPLER_H
#define INFERNO_SAMPLER_H

#include <stdint.h>

#define SAMPLER_MAX_LOGPROBS 20

typedef struct {
    float temperature;                         /* 0: greedy */
    int32_t top_k;                             /* 0: off */
    float top_p;                               /* 1: off */
    float min_p;                               /* 0: off */
    float repetition_penalty;                  /* 1: off */
    float presence_penalty, frequency_penalty; /* 0: off */
    uint64_t seed;
    const int32_t *bias_ids; /* logit_bias */
    const float *bias_values;
    int32_t n_bias;
    int32_t logprobs; /* top alternatives to report, 0..SAMPLER_MAX_LOGPROBS */
} sampling_params;

typedef struct {
    sampling_params p;
    uint64_t rng[4];
} sampler;

typedef struct {
    int32_t token;
    float logprob; /* of the chosen token; 0 unless logprobs > 0 */
    int32_t n_top;
    int32_t top_ids[SAMPLER_MAX_LOGPROBS];
    float top_logprobs[SAMPLER_MAX_LOGPROBS];
} sample_result;

/* One row's sampling as an engine can run it beside its logits (the CUDA
 * engine does, so that only ids cross PCIe): the parameters, this token's
 * draw from the request's generator, and the logit edits: the bias (in
 * order: an id may repeat), then the penalties over the distinct ids of
 * the history, each with its count of output occurrences.
 * sampler_sample(...) is sampler_plan + sampler_apply_edits + sampler_draw
 * (plus logprobs), so both ways give the same token. */
typedef struct {
    float temperature; /* 0: greedy */
    int32_t top_k;
    float top_p, min_p;
    float repetition_penalty, presence_penalty, frequency_penalty;
    double uniform; /* the draw in [0, 1); unused when greedy */
    const int32_t *bias_ids;
    const float *bias_values;
    int32_t n_bias;
    const int32_t *seen_ids;    /* distinct ids of the history */
    const int32_t *seen_counts; /* their occurrences among the output tokens */
    int32_t n_seen;             /* 0 when no penalty is on */
} sample_plan;

/* Defaults: greedy, every filter off. */
sampling_params sampling_defaults(void);
void sampler_init(sampler *s, const sampling_params *p);

/* The index of the first largest of x[0..n): greedy decoding's choice. */
int32_t sampler_argmax(const float *x, int32_t n);

/* Fills plan for the next token: draws from s (when not greedy) and lists
 * the history's distinct ids into seen_ids/seen_counts (room for n_history
 * each) when a penalty is on. seen is vocab zeroed counters, left zeroed. */
void sampler_plan(sampler *s, const int32_t *history, int32_t n_history, int32_t n_prompt, int32_t vocab,
                  uint32_t *seen, int32_t *seen_ids, int32_t *seen_counts, sample_plan *plan);

/* Adds the bias, then applies the penalties, to logits. */
void sampler_apply_edits(const sample_plan *plan, float *logits, int32_t vocab);

/* The token for edited logits: temperature, top-k, top-p, min-p and the
 * plan's draw. Without top-k, top-p and min-p the draw walks the vocabulary
 * in id order; with them, the kept tokens from the most likely down. */
int32_t sampler_draw(const sample_plan *plan, const float *logits, int32_t vocab);

/* Samples from logits (modified in place). history holds the prompt's ids
 * followed by the ids generated so far (n_prompt of them are the prompt). */
int32_t sampler_sample(sampler *s, float *logits, int32_t vocab, const int32_t *history, int32_t n_history,
                       int32_t n_prompt, sample_result *out);

#endif
