/* llm.h — calls to LLM providers (OpenAI-compatible Chat Completions and
 * Anthropic Messages) through the process's HTTP client, with retries
 * (exponential backoff, full jitter, Retry-After), a concurrency limit and
 * request/token buckets per provider, a circuit breaker, prices, daily and
 * per-run budgets checked before sending, and a ledger row per call. */
#ifndef RATCHET_LLM_H
#define RATCHET_LLM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "net/http_client.h"
#include "store/store.h"

enum llm_kind { LLM_OPENAI, LLM_ANTHROPIC };
enum llm_auth { AUTH_BEARER, AUTH_API_KEY, AUTH_X_API_KEY, AUTH_NONE };

typedef struct {
    char *model;
    double input_per_mtok, output_per_mtok; /* price per million tokens */
} llm_price;

typedef struct {
    char *name;
    enum llm_kind kind;
    char *base_url;
    char *api_key;            /* NULL: none sent. Never logged */
    enum llm_auth auth;
    char *query;              /* appended to the URL ("api-version=..."), or NULL */
    char **headers;           /* "Name: value" */
    int nheaders;
    char *anthropic_version;
    char *default_model;
    int timeout_ms, connect_timeout_ms, idle_timeout_ms;
    int max_retries, backoff_base_ms, backoff_max_ms, retry_after_max_ms;
    int concurrency;
    double requests_per_minute, tokens_per_minute; /* 0: no limit */
    int circuit_failures, circuit_cooldown_ms;
    int max_response_bytes;
    llm_price *prices;
    size_t nprices;
} llm_provider_conf;

/* 0: no limit. Daily limits reset at midnight UTC. */
typedef struct {
    double daily_calls, daily_tokens, daily_cost;
    double run_calls, run_tokens, run_cost;
} llm_budgets;

/* Checks a provider's settings (its config table as JSON) and, with out,
 * fills it. Returns 0, or -1 with a message naming the field. */
int llm_provider_parse(const char *name, const char *json, llm_provider_conf *out, char *err, size_t errlen);
void llm_provider_conf_free(llm_provider_conf *p);

typedef struct llm llm;
typedef struct llm_call llm_call;

typedef struct {
    const char *kind;   /* evaluator, run, template, policy, other */
    const char *name;
    const char *run_id; /* NULL when none */
} llm_caller;

/* result: the normalised reply (borrowed: json_incref it to keep it), or
 * NULL with err_kind and err. */
typedef void (*llm_done)(llm_call *c, json_t *result, const char *err_kind, const char *err, void *ud);

llm *llm_new(uv_loop_t *loop, httpc *h, store *st);
/* Reads today's spending from the ledger (at start, before serving). */
int llm_load_totals(llm *l, char *err, size_t errlen);
/* Installs providers (name + JSON, already checked) and budgets; the state
 * of providers that keep their name (breaker, buckets, queue) is kept. */
void llm_configure(llm *l, char *const *names, char *const *jsons, size_t n, const llm_budgets *b);
/* Starts a chat call; request is the JSON of ratchet.llm.chat's table. done
 * runs once, later on the loop, never inside llm_chat (also for a request
 * refused at once). A provider's answer reaches done as soon as it is read,
 * and a call done starts then goes out at once (httpc serves curl's zero
 * timeout before reading the next socket). */
llm_call *llm_chat(llm *l, const char *request, const llm_caller *who, llm_done done, void *ud);
/* Checks the request's shape (fields, types, ranges; not whether the
 * provider is configured): 0, or -1 with a message naming the field. A
 * request that fails it is refused by llm_chat with kind bad_request;
 * scripts' calls are checked before, and raise (docs/lua-api.md). */
int llm_check_request(json_t *request, char *err, size_t errlen);
/* The same with the request already parsed (borrowed: the caller keeps it). */
llm_call *llm_chat_json(llm *l, json_t *request, const llm_caller *who, llm_done done, void *ud);
/* Abandons a call: done is not called. */
void llm_cancel(llm_call *c);
/* Ends every call now with err_kind "cancelled" (their done runs), at shutdown. */
void llm_abort_all(llm *l, const char *why);
/* A run's own budget (0: the configured run_* limit) and what it spent
 * before (read back from the ledger when a run resumes). */
void llm_run_budget(llm *l, const char *run_id, double calls, double tokens, double cost, double spent_calls,
                    double spent_tokens, double spent_cost);
void llm_run_spent(llm *l, const char *run_id, double *calls, double *tokens, double *cost);
/* Drops a finished run's counters (a call still running re-creates them). */
void llm_run_forget(llm *l, const char *run_id);
json_t *llm_status_json(llm *l);
/* Calls, errors, retries, tokens, cost and latency per provider and model,
 * circuits and budgets, for /metrics. */
void llm_metrics(llm *l, buf_t *b);
/* ---- proxied calls (the gateway) ---- */

/* The provider's kind (enum llm_kind) and default model, or -1 when the
 * config has no provider of that name. */
int llm_provider_kind(llm *l, const char *name, const char **default_model);

/* The body llm_chat would send for request (ratchet.llm.chat's shape, already
 * checked) in its provider's protocol, asking for a stream when stream is
 * set (with usage, for OpenAI); NULL when the provider or model is missing. */
char *llm_provider_body(llm *l, json_t *request, bool stream);

typedef struct {
    const char *provider;
    const char *body;          /* sent as it is */
    size_t body_len;
    const char *caller_key;    /* the caller's own upstream key, or NULL: the provider's */
    const char *extra_header;  /* one more "Name: value" line (the caller's anthropic-beta), or NULL */
    long timeout_ms, idle_timeout_ms;
    bool (*on_chunk)(httpc_req *r, int status, const char *content_type, const char *data, size_t len, void *ud);
    httpc_done done;
    void *ud;
} llm_proxy_opts;

/* One attempt of a caller's request to a provider's endpoint with its key
 * and headers (the key never reaches the caller); retries are the caller's
 * (its SDK's). Cancel with httpc_cancel. NULL with err when it cannot start. */
httpc_req *llm_proxy(llm *l, const llm_proxy_opts *o, char *err, size_t errlen);
/* A proxied call's outcome, once known: the provider's and model's figures,
 * today's spending (priced from the provider's models table) and a ledger
 * row (caller "gateway"). kind NULL: ok; else the error kind. */
void llm_note_proxied(llm *l, const char *provider, const char *model, int64_t in_tok, int64_t out_tok,
                      const char *kind, const char *error, double latency_ms, const char *request_id);
/* The daily budget a new call would pass ("llm.daily_cost", ...), or NULL.
 * Proxied calls cannot reserve their worst case (their size is the
 * provider's to choose): they are refused once a daily budget is spent. */
const char *llm_daily_budget_spent(llm *l);

/* Cancels every call; close callbacks need the loop to run afterwards. */
/* Hands the gathered ledger rows to the store now (they are otherwise
 * written within 20 ms); before store_flush at shutdown. */
void llm_ledger_flush(llm *l);
void llm_free(llm *l);

#endif
