/* registry.h — the prompt registry and the datasets' catalogue, held in
 * memory on the loop thread (loaded from the store at start) so resolving
 * the version a caller should use costs microseconds. Every change is
 * checked here, applied to memory, and handed to the store as ops in a
 * store_write the caller submits; its commit is what the caller waits for
 * before answering.
 *
 * A version's life (docs/registry.md):
 *   candidate -> testing -> rejected | approved -> canary -> production -> retired
 *                                                     \-> rolled_back
 * with manual promote, canary and rollback allowed from more states. At most
 * one production and one canary per prompt; every move is a transitions row. */
#ifndef RATCHET_REGISTRY_H
#define RATCHET_REGISTRY_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"
#include "base/util.h"

typedef struct registry registry;

/* An error a user caused: HTTP status, code, the field it names (may be ""). */
typedef struct {
    int status;
    char code[40];
    char field[96];
    char message[600];
} reg_error;

registry *registry_new(store *st);
/* Reads the registry's state (at start, before serving). */
int registry_load(registry *r, char *err, size_t errlen);
/* Takes prompts and datasets as read from the store (store_load_registry)
 * as the registry's state, on the loop thread. */
void registry_replace(registry *r, json_t *prompts, json_t *datasets);
void registry_free(registry *r);

/* Borrowed views, valid until the next change. A prompt object is
 * {description, created_ms, pinned, pin_reason, canary_share, labels, versions}
 * and versions[v-1] is version v {version, messages, model, parent, author,
 * note, status, created_ms}. */
json_t *registry_prompts(registry *r);
json_t *registry_prompt(registry *r, const char *name);
json_t *registry_version(registry *r, const char *name, int64_t version);
/* The number of the version in a status (production, canary), or 0. */
int64_t registry_version_in(registry *r, const char *name, const char *status);
/* Promotions, rollbacks, versions in production and canary, canary shares,
 * per prompt, for /metrics. */
void registry_metrics(registry *r, buf_t *b);

/* Changes. Each returns 0 (ops added to w), or an HTTP status with e filled. */
int registry_create_prompt(registry *r, const char *name, json_t *body, const char *actor, store_write *w,
                           reg_error *e);
/* body: {messages, model?, parent?, author?, note?}; the new number in *version. */
int registry_add_version(registry *r, const char *name, json_t *body, const char *actor, store_write *w,
                         int64_t *version, reg_error *e);
/* A move of the lifecycle made by automation (runs, rollouts). */
int registry_transition(registry *r, const char *name, int64_t version, const char *to, const char *reason,
                        const char *actor, store_write *w, reg_error *e);
int registry_promote(registry *r, const char *name, int64_t version, const char *reason, const char *actor,
                     store_write *w, reg_error *e);
int registry_start_canary(registry *r, const char *name, int64_t version, double share, const char *reason,
                          const char *actor, store_write *w, reg_error *e);
/* Moves the live canary to another share of traffic (an audit row canary -> canary). */
int registry_set_canary_share(registry *r, const char *name, double share, const char *reason, const char *actor,
                              store_write *w, reg_error *e);
/* Ends the canary when there is one; else puts version (0: the previous
 * production) back in production. */
int registry_rollback(registry *r, const char *name, int64_t version, const char *reason, const char *actor,
                      store_write *w, reg_error *e);
int registry_pin(registry *r, const char *name, bool pinned, const char *reason, const char *actor, store_write *w,
                 reg_error *e);
/* version 0 removes the label */
int registry_set_label(registry *r, const char *name, const char *label, int64_t version, const char *actor,
                       store_write *w, reg_error *e);

/* The version a caller should use: the given version or label, else the
 * canary for a sticky share of keys, else production. With vars, the
 * messages are rendered. Writes the JSON answer into out. */
int registry_resolve(registry *r, const char *name, const char *key, const char *label, int64_t version,
                     json_t *vars, buf_t *out, reg_error *e);
/* The version a gateway caller gets (borrowed): the canary for a sticky
 * share of keys, and for a random draw at the canary's share when key is
 * NULL; else production. *why is "canary" or "production". NULL with e. */
json_t *registry_pick(registry *r, const char *name, const char *key, int64_t *version, const char **why,
                      reg_error *e);
/* {prompt, from, to, messages: [{index, role, from_role, status, diff}], model: {from, to}} */
int registry_diff(registry *r, const char *name, int64_t from, int64_t to, json_t **out, reg_error *e);

/* Templates. Renders {{name}} placeholders (strings as they are, other JSON
 * values as JSON text) into a new messages array. */
int template_render(json_t *messages, json_t *vars, json_t **out, reg_error *e);
/* The placeholder names of a template, sorted and unique. */
json_t *template_variables(json_t *messages);
/* Checks a messages template; field_prefix names it in errors. */
int template_check(json_t *messages, const char *field_prefix, reg_error *e);
/* A line diff of two texts (libgit2), as a list of "+line", "-line", " line". */
json_t *text_diff(const char *a, const char *b);

/* ---- datasets ---- */
json_t *registry_datasets(registry *r);
json_t *registry_dataset(registry *r, const char *name);
/* Parses cases sent as JSON Lines or a JSON array into normalised cases
 * {id, variables, expected?, tags, source_trace?}, kept as an object of
 * id -> the case's compact JSON text (in the order sent); errors name the
 * line (or array index) and field; an id twice is an error. */
int dataset_parse_cases(const char *body, size_t len, json_t **cases, reg_error *e);
/* A change makes a new version: mode "append" (an id already there is an
 * error), "upsert" or "replace" (the new cases are the whole dataset);
 * cases as dataset_parse_cases gives them.
 * current: the ids of the current version's cases (read by the caller); removed:
 * ids to take out. The dataset is created when new. *version gets the new number. */
int registry_dataset_change(registry *r, const char *name, const char *mode, json_t *cases, json_t *removed,
                            json_t *current, store_write *w, int64_t *version, reg_error *e);
/* One change at a time per dataset: begin fails with 409 while another runs. */
int registry_dataset_lock(registry *r, const char *name, reg_error *e);
void registry_dataset_unlock(registry *r, const char *name);

bool registry_name_ok(const char *name);
void reg_fail(reg_error *e, int status, const char *code, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#endif
