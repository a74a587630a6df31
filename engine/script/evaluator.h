/* evaluator.h — evaluators: Lua files that judge one output. The contract
 * (docs/evaluators.md): the file returns
 *   { name = "...", description = "...",
 *     options = { name = { type =, required =, allowed =, default =, ... } }?,  -- optdecl.h
 *     check = function(opts) end?,   -- raises on options it cannot use; run at load
 *     evaluate = function(case, opts, ctx) return { pass =, score =, reason = } end }
 * Cases and options cross into the VM as JSON, so the engine and the spec
 * helper hand evaluators exactly the same values. */
#ifndef RATCHET_EVALUATOR_H
#define RATCHET_EVALUATOR_H

#include <jansson.h>
#include <stdbool.h>

#include "base/metrics.h"
#include "script/script.h"

/* What the runs of one evaluator (by name, over all its versions) did, for
 * /metrics. The catalog owns these; evaluators loaded elsewhere have none. */
typedef struct eval_stats {
    char *name;
    uint64_t runs, failures, errors, killed; /* killed: out of time or memory (also in errors) */
    metrics_hist seconds;
    struct eval_stats *next;
} eval_stats;

typedef struct {
    char *name;
    char *description;
    char *path;
    int ref;          /* the table the file returned */
    char version[17]; /* hash of the file's text */
    eval_stats *stats; /* NULL: not counted */
    json_t *options;   /* the options declaration (optdecl.h), or NULL: options unchecked */
    bool has_check;    /* the script has check(opts), run when a config attaches it */
} evaluator;

typedef struct {
    enum script_status status; /* SCRIPT_OK: the evaluator answered; else it failed to */
    bool pass;
    double score;              /* 0..1 */
    char *reason;              /* never NULL; valid UTF-8, under 600 bytes */
    uint64_t lua_ns;           /* time the evaluator ran (Lua, monotonic ns) */
} eval_result;

typedef void (*eval_done)(const eval_result *r, void *ud);

/* Loads and checks the contract, and that its options declaration is well
 * formed; errors name the file (and line). */
int evaluator_load(script_vm *vm, const char *path, evaluator *ev, char *err, size_t errlen);
int evaluator_load_text(script_vm *vm, const char *path, const char *text, size_t len, evaluator *ev, char *err,
                        size_t errlen);
/* The contract check alone, on the table a load returned (ref; it is
 * released on failure). */
int evaluator_from_ref(script_vm *vm, int ref, const char *path, const char version[17], evaluator *ev, char *err,
                       size_t errlen);
void evaluator_free(script_vm *vm, evaluator *ev);
/* Checks options (a JSON text of an object; NULL: none) against the
 * evaluator's declaration, then, when they pass, with its check(opts)
 * function if it has one (run now, under the load budget); report gets each
 * problem. Returns the number of problems (0 when the evaluator declares
 * nothing and has no check: its options are not checked). */
int evaluator_check_options(script_vm *vm, const evaluator *ev, const char *opts_json,
                            void (*report)(const char *problem, void *ud), void *ud);
/* Runs evaluate(case, opts, ctx) with case and opts given as JSON texts
 * under budget_ms (0: the VM's default). With from_trace, case_json is a
 * stored trace and the case is { input = trace.input, output = trace.output,
 * trace = trace }. done runs once, on the loop, possibly before this returns. */
void evaluator_run(script_vm *vm, const evaluator *ev, int budget_ms, bool from_trace, const char *case_json,
                   const char *opts_json, eval_done done, void *ud);
/* The same with the case (not from a trace) given parsed: borrowed, it must
 * live until done runs. */
void evaluator_run_tree(script_vm *vm, const evaluator *ev, int budget_ms, const json_t *case_tree,
                        const char *opts_json, eval_done done, void *ud);

#endif
