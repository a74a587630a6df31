/* gepa.h — the engine's part of a GEPA-style search (Agrawal et al. 2025):
 * reflective evolution of a prompt over a Pareto pool (docs/loop.md, "The
 * gepa strategy"). The engine drives it: the pool, each member's run on a
 * minibatch or the whole feedback set (the prompt's model through the LLM
 * client, judged by the prompt's evaluators), the optimizer calls, merges,
 * the seeded draws, the budget. Lua decides: the template
 * (scripts/metaprompts/gepa.lua) writes the reflection and merge prompts and
 * reads the answers, the search policy (policies/search.lua) picks parents,
 * admits children, picks merges and the members the gate gets.
 *
 * The feedback set holds only what the optimizer may learn from (failures
 * shown to it, passing traces the gate does not replay): never the gate's
 * held-out cases. Every child passes the caller's check (the copy check
 * among them) before it costs a call. Target outputs and optimizer answers
 * go through the output cache, keyed by what was sent (and, for the
 * optimizer, the seed and the step), so the same seed over the same traces
 * replays to the same pool. */
#ifndef RATCHET_GEPA_H
#define RATCHET_GEPA_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "conf/config.h"
#include "llm/llm.h"
#include "script/catalog.h"
#include "store/store.h"

typedef struct gepa gepa;

typedef struct {
    uv_loop_t *uv;
    store *st;
    llm *l;
    catalog *cat;
    script_vm *vm;
    int policy_budget_ms, template_budget_ms, evaluator_budget_ms;
} gepa_env;

/* Checks a proposed child ({system} or {messages}, with a rationale): its
 * messages (new reference), or NULL with why. */
typedef json_t *(*gepa_check)(void *ud, json_t *cand, char *why, size_t whylen);
/* The search ended: result is {seed, stop, iterations, calls, cost, cached,
 * feedback: [case ids], pool: [{id, parents, origin, rationale, scores,
 * mean, messages}], final: [ids], invalid: [{iteration, reason}]} (borrowed),
 * or NULL with err (then the search failed and nothing is proposed). With
 * draining, the engine is stopping and result is NULL. */
typedef void (*gepa_done)(void *ud, json_t *result, const char *err, bool draining);

typedef struct {
    const char *prompt;
    const char *cycle;          /* the LLM calls' run id: the budget and the ledger */
    const char *tpl;            /* metaprompts/NAME */
    const char *policy;         /* policies/NAME */
    json_t *policy_options;     /* the search policy's options (borrowed) */
    json_t *settings;           /* loop.gepa with defaults filled (borrowed) */
    json_t *ctx;                /* the template's ctx without current and failures (borrowed) */
    json_t *seed_messages;      /* the production version's messages (borrowed) */
    json_t *model;              /* its model parameters (borrowed) */
    json_t *optimizer;          /* the optimizer's request without messages (borrowed) */
    json_t *feedback;           /* [{id, variables, source, metadata?}] (borrowed) */
    const config_attachment *atts;
    size_t natts;
    uint64_t seed;
    gepa_check check;
    gepa_done done;
    void *ud;
} gepa_spec;

/* Starts a search: *slot points to it until it ends (set to NULL just
 * before done runs; done may run before this returns, when the search
 * cannot start). */
void gepa_start(const gepa_env *env, const gepa_spec *spec, gepa **slot);
/* The engine is stopping: outstanding calls are let finish, nothing new
 * starts, and done runs with draining once none is in flight. */
void gepa_drain(gepa *g);

#endif
