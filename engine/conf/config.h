/* config.h — the engine's settings, read from a Lua file in a sandbox. */
#ifndef RATCHET_CONFIG_H
#define RATCHET_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    int max_connections;
    int max_connections_per_address;
    int max_header_bytes;
    int max_body_bytes;
    int max_batch_items;
    int header_timeout_ms;
    int body_timeout_ms;
    int idle_timeout_ms;
    int shutdown_timeout_ms;
    int max_pending_writes;
} config_limits;

/* Script limits and reloading (the `scripts` table). */
typedef struct {
    char **dirs;               /* NULL-terminated roots holding evaluators/, policies/, scripts/ */
    int memory_limit_mb;
    int evaluator_budget_ms;
    int policy_budget_ms;
    int template_budget_ms;
    int load_budget_ms;
    int max_stall_ms;          /* past a slice, where a script cannot pause */
    bool watch;                /* reload when a file changes */
    int reload_debounce_ms;
} config_scripts;

/* Online evaluation (the `evaluation` table). */
typedef struct {
    int max_backlog;           /* traces waiting; past it new ones go unevaluated */
    int concurrency;           /* evaluator invocations running at once */
    int busy_share;            /* % of the loop thread evaluation may take while ingest is busy */
} config_evaluation;

/* One evaluator attached to a prompt. */
typedef struct {
    char *name;                /* unique within the prompt; default: the evaluator's */
    char *evaluator;           /* the file evaluators/<evaluator>.lua */
    char *options_json;        /* a JSON object */
    bool required;             /* a failure fails the trace (else advisory) */
    int line;
} config_attachment;

typedef struct {
    char *name;
    config_attachment *evaluators;
    size_t nevaluators;
    char *loop_json;           /* the `loop` table (docs/loop.md) as JSON, or NULL: no automation */
    int line;
} config_prompt;

/* An LLM provider: its settings table as JSON (llm_provider_parse checks
 * it). The JSON holds the API key: never log it. */
typedef struct {
    char *name;
    char *json;
    int line;
} config_provider;

/* LLM budgets (the `llm` table); 0: no limit. */
typedef struct {
    double daily_calls, daily_tokens, daily_cost;
    double run_calls, run_tokens, run_cost;
} config_llm;

/* ratchet.http.request from scripts (the `http` table). */
typedef struct {
    char **allow;              /* URL prefixes scripts may call; NULL-terminated; none: no calls */
    int timeout_ms;
    int max_response_bytes;
} config_http;

/* The OTLP/HTTP receiver (the `otlp` table; docs/otlp.md). */
typedef struct {
    char *listen;        /* "host:port"; NULL: no OTLP listener */
    char *prompt_rule;   /* a policy (policies/NAME.lua, kind otlp_prompt) for spans no attribute links; NULL: none */
} config_otlp;
/* Gateway mode (the `gateway` table, docs/gateway.md): on once the table is set. */
typedef struct {
    bool enabled;
    char **keys;               /* gateway keys, NULL-terminated; none: loopback callers only */
    char **providers;          /* providers pass-through may use, NULL-terminated; none: no pass-through */
    bool caller_keys;          /* a caller may bring its own upstream key (X-Ratchet-Upstream-Key) */
    int max_body_bytes;
    int requests_per_minute;   /* per gateway key (per address without keys); 0: no limit */
    int tokens_per_minute;     /* the same, in tokens (usage after each answer) */
    int timeout_ms;            /* a whole upstream call */
    int idle_timeout_ms;       /* nothing received from upstream this long: 504 */
    int retry_window_ms;       /* same caller, prompt and variables within it: a retry; 0: off */
    int line;                  /* where the table was set, for errors found after the file ran */
} config_gateway;

/* The store (the `store` table, docs/scale-out.md): SQLite in data_dir unless kind is "postgres". */
typedef struct {
    char *kind;          /* NULL or "sqlite", or "postgres" */
    char *dsn;           /* postgres: libpq connection string (may hold a password: never logged) */
    int read_pool;       /* postgres: read connections kept open */
    int retention_days;  /* 0: keep traces forever; else delete those older (docs/scale-out.md) */
    int read_timeout_ms; /* postgres: each read's deadline */
} config_store;

typedef struct {
    char *path;          /* the file read, or NULL for built-in defaults */
    char *source;        /* its text, for the lines of messages; NULL for defaults */
    char *listen;        /* "host:port" or "[v6]:port" */
    char *data_dir;
    char *ingest_token;  /* NULL: ingest only from loopback clients */
    char *admin_token;   /* NULL: reads and admin only from loopback clients */
    char *metrics_token; /* may read GET /metrics only; the admin token may too */
    char *viewer_token;  /* may read every GET of the API and the console, no action; the admin token may too */
    char *log_level;
    char *log_format;    /* "text" or "json" */
    bool access_log;
    bool debug_endpoints; /* POST /v1/debug/sleep: block the loop on purpose (watchdog tests) */
    config_limits limits;
    config_scripts scripts;
    config_evaluation evaluation;
    config_prompt *prompts;
    size_t nprompts;
    config_provider *providers;
    size_t nproviders;
    config_llm llm;
    config_http http;
    config_otlp otlp;
    config_gateway gateway;
    config_store store;
} config;

/* Fills c with every default. */
/* The folder of the shipped scripts (evaluators/, policies/, scripts/), the
 * last of the default scripts.dirs, found from where the binary is, never from
 * where the build meant to install it: BIN/../share/ratchet when it holds
 * evaluators/ (an installed binary, whatever PREFIX and DESTDIR were); else,
 * for a binary inside the source tree it was built in (build/ratchet), that
 * tree; else the PREFIX the build was configured with. Resolved once. */
const char *config_share_dir(void);
void config_defaults(config *c);
/* Reads the Lua file at path on top of the defaults. On error returns -1 and
 * writes "file:line: message" into err. */
int config_load(config *c, const char *path, char *err, size_t errlen);
/* Instructions a config file may run (100 million; the fuzz target lowers it). */
extern long config_instruction_limit;
void config_free(config *c);
const config_prompt *config_find_prompt(const config *c, const char *name);
/* The line of setting `key` (a name followed by '=') in prompt p's block of
 * the file, outside comments; p->line when it cannot be found. For
 * messages: Lua gives the line of the prompt call only. */
int config_key_line(const config *c, const config_prompt *p, const char *key);
/* A deep copy of n prompts (NULL for none), and its release. */
config_prompt *config_prompts_copy(const config_prompt *p, size_t n);
void config_prompts_free(config_prompt *p, size_t n);
const config_provider *config_find_provider(const config *c, const char *name);
/* Puts dir first in scripts.dirs (the --script-dir option). */
void config_prepend_script_dir(config *c, const char *dir);
/* Splits a listen address; returns 0 and fills host (with no brackets) and port. */
int config_parse_listen(const char *listen, char *host, size_t hostlen, int *port);

#endif
