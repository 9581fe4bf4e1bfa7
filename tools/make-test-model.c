/* make-test-model: writes a Qwen3 GGUF with deterministic random weights and
 * the real Qwen3 tokenizer, key for key and tensor for tensor in the order
 * llama.cpp's convert_hf_to_gguf.py writes them (compare with
 * ../shared/reference/tinyA-*.gguf).
 *
 *   make-test-model --config tiny|0.6b [--type f32|f16|bf16|q8_0|q4_k_m] [--seed N]
 *                   [--layers N --hidden N --heads N --kv-heads N --head-dim N
 *                    --ffn N --context N] [--tokenizer DIR] [--name S] --out FILE
 *
 * Weights: norms 1 + 0.1 N(0,1); projections N(0, 1/fan_in) so activations
 * stay O(1); embeddings N(0, (3/sqrt(hidden))^2) so the tied output head
 * gives logits with a spread of about 3 (far from uniform). Every tensor has
 * its own stream seeded from --seed and its name, so its values do not depend
 * on which other tensors exist. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "gguf.h"

#define PROG "make-test-model"

struct model_config {
    const char *name;
    uint32_t layers, hidden, heads, kv_heads, head_dim, ffn, context;
    const char *arch; /* qwen3 (q/k norms), qwen2 (q/k/v biases) or gemma3 (q/k norms, post-block norms) */
    uint32_t window;  /* gemma3: the sliding window of five layers in six */
};

static const struct model_config config_tiny = {"inferno-test-tiny", 2, 32, 4, 2, 16, 96, 4096, "qwen3"};
static const struct model_config config_0_6b = {"inferno-test-0.6b", 28, 1024, 16, 8, 128, 3072, 40960, "qwen3"};

/* ---- deterministic random numbers: splitmix64 seeding xoshiro256** ---- */

typedef struct {
    uint64_t s[4];
} rng_state;

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(rng_state *r, uint64_t seed, const char *name) {
    for (const char *p = name; *p; p++) /* FNV-1a of the tensor name */
        seed = (seed ^ (uint8_t)*p) * 1099511628211ull;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rng_next(rng_state *r) {
    uint64_t *s = r->s, result = s[1] * 5;
    result = (result << 7 | result >> 57) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0], s[3] ^= s[1], s[1] ^= s[2], s[0] ^= s[3], s[2] ^= t;
    s[3] = s[3] << 45 | s[3] >> 19;
    return result;
}

/* Uniform in (0, 1]. */
static double rng_uniform(rng_state *r) { return ((rng_next(r) >> 11) + 1) * (1.0 / 9007199254740992.0); }

static void fill_normal(rng_state *r, float *x, uint64_t n, float mean, float std) {
    for (uint64_t i = 0; i < n; i += 2) { /* Box-Muller, two values per draw */
        double rad = sqrt(-2.0 * log(rng_uniform(r))), ang = 2.0 * M_PI * rng_uniform(r);
        x[i] = mean + std * (float)(rad * cos(ang));
        if (i + 1 < n)
            x[i + 1] = mean + std * (float)(rad * sin(ang));
    }
}

/* ---- tokenizer from the Hugging Face files ---- */

struct tokenizer_files {
    uint32_t vocab_size;
    char **tokens;
    int32_t *token_types;
    char **merges;
    uint64_t n_merges;
    uint32_t bos, eos, pad;
    char *chat_template;
};

static char *read_text(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    rewind(fp);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, fp) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    if (buf) {
        buf[n] = 0;
        *len = (size_t)n;
    }
    return buf;
}

static json_t *load_json(const char *dir, const char *file) {
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) {
        fprintf(stderr, PROG ": %s: path too long\n", dir);
        return NULL;
    }
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    if (!j)
        fprintf(stderr, PROG ": %s: %s (line %d)\n", path, e.text, e.line);
    return j;
}

/* Token id of a special token named in tokenizer_config.json (a string, or
 * an object with "content"), looked up among the added tokens. */
static int added_token_id(json_t *added, json_t *spec, uint32_t *id) {
    const char *want =
        json_is_string(spec) ? json_string_value(spec) : json_string_value(json_object_get(spec, "content"));
    const char *key;
    json_t *tok;
    if (!want)
        return -1;
    json_object_foreach(added, key, tok) {
        if (!strcmp(json_string_value(json_object_get(tok, "content")), want)) {
            *id = (uint32_t)strtoul(key, NULL, 10);
            return 0;
        }
    }
    return -1;
}

static int tokenizer_load(const char *dir, struct tokenizer_files *tk) {
    int rc = -1;
    json_t *vocab = load_json(dir, "vocab.json"), *cfg = load_json(dir, "tokenizer_config.json"),
           *model_cfg = load_json(dir, "config.json");
    if (!vocab || !cfg || !model_cfg)
        goto out;
    tk->vocab_size = (uint32_t)json_integer_value(json_object_get(model_cfg, "vocab_size"));
    json_t *added = json_object_get(cfg, "added_tokens_decoder");
    if (!tk->vocab_size || !json_is_object(added)) {
        fprintf(stderr, PROG ": %s: config.json vocab_size or added_tokens_decoder missing\n", dir);
        goto out;
    }
    tk->tokens = calloc(tk->vocab_size, sizeof *tk->tokens);
    tk->token_types = calloc(tk->vocab_size, sizeof *tk->token_types);
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        json_int_t id = json_integer_value(v);
        if (id < 0 || id >= tk->vocab_size) {
            fprintf(stderr, PROG ": vocab.json: token id %lld out of range\n", (long long)id);
            goto out;
        }
        tk->tokens[id] = strdup(key);
        tk->token_types[id] = 1; /* normal */
    }
    json_object_foreach(added, key, v) {
        unsigned long id = strtoul(key, NULL, 10);
        if (id >= tk->vocab_size)
            continue;
        free(tk->tokens[id]);
        tk->tokens[id] = strdup(json_string_value(json_object_get(v, "content")));
        /* llama.cpp's converter: added tokens that are special, or merely look
         * special (<|...|>), are CONTROL (3); the others USER_DEFINED (4) */
        const char *text = tk->tokens[id];
        size_t len = strlen(text);
        bool looks_special = len >= 4 && !strncmp(text, "<|", 2) && !strcmp(text + len - 2, "|>");
        tk->token_types[id] = json_is_true(json_object_get(v, "special")) || looks_special ? 3 : 4;
    }
    for (uint32_t id = 0; id < tk->vocab_size; id++) {
        if (!tk->tokens[id]) { /* padding up to the model's vocab size: UNUSED (5) */
            char pad[32];
            snprintf(pad, sizeof pad, "[PAD%u]", id);
            tk->tokens[id] = strdup(pad);
            tk->token_types[id] = 5;
        }
    }
    if (added_token_id(added, json_object_get(cfg, "eos_token"), &tk->eos) ||
        added_token_id(added, json_object_get(cfg, "pad_token"), &tk->pad)) {
        fprintf(stderr, PROG ": tokenizer_config.json: eos_token or pad_token not among the added tokens\n");
        goto out;
    }
    tk->bos = (uint32_t)json_integer_value(json_object_get(model_cfg, "bos_token_id"));
    const char *tmpl = json_string_value(json_object_get(cfg, "chat_template"));
    tk->chat_template = strdup(tmpl ? tmpl : "");

    char path[PATH_MAX];
    size_t len;
    char *text = NULL;
    if (snprintf(path, sizeof path, "%s/merges.txt", dir) < (int)sizeof path)
        text = read_text(path, &len);
    if (!text) {
        fprintf(stderr, PROG ": %s: %s\n", path, strerror(errno));
        goto out;
    }
    uint64_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    tk->merges = calloc(lines, sizeof *tk->merges);
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = 0;
        if (!strncmp(line, "#version", 8) || !*line)
            continue;
        tk->merges[tk->n_merges++] = strdup(line);
    }
    free(text);
    rc = 0;
out:
    json_decref(vocab);
    json_decref(cfg);
    json_decref(model_cfg);
    return rc;
}

static void tokenizer_free(struct tokenizer_files *tk) {
    for (uint32_t i = 0; tk->tokens && i < tk->vocab_size; i++)
        free(tk->tokens[i]);
    for (uint64_t i = 0; i < tk->n_merges; i++)
        free(tk->merges[i]);
    free(tk->tokens);
    free(tk->token_types);
    free(tk->merges);
    free(tk->chat_template);
}

/* The shared tokenizer folder: --tokenizer, $INFERNO_TOKENIZER_DIR, or
 * shared/models/qwen3-tokenizer beside some ancestor of the executable or
 * of the working directory (a checkout has ../shared beside it). */
static const char *find_tokenizer_dir(const char *flag, char *buf, size_t len) {
    if (flag)
        return flag;
    const char *env = getenv("INFERNO_TOKENIZER_DIR");
    if (env && *env)
        return env;
    char starts[2][PATH_MAX] = {"", ""};
    ssize_t n = readlink("/proc/self/exe", starts[0], sizeof starts[0] - 1);
    starts[0][n > 0 ? n : 0] = 0;
    if (!getcwd(starts[1], sizeof starts[1]))
        starts[1][0] = 0;
    for (int s = 0; s < 2; s++) {
        char *dir = starts[s];
        for (char *slash; (slash = strrchr(dir, '/')) != NULL;) {
            *slash = 0;
            if (snprintf(buf, len, "%s/shared/models/qwen3-tokenizer/vocab.json", dir) >= (int)len)
                continue;
            if (access(buf, R_OK) == 0) {
                buf[strlen(buf) - strlen("/vocab.json")] = 0;
                return buf;
            }
        }
    }
    return NULL;
}

/* ---- model ---- */

struct tensor_buf {
    void *data;
    uint64_t n_bytes;
};

struct model_writer {
    gguf_writer *w;
    uint32_t type;
    uint64_t seed;
    uint64_t params;
    struct tensor_buf bufs[512];
    int n_bufs;
};

/* --type q4_k_m: the mix llama.cpp's Q4_K_M gives a small model, as in the
 * real Qwen2.5 file of scripts/get-real-model.sh: Q4_K, but Q6_K for attn_v,
 * for ffn_down on every other layer and for an untied output head; a row
 * that is not a multiple of 256 falls back as llama.cpp's does (Q4_K to
 * Q5_0, Q6_K to Q8_0). */
#define TYPE_Q4_K_M UINT32_MAX
static uint32_t q4_k_m_type(const char *name, uint64_t cols) {
    int layer = -1;
    sscanf(name, "blk.%d.", &layer);
    bool six =
        strstr(name, "attn_v.") || (strstr(name, "ffn_down.") && layer % 2 == 0) || !strcmp(name, "output.weight");
    if (cols % 256)
        return six ? TENSOR_Q8_0 : TENSOR_Q5_0;
    return six ? TENSOR_Q6_K : TENSOR_Q4_K;
}

/* Generates one tensor (ne0 x ne1, ne1 == 1 for vectors), stores it in the
 * model's type (vectors stay F32, as llama.cpp keeps them) and adds it. */
static int add_weight(struct model_writer *m, const char *name, uint64_t ne0, uint64_t ne1, float mean, float std) {
    uint64_t n = ne0 * ne1, n_bytes;
    uint32_t type = ne1 == 1 ? TENSOR_F32 : m->type == TYPE_Q4_K_M ? q4_k_m_type(name, ne0) : m->type;
    if (!tensor_row_bytes(type, ne0, &n_bytes)) {
        fprintf(stderr, PROG ": tensor %s: row of %llu does not fit type %s\n", name, (unsigned long long)ne0,
                tensor_type_name(type));
        return -1;
    }
    n_bytes *= ne1;
    float *values = malloc(n * sizeof *values);
    void *data = malloc(n_bytes);
    if (!values || !data || m->n_bufs == (int)(sizeof m->bufs / sizeof m->bufs[0])) {
        fprintf(stderr, PROG ": out of memory for %s\n", name);
        free(values);
        free(data);
        return -1;
    }
    rng_state r;
    rng_seed(&r, m->seed, name);
    fill_normal(&r, values, n, mean, std);
    tensor_quantize_row(type, values, data, n);
    free(values);
    m->bufs[m->n_bufs++] = (struct tensor_buf){data, n_bytes};
    m->params += n;
    uint64_t ne[2] = {ne0, ne1};
    if (gguf_writer_add_tensor(m->w, name, type, ne1 == 1 ? 1 : 2, ne, data, n_bytes)) {
        fprintf(stderr, PROG ": %s\n", gguf_writer_error(m->w));
        return -1;
    }
    return 0;
}

static bool arch_in(const char *arch, const char *list) {
    size_t n = strlen(arch);
    for (const char *p = list; (p = strstr(p, arch)) != NULL; p += n)
        if ((p == list || p[-1] == ',') && (p[n] == 0 || p[n] == ','))
            return true;
    return false;
}

/* Tensor order of convert_hf_to_gguf.py: embeddings, then per layer the
 * Hugging Face names in sorted order, then the final norm. */
static int add_weights(struct model_writer *m, const struct model_config *c, uint32_t vocab) {
    float s_in = 1.0f / sqrtf((float)c->hidden), s_attn = 1.0f / sqrtf((float)(c->heads * c->head_dim)),
          s_ffn = 1.0f / sqrtf((float)c->ffn);
    uint32_t q_dim = c->heads * c->head_dim, kv_dim = c->kv_heads * c->head_dim;
    if (add_weight(m, "token_embd.weight", c->hidden, vocab, 0.0f, 3.0f * s_in)) /* [vocab][hidden] */
        return -1;
    for (uint32_t l = 0; l < c->layers; l++) {
        struct {
            const char *suffix;
            uint64_t ne0, ne1;
            float mean, std;
            const char *only; /* the architectures that have it (comma-separated); NULL: every one */
        } layer[] = {
            {"attn_norm.weight", c->hidden, 1, 1.0f, 0.1f, NULL},               /* [hidden] */
            {"attn_q.bias", q_dim, 1, 0.0f, 0.5f, "qwen2"},                     /* [heads*head_dim] */
            {"attn_k.bias", kv_dim, 1, 0.0f, 0.5f, "qwen2"},                    /* [kv_heads*head_dim] */
            {"attn_v.bias", kv_dim, 1, 0.0f, 0.5f, "qwen2"},                    /* [kv_heads*head_dim] */
            {"ffn_down.weight", c->ffn, c->hidden, 0.0f, s_ffn, NULL},          /* [hidden][ffn] */
            {"ffn_gate.weight", c->hidden, c->ffn, 0.0f, s_in, NULL},           /* [ffn][hidden] */
            {"ffn_up.weight", c->hidden, c->ffn, 0.0f, s_in, NULL},             /* [ffn][hidden] */
            {"ffn_norm.weight", c->hidden, 1, 1.0f, 0.1f, NULL},                /* [hidden] */
            {"attn_k_norm.weight", c->head_dim, 1, 1.0f, 0.1f, "qwen3,gemma3"}, /* [head_dim] */
            {"attn_k.weight", c->hidden, kv_dim, 0.0f, s_in, NULL},             /* [kv_heads*head_dim][hidden] */
            {"attn_output.weight", q_dim, c->hidden, 0.0f, s_attn, NULL},       /* [hidden][heads*head_dim] */
            {"attn_q_norm.weight", c->head_dim, 1, 1.0f, 0.1f, "qwen3,gemma3"}, /* [head_dim] */
            {"attn_q.weight", c->hidden, q_dim, 0.0f, s_in, NULL},              /* [heads*head_dim][hidden] */
            {"attn_v.weight", c->hidden, kv_dim, 0.0f, s_in, NULL},             /* [kv_heads*head_dim][hidden] */
            {"post_attention_norm.weight", c->hidden, 1, 1.0f, 0.1f, "gemma3"}, /* [hidden] */
            {"post_ffw_norm.weight", c->hidden, 1, 1.0f, 0.1f, "gemma3"},       /* [hidden] */
        };
        for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++) {
            if (layer[i].only && !arch_in(c->arch, layer[i].only))
                continue;
            char name[64];
            snprintf(name, sizeof name, "blk.%u.%s", l, layer[i].suffix);
            if (add_weight(m, name, layer[i].ne0, layer[i].ne1, layer[i].mean, layer[i].std))
                return -1;
        }
    }
    return add_weight(m, "output_norm.weight", c->hidden, 1, 1.0f, 0.1f);
}

/* general.size_label as llama.cpp formats a parameter count: two significant
 * digits at least ("4.9M", "596M", "1.5B"). */
static void size_label(uint64_t params, char *out, size_t len) {
    double n = (double)params;
    const char *suffix = "K";
    double scale = 1e3;
    if (n >= 1e12)
        suffix = "T", scale = 1e12;
    else if (n >= 1e9)
        suffix = "B", scale = 1e9;
    else if (n >= 1e6)
        suffix = "M", scale = 1e6;
    double v = n / scale;
    char digits[32];
    snprintf(digits, sizeof digits, "%.0f", v);
    int fix = 2 - (int)strlen(digits);
    snprintf(out, len, "%.*f%s", fix > 0 ? fix : 0, v, suffix);
}

static int add_metadata(gguf_writer *w, const struct model_config *c, const struct tokenizer_files *tk,
                        uint32_t file_type, const char *label) {
    char k[8][64];
    const char *suffixes[8] = {"block_count",          "context_length",        "embedding_length",
                               "feed_forward_length",  "attention.head_count",  "attention.head_count_kv",
                               "attention.key_length", "attention.value_length"};
    for (int i = 0; i < 8; i++)
        snprintf(k[i], sizeof k[i], "%s.%s", c->arch, suffixes[i]);
    char rope_key[64], eps_key[64];
    snprintf(rope_key, sizeof rope_key, "%s.rope.freq_base", c->arch);
    snprintf(eps_key, sizeof eps_key, "%s.attention.layer_norm_rms_epsilon", c->arch);
    int rc =
        gguf_writer_add_str(w, "general.architecture", c->arch) || gguf_writer_add_str(w, "general.type", "model") ||
        gguf_writer_add_str(w, "general.name", c->name) || gguf_writer_add_str(w, "general.size_label", label) ||
        gguf_writer_add_u32(w, k[0], c->layers) || gguf_writer_add_u32(w, k[1], c->context) ||
        gguf_writer_add_u32(w, k[2], c->hidden) || gguf_writer_add_u32(w, k[3], c->ffn) ||
        gguf_writer_add_u32(w, k[4], c->heads) || gguf_writer_add_u32(w, k[5], c->kv_heads) ||
        gguf_writer_add_f32(w, rope_key, 1000000.0f) || gguf_writer_add_f32(w, eps_key, 1e-6f) ||
        gguf_writer_add_u32(w, k[6], c->head_dim) || gguf_writer_add_u32(w, k[7], c->head_dim) ||
        (!strcmp(c->arch, "gemma3") && gguf_writer_add_u32(w, "gemma3.attention.sliding_window", c->window)) ||
        gguf_writer_add_u32(w, "general.file_type", file_type) ||
        gguf_writer_add_u32(w, "general.quantization_version", 2) ||
        gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2") ||
        gguf_writer_add_str(w, "tokenizer.ggml.pre", "qwen2") ||
        gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", (const char *const *)tk->tokens, NULL, tk->vocab_size) ||
        gguf_writer_add_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, tk->token_types, tk->vocab_size) ||
        gguf_writer_add_str_array(w, "tokenizer.ggml.merges", (const char *const *)tk->merges, NULL, tk->n_merges) ||
        gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", tk->eos) ||
        gguf_writer_add_u32(w, "tokenizer.ggml.padding_token_id", tk->pad) ||
        gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", tk->bos) ||
        gguf_writer_add_str(w, "tokenizer.chat_template", tk->chat_template);
    if (rc)
        fprintf(stderr, PROG ": %s\n", gguf_writer_error(w));
    return rc;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: " PROG " --config tiny|0.6b --out FILE [options]\n"
            "  --arch qwen3|qwen2|gemma3  the architecture (default qwen3; qwen2: q/k/v biases, no q/k norm;\n"
            "                             gemma3: norms after each block, GeGLU, sliding-window layers;\n"
            "                             the tokenizer stays Qwen's)\n"
            "  --window N                 gemma3's sliding window (default 512)\n"
            "  --type f32|f16|bf16|q8_0|q4_k_m  weight type (default f32; norms stay f32; q4_k_m:\n"
            "                             Q4_K/Q6_K as llama.cpp's mix, Q5_0/Q8_0 where rows are not 256-aligned)\n"
            "  --seed N                   random seed (default 1)\n"
            "  --layers N --hidden N --heads N --kv-heads N --head-dim N --ffn N --context N\n"
            "                             override the config's dimensions\n"
            "  --tokenizer DIR            Hugging Face tokenizer files (default: ../shared/models/qwen3-tokenizer)\n"
            "  --name S                   general.name\n"
            "  --version                  print the version\n");
}

int main(int argc, char **argv) {
    struct model_config cfg = {0};
    const char *arch = NULL;
    const char *out = NULL, *type_name = "f32", *tok_flag = NULL, *config = NULL;
    uint64_t seed = 1;
    static const char *dim_flags[7] = {"--layers",   "--hidden", "--heads",  "--kv-heads",
                                       "--head-dim", "--ffn",    "--context"};
    uint32_t *dims[7] = {&cfg.layers, &cfg.hidden, &cfg.heads, &cfg.kv_heads, &cfg.head_dim, &cfg.ffn, &cfg.context};
    int overrides[7] = {-1, -1, -1, -1, -1, -1, -1}; /* -1: the config's own */
    int window = 512;
    const cli_flag flags[] = {{"--config", CLI_STRING, &config},
                              {"--type", CLI_STRING, &type_name},
                              {"--seed", CLI_U64, &seed},
                              {"--out", CLI_STRING, &out},
                              {"--tokenizer", CLI_STRING, &tok_flag},
                              {"--name", CLI_STRING, &cfg.name},
                              {"--arch", CLI_STRING, &arch},
                              {"--window", CLI_INT, &window},
                              {dim_flags[0], CLI_INT, &overrides[0]},
                              {dim_flags[1], CLI_INT, &overrides[1]},
                              {dim_flags[2], CLI_INT, &overrides[2]},
                              {dim_flags[3], CLI_INT, &overrides[3]},
                              {dim_flags[4], CLI_INT, &overrides[4]},
                              {dim_flags[5], CLI_INT, &overrides[5]},
                              {dim_flags[6], CLI_INT, &overrides[6]},
                              {NULL}};
    int parsed = cli_parse(argc, argv, PROG, usage, flags);
    if (parsed != CLI_RUN)
        return parsed;
    for (size_t d = 0; d < 7; d++)
        if (overrides[d] != -1 && (overrides[d] < 1 || overrides[d] > 1 << 24)) {
            fprintf(stderr, PROG ": %s: expected a positive integer, got %d\n", dim_flags[d], overrides[d]);
            return 2;
        }
    if (!config || !out) {
        usage(stderr);
        return 2;
    }
    const struct model_config *base = !strcmp(config, "tiny")   ? &config_tiny
                                      : !strcmp(config, "0.6b") ? &config_0_6b
                                                                : NULL;
    if (!base) {
        fprintf(stderr, PROG ": --config: expected tiny or 0.6b, got '%s'\n", config);
        return 2;
    }
    if (arch && strcmp(arch, "qwen3") && strcmp(arch, "qwen2") && strcmp(arch, "gemma3")) {
        fprintf(stderr, PROG ": --arch: expected qwen3, qwen2 or gemma3, got '%s'\n", arch);
        return 2;
    }
    if (window < 1) {
        fprintf(stderr, PROG ": --window: expected a positive integer, got %d\n", window);
        return 2;
    }
    const char *name = cfg.name;
    cfg = *base;
    if (name)
        cfg.name = name;
    if (arch)
        cfg.arch = arch;
    cfg.window = (uint32_t)window;
    for (size_t d = 0; d < 7; d++)
        if (overrides[d] != -1)
            *dims[d] = (uint32_t)overrides[d];
    if (cfg.heads % cfg.kv_heads) {
        fprintf(stderr, PROG ": --heads %u is not a multiple of --kv-heads %u\n", cfg.heads, cfg.kv_heads);
        return 2;
    }
    static const struct {
        const char *name;
        uint32_t type, file_type;
    } types[] = {{"f32", TENSOR_F32, 0},    {"f16", TENSOR_F16, 1},   {"q8_0", TENSOR_Q8_0, 7},
                 {"bf16", TENSOR_BF16, 32}, {"q5_0", TENSOR_Q5_0, 8}, {"q4_k_m", TYPE_Q4_K_M, 15}};
    int ti = -1;
    for (int t = 0; t < 6; t++)
        if (!strcmp(type_name, types[t].name))
            ti = t;
    if (ti < 0) {
        fprintf(stderr, PROG ": --type: expected f32, f16, bf16, q8_0 or q4_k_m, got '%s'\n", type_name);
        return 2;
    }

    char dir_buf[PATH_MAX];
    const char *tok_dir = find_tokenizer_dir(tok_flag, dir_buf, sizeof dir_buf);
    if (!tok_dir) {
        fprintf(stderr, PROG ": cannot find the Qwen3 tokenizer files; pass --tokenizer DIR\n");
        return 1;
    }
    struct tokenizer_files tk = {0};
    struct model_writer m = {.type = types[ti].type, .seed = seed};
    int rc = 1;
    if (tokenizer_load(tok_dir, &tk))
        goto out;
    m.w = gguf_writer_new();
    /* Weights first: the size label needs the parameter count. The writer
     * keeps metadata and tensors apart, so metadata still comes first in the
     * file. */
    if (!m.w || add_weights(&m, &cfg, tk.vocab_size))
        goto out;
    char label[32];
    size_label(m.params, label, sizeof label);
    if (add_metadata(m.w, &cfg, &tk, types[ti].file_type, label))
        goto out;
    if (gguf_writer_write(m.w, out)) {
        fprintf(stderr, PROG ": %s\n", gguf_writer_error(m.w));
        goto out;
    }
    rc = 0;
out:
    gguf_writer_free(m.w);
    for (int i = 0; i < m.n_bufs; i++)
        free(m.bufs[i].data);
    tokenizer_free(&tk);
    return rc;
}
