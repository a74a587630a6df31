/* catalog.h — the scripts the engine runs, found over the script folders
 * (`scripts.dirs`: the first folder holding evaluators/NAME.lua or
 * policies/NAME.lua wins, so /etc/ratchet overrides the shipped ones by
 * name; policies are reached as "policies/NAME"), loaded into one VM, and
 * reloaded as a transaction per file: a file that fails to load leaves its
 * previous version running, and the error is kept for /v1/status.
 *
 * Loaded evaluators are reference-counted: an invocation holds the version
 * it started on until it ends, whatever reloads happen meanwhile. */
#ifndef RATCHET_CATALOG_H
#define RATCHET_CATALOG_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "script/evaluator.h"
#include "script/script.h"

typedef struct catalog catalog;

typedef struct {
    evaluator ev; /* name, path, version, ref */
    int refs;
    catalog *cat;
} loaded_evaluator;

/* dirs: NULL-terminated roots (copied). */
catalog *catalog_new(script_vm *vm, const char *const *dirs);
void catalog_free(catalog *cat);
script_vm *catalog_vm(const catalog *cat);

/* A reload in two halves: the scan finds and reads the files (any thread,
 * no VM: put it in the thread pool so the loop never waits on the disk);
 * apply loads them into the VM on the loop thread. */
typedef struct catalog_scan catalog_scan;
catalog_scan *catalog_scan_run(const char *const *dirs);
void catalog_scan_free(catalog_scan *scan);
/* What the engine asks of a reload beside each file's own contract: whether
 * a new version fits the configuration that will run (its options, its
 * settings), and whether a script whose file is gone is still in use. */
typedef struct {
    /* 0: take the new version of script `slot`; else -1 with why (the
     * running version stays) */
    int (*accept)(void *ud, catalog *cat, const char *slot, const loaded_evaluator *le, char *why, size_t whylen);
    /* true: slot is used by the running configuration, so a removed file
     * keeps its last version running (and is reported) */
    bool (*in_use)(void *ud, const char *slot);
    void *ud;
} catalog_hooks;

/* Loads every evaluator and policy of the scan and compiles its scripts/
 * files. Returns the number of files that failed; each error is logged
 * (when log_errors), kept for status, and reachable with catalog_errors.
 * hooks may be NULL. Frees the scan. */
int catalog_apply(catalog *cat, catalog_scan *scan, bool log_errors, const catalog_hooks *hooks);
/* The same, but each file's top level runs time-sliced on the run queue
 * (script_load_async): a reload never holds the loop for a script's load.
 * What runs now keeps running meanwhile; cb runs on the loop when every
 * file has loaded (or failed) and the new versions are in place. hooks (may
 * be NULL) is copied. */
typedef void (*catalog_applied)(catalog *cat, int failed, void *ud);
void catalog_apply_async(catalog *cat, catalog_scan *scan, bool log_errors, const catalog_hooks *hooks,
                         catalog_applied cb, void *ud);
/* True while an asynchronous apply is under way. */
bool catalog_applying(const catalog *cat);
/* Loads every file of the scan once in a throwaway VM (lim, with require
 * looking in require_dirs), on the calling thread: put it in the thread
 * pool with the scan. A file that fails there (an error, a kill at the load
 * budget, the memory cap) is marked with its error, and apply keeps its
 * running version without loading it into the engine's VM at all; modules
 * are only compiled here, so apply does not compile them on the loop. */
void catalog_scan_probe(catalog_scan *scan, const script_limits *lim, const char *const *require_dirs);
/* Both halves at once (start-up, `ratchet check`). */
int catalog_reload(catalog *cat, bool log_errors);
const char *const *catalog_dirs(const catalog *cat);
/* The errors of the last reload, one "file:line: message" each. */
size_t catalog_errors(const catalog *cat, const char *const **errors);

/* The current version of evaluators/<name>.lua, with a reference the caller
 * gives back with catalog_release; NULL when there is none. */
loaded_evaluator *catalog_get(catalog *cat, const char *name);
void catalog_release(loaded_evaluator *le);
/* The current version without taking a reference (loop thread, short use). */
const loaded_evaluator *catalog_peek(const catalog *cat, const char *name);
/* The names of the loaded scripts whose slot starts with prefix ("" for
 * evaluators, "policies/", "metaprompts/"), prefix removed, sorted;
 * NULL-terminated, free with catalog_free_list. */
char **catalog_names(const catalog *cat, const char *prefix);

/* The contract of a policy of a kind (trigger, mining, accept, rollout) or
 * of a meta-prompt template (kind "template"): the functions it must export.
 * Returns 0, or -1 with "file[:line]: ..." in err. */
int catalog_check_contract(const catalog *cat, const loaded_evaluator *le, const char *kind, char *err, size_t errlen);
/* The function a policy of kind must export, with its arguments ("next(state,
 * canary, production)"), or NULL when kind is not a policy kind. */
const char *catalog_policy_function(const char *kind);

/* Counters and state for /v1/status. */
typedef struct {
    uint64_t reloads;        /* reloads run */
    uint64_t reload_errors;  /* files that failed to load, summed over reloads */
    int64_t last_reload_ms;
    size_t evaluators;
} catalog_stats;
void catalog_get_stats(const catalog *cat, catalog_stats *st);
/* {"evaluators":[{name,version,path}],"errors":[...],...} */
json_t *catalog_status_json(const catalog *cat);
/* The evaluators' and reloads' families for GET /metrics. */
void catalog_metrics(const catalog *cat, buf_t *b);
/* Every folder a watcher should look at under the roots dirs (the roots and
 * their script folders that exist); reads the disk, any thread.
 * NULL-terminated (or NULL), free with catalog_free_list. */
char **catalog_watch_dirs(const char *const *dirs);
void catalog_free_list(char **list);

#endif
