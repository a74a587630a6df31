/* prompt_metrics.c — per prompt and version counters (see prompt_metrics.h). */
#include "loop/prompt_metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/metrics.h"

typedef struct {
    char *name;
    uint64_t n[3]; /* pass, fail, error */
} pm_eval;

typedef struct {
    int64_t version;
    uint64_t used;      /* when last counted (a tick), for dropping the least recent */
    uint64_t traces[3]; /* by verdict */
    uint64_t feedback[2]; /* positive, negative */
    pm_eval *evals;
    size_t nevals;
} pm_version;

typedef struct {
    char *name;
    pm_version versions[PMETRICS_MAX_VERSIONS];
    size_t nversions;
} pm_prompt;

struct pmetrics {
    pm_prompt prompts[PMETRICS_MAX_PROMPTS];
    size_t nprompts;
    uint64_t tick;
    uint64_t dropped; /* counts not kept: their prompt was past the cap */
};

static const char *const result_names[3] = {"pass", "fail", "error"};

pmetrics *pmetrics_new(void)
{
    return xcalloc(1, sizeof(pmetrics));
}

static void version_clear(pm_version *v)
{
    for (size_t i = 0; i < v->nevals; i++)
        free(v->evals[i].name);
    free(v->evals);
    memset(v, 0, sizeof *v);
}

void pmetrics_free(pmetrics *pm)
{
    if (!pm)
        return;
    for (size_t i = 0; i < pm->nprompts; i++) {
        for (size_t k = 0; k < pm->prompts[i].nversions; k++)
            version_clear(&pm->prompts[i].versions[k]);
        free(pm->prompts[i].name);
    }
    free(pm);
}

/* The counters of prompt/version, made when new (NULL past the prompt cap). */
static pm_version *find(pmetrics *pm, const char *prompt, int64_t version)
{
    pm_prompt *p = NULL;
    for (size_t i = 0; i < pm->nprompts && !p; i++)
        if (!strcmp(pm->prompts[i].name, prompt))
            p = &pm->prompts[i];
    if (!p) {
        if (pm->nprompts >= PMETRICS_MAX_PROMPTS) {
            pm->dropped++;
            return NULL;
        }
        p = &pm->prompts[pm->nprompts++];
        p->name = xstrdup(prompt);
    }
    pm->tick++;
    for (size_t k = 0; k < p->nversions; k++)
        if (p->versions[k].version == version) {
            p->versions[k].used = pm->tick;
            return &p->versions[k];
        }
    pm_version *v;
    if (p->nversions < PMETRICS_MAX_VERSIONS) {
        v = &p->versions[p->nversions++];
    } else { /* the version counted least recently gives way (a counter reset, if it comes back) */
        v = &p->versions[0];
        for (size_t k = 1; k < p->nversions; k++)
            if (p->versions[k].used < v->used)
                v = &p->versions[k];
        version_clear(v);
    }
    v->version = version;
    v->used = pm->tick;
    return v;
}

static pm_eval *find_eval(pm_version *v, const char *name)
{
    for (size_t i = 0; i < v->nevals; i++)
        if (!strcmp(v->evals[i].name, name))
            return &v->evals[i];
    if (v->nevals >= 64)
        return NULL;
    v->evals = xrealloc(v->evals, (v->nevals + 1) * sizeof *v->evals);
    pm_eval *e = &v->evals[v->nevals++];
    memset(e, 0, sizeof *e);
    e->name = xstrdup(name);
    return e;
}

void pmetrics_trace(pmetrics *pm, const char *prompt, int64_t version, enum pm_result verdict,
                    const char *const *evaluators, const enum pm_result *results, size_t n)
{
    if (version <= 0)
        return;
    pm_version *v = find(pm, prompt, version);
    if (!v)
        return;
    v->traces[verdict]++;
    for (size_t i = 0; i < n; i++) {
        pm_eval *e = find_eval(v, evaluators[i]);
        if (e)
            e->n[results[i]]++;
    }
}

void pmetrics_feedback(pmetrics *pm, const char *prompt, int64_t version, bool negative)
{
    if (version <= 0)
        return;
    pm_version *v = find(pm, prompt, version);
    if (v)
        v->feedback[negative ? 1 : 0]++;
}

typedef struct {
    const pm_prompt *p;
    const pm_version *v;
    const char *status;
    char version[24];
} shown;

/* The production and canary counters of each prompt, as they are now. */
static size_t exported(pmetrics *pm, registry *reg, shown *out)
{
    size_t n = 0;
    for (size_t i = 0; i < pm->nprompts; i++) {
        const pm_prompt *p = &pm->prompts[i];
        int64_t prod = registry_version_in(reg, p->name, "production"),
                canary = registry_version_in(reg, p->name, "canary");
        for (size_t k = 0; k < p->nversions; k++) {
            const pm_version *v = &p->versions[k];
            if (v->version != prod && v->version != canary)
                continue;
            out[n] = (shown){p, v, v->version == prod ? "production" : "canary", ""};
            snprintf(out[n].version, sizeof out[n].version, "%lld", (long long)v->version);
            n++;
        }
    }
    return n;
}

void pmetrics_write(pmetrics *pm, registry *reg, buf_t *b)
{
    shown *s = xcalloc(PMETRICS_MAX_PROMPTS * 2 + 1, sizeof *s);
    size_t n = exported(pm, reg, s);
    metrics_family(b, "ratchet_prompt_traces_total", "counter",
                   "Traces judged online, by prompt, version (production and canary only) and verdict.");
    for (size_t i = 0; i < n; i++)
        for (int r = 0; r < 3; r++)
            metrics_sample(b, "ratchet_prompt_traces_total", (double)s[i].v->traces[r], "prompt", s[i].p->name,
                           "version", s[i].version, "verdict", result_names[r], NULL);
    metrics_family(b, "ratchet_prompt_evaluator_results_total", "counter",
                   "Online evaluator results by prompt, version (production and canary only), evaluator (the "
                   "attachment's name) and result; pass / (pass + fail) is the evaluator's pass rate.");
    for (size_t i = 0; i < n; i++)
        for (size_t e = 0; e < s[i].v->nevals; e++)
            for (int r = 0; r < 3; r++)
                metrics_sample(b, "ratchet_prompt_evaluator_results_total", (double)s[i].v->evals[e].n[r], "prompt",
                               s[i].p->name, "version", s[i].version, "evaluator", s[i].v->evals[e].name, "result",
                               result_names[r], NULL);
    metrics_family(b, "ratchet_prompt_feedback_total", "counter",
                   "Explicit and inline feedback stored on traces, by prompt, version (production and canary only) "
                   "and kind (negative: thumbs down or a score under 0.5).");
    for (size_t i = 0; i < n; i++) {
        metrics_sample(b, "ratchet_prompt_feedback_total", (double)s[i].v->feedback[0], "prompt", s[i].p->name,
                       "version", s[i].version, "kind", "positive", NULL);
        metrics_sample(b, "ratchet_prompt_feedback_total", (double)s[i].v->feedback[1], "prompt", s[i].p->name,
                       "version", s[i].version, "kind", "negative", NULL);
    }
    free(s);
    /* every prompt's production and canary, counted or not: the share of callers each is served to */
    metrics_family(b, "ratchet_prompt_version_share", "gauge",
                   "Share of callers served each prompt's production and canary version, with its status.");
    const char *name;
    json_t *p;
    size_t np = 0;
    json_object_foreach(registry_prompts(reg), name, p) {
        if (np++ >= PMETRICS_MAX_PROMPTS)
            break;
        int64_t prod = registry_version_in(reg, name, "production"), canary = registry_version_in(reg, name, "canary");
        double share = canary ? json_number_value(json_object_get(p, "canary_share")) : 0;
        char v[24];
        if (prod) {
            snprintf(v, sizeof v, "%lld", (long long)prod);
            metrics_sample(b, "ratchet_prompt_version_share", 1 - share, "prompt", name, "version", v, "status",
                           "production", NULL);
        }
        if (canary) {
            snprintf(v, sizeof v, "%lld", (long long)canary);
            metrics_sample(b, "ratchet_prompt_version_share", share, "prompt", name, "version", v, "status", "canary",
                           NULL);
        }
    }
    metrics_one(b, "ratchet_prompt_metrics_dropped_total", "counter",
                "Traces and feedback not counted per prompt: their prompt came after the first 100.",
                (double)pm->dropped);
}
