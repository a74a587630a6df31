/* prompt_metrics.h — per prompt and version figures for GET /metrics:
 * traces judged online by verdict, each evaluator's results, feedback, and
 * each version's share of traffic. Label sets stay bounded: only the
 * production and canary versions of a prompt are written (counters are kept
 * for at most PMETRICS_MAX_VERSIONS versions per prompt, the least recently
 * counted dropped first), at most PMETRICS_MAX_PROMPTS prompts get series
 * (later ones are counted in ratchet_prompt_metrics_dropped_total), and the
 * evaluators are the ones the config attaches (at most 64 per prompt).
 * Everything here runs on the loop thread. */
#ifndef RATCHET_PROMPT_METRICS_H
#define RATCHET_PROMPT_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "loop/registry.h"
#include "base/util.h"

#define PMETRICS_MAX_PROMPTS 100
#define PMETRICS_MAX_VERSIONS 8

typedef struct pmetrics pmetrics;

enum pm_result { PM_PASS = 0, PM_FAIL, PM_ERROR };

pmetrics *pmetrics_new(void);
void pmetrics_free(pmetrics *pm);

/* A trace of prompt (version; 0: none named, not counted) judged online:
 * its verdict, and evaluators[i] gave results[i]. */
void pmetrics_trace(pmetrics *pm, const char *prompt, int64_t version, enum pm_result verdict,
                    const char *const *evaluators, const enum pm_result *results, size_t n);
/* Feedback stored on a trace of prompt/version. */
void pmetrics_feedback(pmetrics *pm, const char *prompt, int64_t version, bool negative);

/* The families, for each prompt's production and canary version in reg. */
void pmetrics_write(pmetrics *pm, registry *reg, buf_t *b);

#endif
