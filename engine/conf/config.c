/* config.c — reads ratchet.conf, a Lua file, in a sandbox.
 *
 * The file runs with its own environment: a proxy whose __newindex checks
 * each assignment against the table of settings below (unknown key, wrong
 * type, out-of-range value: an error naming the key and the line) and whose
 * __index offers only a few safe helpers and the settings already made, so a
 * typo on the right-hand side is an error too. No io, os, require or load. */
#include "conf/config.h"

#include <errno.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <libpq-fe.h>
#include <uv.h>

#include "llm/llm.h"
#include "base/util.h"
#include "base/jtree.h"

#ifndef RATCHET_SHARE_DIR
#define RATCHET_SHARE_DIR "/usr/local/share/ratchet"
#endif
#ifndef RATCHET_SOURCE_DIR
#define RATCHET_SOURCE_DIR ""
#endif

#if LUA_VERSION_NUM != 504
#error "ratchet needs Lua 5.4"
#endif

enum setting_type { T_STRING, T_SECRET, T_INT, T_BOOL, T_LEVEL, T_LOG_FORMAT, T_LISTEN, T_TABLE, T_DIRS, T_NUMBER,
                    T_URLS, T_SECRETS, T_NAMES };

typedef struct setting {
    const char *name;
    enum setting_type type;
    size_t offset;
    long min, max;
    const struct setting *sub; /* T_TABLE: the table's own settings */
} setting;

#define OFF(field) offsetof(config, field)
#define LOFF(field) offsetof(config_limits, field)
#define SOFF(field) offsetof(config_scripts, field)
#define EOFF(field) offsetof(config_evaluation, field)
#define LLOFF(field) offsetof(config_llm, field)
#define HOFF(field) offsetof(config_http, field)
#define OOFF(field) offsetof(config_otlp, field)
#define GOFF(field) offsetof(config_gateway, field)
#define STOFF(field) offsetof(config_store, field)

static const setting limit_settings[], script_settings[], evaluation_settings[], llm_settings[], http_settings[],
    otlp_settings[], gateway_settings[], store_settings[];

static const setting settings[] = {
    {"listen", T_LISTEN, OFF(listen), 0, 0, NULL},
    {"data_dir", T_STRING, OFF(data_dir), 0, 0, NULL},
    {"ingest_token", T_SECRET, OFF(ingest_token), 0, 0, NULL},
    {"admin_token", T_SECRET, OFF(admin_token), 0, 0, NULL},
    {"metrics_token", T_SECRET, OFF(metrics_token), 0, 0, NULL},
    {"viewer_token", T_SECRET, OFF(viewer_token), 0, 0, NULL},
    {"log_level", T_LEVEL, OFF(log_level), 0, 0, NULL},
    {"log_format", T_LOG_FORMAT, OFF(log_format), 0, 0, NULL},
    {"access_log", T_BOOL, OFF(access_log), 0, 0, NULL},
    {"debug_endpoints", T_BOOL, OFF(debug_endpoints), 0, 0, NULL},
    {"limits", T_TABLE, OFF(limits), 0, 0, limit_settings},
    {"scripts", T_TABLE, OFF(scripts), 0, 0, script_settings},
    {"evaluation", T_TABLE, OFF(evaluation), 0, 0, evaluation_settings},
    {"llm", T_TABLE, OFF(llm), 0, 0, llm_settings},
    {"http", T_TABLE, OFF(http), 0, 0, http_settings},
    {"otlp", T_TABLE, OFF(otlp), 0, 0, otlp_settings},
    {"gateway", T_TABLE, OFF(gateway), 0, 0, gateway_settings},
    {"store", T_TABLE, OFF(store), 0, 0, store_settings},
    {NULL, 0, 0, 0, 0, NULL},
};

static const setting store_settings[] = {
    {"kind", T_STRING, STOFF(kind), 0, 0, NULL},
    {"dsn", T_STRING, STOFF(dsn), 0, 0, NULL},
    {"read_pool", T_INT, STOFF(read_pool), 1, 64, NULL},
    {"retention_days", T_INT, STOFF(retention_days), 1, 36500, NULL},
    {"read_timeout_ms", T_INT, STOFF(read_timeout_ms), 100, 600000, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const setting otlp_settings[] = {
    {"listen", T_LISTEN, OOFF(listen), 0, 0, NULL},
    {"prompt_rule", T_STRING, OOFF(prompt_rule), 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const setting gateway_settings[] = {
    {"keys", T_SECRETS, GOFF(keys), 0, 0, NULL},
    {"providers", T_NAMES, GOFF(providers), 0, 0, NULL},
    {"caller_keys", T_BOOL, GOFF(caller_keys), 0, 0, NULL},
    {"max_body_bytes", T_INT, GOFF(max_body_bytes), 1024, 1 << 30, NULL},
    {"requests_per_minute", T_INT, GOFF(requests_per_minute), 0, 100000000, NULL},
    {"tokens_per_minute", T_INT, GOFF(tokens_per_minute), 0, 1000000000, NULL},
    {"timeout_ms", T_INT, GOFF(timeout_ms), 100, 3600000, NULL},
    {"idle_timeout_ms", T_INT, GOFF(idle_timeout_ms), 0, 3600000, NULL},
    {"retry_window_ms", T_INT, GOFF(retry_window_ms), 0, 86400000, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const setting llm_settings[] = {
    {"daily_calls", T_NUMBER, LLOFF(daily_calls), 0, 0, NULL},
    {"daily_tokens", T_NUMBER, LLOFF(daily_tokens), 0, 0, NULL},
    {"daily_cost", T_NUMBER, LLOFF(daily_cost), 0, 0, NULL},
    {"run_calls", T_NUMBER, LLOFF(run_calls), 0, 0, NULL},
    {"run_tokens", T_NUMBER, LLOFF(run_tokens), 0, 0, NULL},
    {"run_cost", T_NUMBER, LLOFF(run_cost), 0, 0, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const setting http_settings[] = {
    {"allow", T_URLS, HOFF(allow), 0, 0, NULL},
    {"timeout_ms", T_INT, HOFF(timeout_ms), 100, 600000, NULL},
    {"max_response_bytes", T_INT, HOFF(max_response_bytes), 1024, 1 << 30, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const setting script_settings[] = {
    {"dirs", T_DIRS, SOFF(dirs), 0, 0, NULL},
    {"memory_limit_mb", T_INT, SOFF(memory_limit_mb), 4, 65536, NULL},
    {"evaluator_budget_ms", T_INT, SOFF(evaluator_budget_ms), 1, 600000, NULL},
    {"policy_budget_ms", T_INT, SOFF(policy_budget_ms), 1, 600000, NULL},
    {"template_budget_ms", T_INT, SOFF(template_budget_ms), 1, 600000, NULL},
    {"load_budget_ms", T_INT, SOFF(load_budget_ms), 1, 600000, NULL},
    {"max_stall_ms", T_INT, SOFF(max_stall_ms), 1, 1000, NULL},
    {"watch", T_BOOL, SOFF(watch), 0, 0, NULL},
    {"reload_debounce_ms", T_INT, SOFF(reload_debounce_ms), 0, 60000, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const setting evaluation_settings[] = {
    {"max_backlog", T_INT, EOFF(max_backlog), 1, 100000000, NULL},
    {"concurrency", T_INT, EOFF(concurrency), 1, 100000, NULL},
    {"busy_share", T_INT, EOFF(busy_share), 1, 100, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

static const setting limit_settings[] = {
    {"max_connections", T_INT, LOFF(max_connections), 1, 1000000, NULL},
    {"max_connections_per_address", T_INT, LOFF(max_connections_per_address), 1, 1000000, NULL},
    {"max_header_bytes", T_INT, LOFF(max_header_bytes), 1024, 1 << 20, NULL},
    {"max_body_bytes", T_INT, LOFF(max_body_bytes), 1024, 1 << 30, NULL},
    {"max_batch_items", T_INT, LOFF(max_batch_items), 1, 1000000, NULL},
    {"header_timeout_ms", T_INT, LOFF(header_timeout_ms), 10, 3600000, NULL},
    {"body_timeout_ms", T_INT, LOFF(body_timeout_ms), 10, 3600000, NULL},
    {"idle_timeout_ms", T_INT, LOFF(idle_timeout_ms), 10, 86400000, NULL},
    {"shutdown_timeout_ms", T_INT, LOFF(shutdown_timeout_ms), 10, 600000, NULL},
    {"max_pending_writes", T_INT, LOFF(max_pending_writes), 100, 100000000, NULL},
    {NULL, 0, 0, 0, 0, NULL},
};

/* The config file may call these and nothing else. */
static const char *const allowed_globals[] = {
    "string", "table", "math", "tostring", "tonumber", "type", "pairs", "ipairs",
    "select", "error", "assert", "next", "ipairs", NULL,
};

static bool has_evaluators(const char *root)
{
    char p[4200];
    struct stat st;
    snprintf(p, sizeof p, "%s/evaluators", root);
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *config_share_dir(void)
{
    static char dir[4096];
    if (dir[0])
        return dir;
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0'; /* the binary's folder: PREFIX/bin when installed */
            char *up = strrchr(exe, '/');
            if (up) {
                snprintf(dir, sizeof dir, "%.*s/share/ratchet", (int)(up - exe), exe);
                if (has_evaluators(dir))
                    return dir;
            }
            size_t sl = strlen(RATCHET_SOURCE_DIR);
            if (sl > 1 && !strncmp(exe, RATCHET_SOURCE_DIR, sl) && (exe[sl] == '/' || exe[sl] == '\0') &&
                has_evaluators(RATCHET_SOURCE_DIR)) {
                snprintf(dir, sizeof dir, "%s", RATCHET_SOURCE_DIR);
                return dir;
            }
        }
    }
    snprintf(dir, sizeof dir, "%s", RATCHET_SHARE_DIR);
    return dir;
}

void config_defaults(config *c)
{
    memset(c, 0, sizeof *c);
    c->scripts.dirs = xcalloc(2, sizeof *c->scripts.dirs);
    c->scripts.dirs[0] = xstrdup(config_share_dir());
    c->listen = xstrdup("127.0.0.1:7700");
    const char *state = getenv("STATE_DIRECTORY"); /* set by systemd's StateDirectory= */
    c->data_dir = xstrdup(state && *state ? state : "/var/lib/ratchet");
    c->log_level = xstrdup("info");
    c->log_format = xstrdup("text");
    c->access_log = true;
    c->limits.max_connections = 1024;
    c->limits.max_connections_per_address = 256;
    c->limits.max_header_bytes = 16 * 1024;
    c->limits.max_body_bytes = 8 * 1024 * 1024;
    c->limits.max_batch_items = 10000;
    c->limits.header_timeout_ms = 10000;
    c->limits.body_timeout_ms = 30000;
    c->limits.idle_timeout_ms = 60000;
    c->limits.shutdown_timeout_ms = 5000;
    c->limits.max_pending_writes = 200000;
    c->scripts.memory_limit_mb = 64;
    c->scripts.evaluator_budget_ms = 100;
    c->scripts.policy_budget_ms = 100;
    c->scripts.template_budget_ms = 1000;
    c->scripts.load_budget_ms = 1000;
    c->scripts.max_stall_ms = 10;
    c->scripts.watch = true;
    c->scripts.reload_debounce_ms = 50;
    c->evaluation.max_backlog = 100000;
    c->evaluation.concurrency = 64;
    c->evaluation.busy_share = 10;
    c->http.timeout_ms = 10000;
    c->http.max_response_bytes = 1 << 20;
    c->store.read_pool = 4;
    c->store.read_timeout_ms = 10000;
    c->gateway.max_body_bytes = 4 * 1024 * 1024;
    c->gateway.timeout_ms = 120000;
    c->gateway.idle_timeout_ms = 60000;
}

/* Frees a NULL-terminated list of strings (folders, URL prefixes). */
static void free_strv(char **dirs)
{
    for (char **d = dirs; d && *d; d++)
        free(*d);
    free(dirs);
}

void config_prompts_free(config_prompt *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < p[i].nevaluators; k++) {
            free(p[i].evaluators[k].name);
            free(p[i].evaluators[k].evaluator);
            free(p[i].evaluators[k].options_json);
        }
        free(p[i].evaluators);
        free(p[i].name);
        free(p[i].loop_json);
    }
    free(p);
}

config_prompt *config_prompts_copy(const config_prompt *src, size_t n)
{
    config_prompt *p = n ? xcalloc(n, sizeof *p) : NULL;
    for (size_t i = 0; i < n; i++) {
        p[i] = src[i];
        p[i].name = xstrdup(src[i].name);
        p[i].loop_json = src[i].loop_json ? xstrdup(src[i].loop_json) : NULL;
        p[i].evaluators = src[i].nevaluators ? xcalloc(src[i].nevaluators, sizeof *p[i].evaluators) : NULL;
        for (size_t k = 0; k < src[i].nevaluators; k++) {
            config_attachment *a = &p[i].evaluators[k];
            *a = src[i].evaluators[k];
            a->name = xstrdup(a->name);
            a->evaluator = xstrdup(a->evaluator);
            a->options_json = xstrdup(a->options_json);
        }
    }
    return p;
}

/* ---- lines of the source, for messages ---- */

/* Line n (1-based) of text: its start and length; NULL past the end. */
static const char *line_at(const char *text, int n, size_t *len)
{
    const char *p = text;
    for (int i = 1; p && i < n; i++) {
        p = strchr(p, '\n');
        if (p)
            p++;
    }
    if (!p || !*p)
        return NULL;
    const char *e = strchr(p, '\n');
    *len = e ? (size_t)(e - p) : strlen(p);
    return p;
}

static bool word_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_';
}

/* Whether the line holds token outside a "--" comment: quoted ("x" or 'x'),
 * or as a key (a whole word followed by '='). */
static bool line_has(const char *line, size_t len, const char *token, bool quoted)
{
    size_t tl = strlen(token);
    const char *comment = NULL;
    for (size_t i = 0; i + 1 < len; i++)
        if (line[i] == '-' && line[i + 1] == '-') {
            comment = line + i;
            break;
        }
    size_t end = comment ? (size_t)(comment - line) : len;
    for (size_t i = 0; i + tl <= end; i++) {
        if (memcmp(line + i, token, tl) != 0)
            continue;
        if (quoted) {
            if (i > 0 && i + tl < end && (line[i - 1] == '"' || line[i - 1] == '\'') && line[i + tl] == line[i - 1])
                return true;
        } else if ((i == 0 || !word_char(line[i - 1])) && (i + tl == end || !word_char(line[i + tl]))) {
            size_t j = i + tl;
            while (j < end && (line[j] == ' ' || line[j] == '\t'))
                j++;
            if (j < end && line[j] == '=' && (j + 1 == end || line[j + 1] != '='))
                return true;
        }
    }
    return false;
}

/* The first line in [from, until) (until 0: to the end) holding token. */
static int find_line(const char *text, int from, int until, const char *token, bool quoted)
{
    if (!text || from < 1)
        return 0;
    for (int n = from; until <= 0 || n < until; n++) {
        size_t len;
        const char *l = line_at(text, n, &len);
        if (!l)
            return 0;
        if (line_has(l, len, token, quoted))
            return n;
    }
    return 0;
}

/* the first line after prompt p's, where the next prompt starts (0: none) */
static int next_prompt_line(const config *c, const config_prompt *p)
{
    int next = 0;
    for (size_t i = 0; i < c->nprompts; i++)
        if (c->prompts[i].line > p->line && (!next || c->prompts[i].line < next))
            next = c->prompts[i].line;
    return next;
}

int config_key_line(const config *c, const config_prompt *p, const char *key)
{
    int n = find_line(c->source, p->line, next_prompt_line(c, p), key, false);
    return n ? n : p->line;
}

/* Each attachment's line: where its evaluator's name is quoted, in order,
 * within its prompt's block (the prompt's line when not found). */
static void place_attachments(config *c)
{
    for (size_t i = 0; i < c->nprompts; i++) {
        config_prompt *p = &c->prompts[i];
        int from = p->line, until = next_prompt_line(c, p);
        for (size_t k = 0; k < p->nevaluators; k++) {
            int n = find_line(c->source, from, until, p->evaluators[k].evaluator, true);
            if (n) {
                p->evaluators[k].line = n;
                /* the same evaluator twice: the next one is further down */
                bool again = k + 1 < p->nevaluators && !strcmp(p->evaluators[k + 1].evaluator, p->evaluators[k].evaluator);
                from = again ? n + 1 : n;
            }
        }
    }
}

const config_prompt *config_find_prompt(const config *c, const char *name)
{
    for (size_t i = 0; i < c->nprompts; i++)
        if (strcmp(c->prompts[i].name, name) == 0)
            return &c->prompts[i];
    return NULL;
}

void config_prepend_script_dir(config *c, const char *dir)
{
    size_t n = 0;
    while (c->scripts.dirs && c->scripts.dirs[n])
        n++;
    char **d = xcalloc(n + 2, sizeof *d);
    d[0] = xstrdup(dir);
    for (size_t i = 0; i < n; i++)
        d[i + 1] = c->scripts.dirs[i];
    free(c->scripts.dirs);
    c->scripts.dirs = d;
}

void config_free(config *c)
{
    free(c->path);
    free(c->source);
    free(c->listen);
    free(c->data_dir);
    free(c->ingest_token);
    free(c->admin_token);
    free(c->metrics_token);
    free(c->viewer_token);
    free(c->log_level);
    free(c->log_format);
    free_strv(c->scripts.dirs);
    config_prompts_free(c->prompts, c->nprompts);
    for (size_t i = 0; i < c->nproviders; i++) {
        free(c->providers[i].name);
        free(c->providers[i].json);
    }
    free(c->providers);
    free_strv(c->http.allow);
    free(c->otlp.listen);
    free(c->otlp.prompt_rule);
    free(c->store.kind);
    free(c->store.dsn);
    free_strv(c->gateway.keys);
    free_strv(c->gateway.providers);
    memset(c, 0, sizeof *c);
}

int config_parse_listen(const char *listen, char *host, size_t hostlen, int *port)
{
    const char *colon;
    const char *hstart = listen;
    size_t hlen;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':')
            return -1;
        hstart = listen + 1;
        hlen = (size_t)(close - hstart);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon)
            return -1;
        hlen = (size_t)(colon - listen);
    }
    if (hlen == 0 || hlen >= hostlen)
        return -1;
    memcpy(host, hstart, hlen);
    host[hlen] = '\0';
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p < 0 || p > 65535)
        return -1;
    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    if (uv_ip4_addr(host, (int)p, &a4) != 0 && uv_ip6_addr(host, (int)p, &a6) != 0)
        return -1;
    *port = (int)p;
    return 0;
}

/* Raises "file:line: message" at the line of the Lua code that called the C
 * function raising it (level 1): the assignment or helper call being checked. */
static int config_error(lua_State *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    luaL_where(L, 1);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_concat(L, 2);
    return lua_error(L);
}

static const setting *find_setting(const setting *table, const char *name)
{
    for (const setting *s = table; s->name; s++)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

static void store_string(char **slot, const char *value)
{
    free(*slot);
    *slot = xstrdup(value);
}

/* Checks the value at stack index idx for setting s (named full) and writes it
 * into base. Raises on any mismatch. */
static void apply_setting(lua_State *L, void *base, const setting *s, const char *full, int idx)
{
    int t = lua_type(L, idx);
    switch (s->type) {
    case T_STRING:
    case T_SECRET:
    case T_LEVEL:
    case T_LOG_FORMAT:
    case T_LISTEN: {
        if (s->type == T_SECRET && t == LUA_TNIL) {
            char **slot = (char **)((char *)base + s->offset);
            free(*slot);
            *slot = NULL;
            return;
        }
        if (t != LUA_TSTRING)
            config_error(L, "'%s' must be a string (got %s)", full, lua_typename(L, t));
        size_t len;
        const char *v = lua_tolstring(L, idx, &len);
        if (len == 0 || strlen(v) != len)
            config_error(L, "'%s' must be a non-empty string without NUL bytes", full);
        if (s->type == T_LEVEL && strcmp(v, "debug") && strcmp(v, "info") && strcmp(v, "warn") &&
            strcmp(v, "error"))
            config_error(L, "'%s' must be one of debug, info, warn, error (got '%s')", full, v);
        if (s->type == T_LOG_FORMAT && strcmp(v, "text") && strcmp(v, "json"))
            config_error(L, "'%s' must be \"text\" or \"json\" (got '%s')", full, v);
        if (s->type == T_LISTEN) {
            char host[256];
            int port;
            if (config_parse_listen(v, host, sizeof host, &port) != 0)
                config_error(L, "'%s' must be an IP address and port like \"127.0.0.1:7700\" or \"[::1]:7700\" (got '%s')", full, v);
        }
        if (s->type == T_SECRET && len < 16)
            config_error(L, "'%s' must be at least 16 characters long", full);
        store_string((char **)((char *)base + s->offset), v);
        return;
    }
    case T_INT: {
        if (!lua_isinteger(L, idx))
            config_error(L, "'%s' must be an integer (got %s)", full,
                         t == LUA_TNUMBER ? "a fractional number" : lua_typename(L, t));
        lua_Integer v = lua_tointeger(L, idx);
        if (v < s->min || v > s->max)
            config_error(L, "'%s' must be between %d and %d (got %I)", full, (int)s->min, (int)s->max, v);
        *(int *)((char *)base + s->offset) = (int)v;
        return;
    }
    case T_NUMBER: {
        if (t != LUA_TNUMBER)
            config_error(L, "'%s' must be a number (got %s)", full, lua_typename(L, t));
        double v = lua_tonumber(L, idx);
        if (!(v >= 0) || v - v != 0)
            config_error(L, "'%s' must be a finite number >= 0 (0: no limit)", full);
        *(double *)((char *)base + s->offset) = v;
        return;
    }
    case T_URLS: {
        if (t != LUA_TTABLE)
            config_error(L, "'%s' must be a list of URL prefixes (got %s)", full, lua_typename(L, t));
        lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
        if (n > 256)
            config_error(L, "'%s' may list at most 256 prefixes", full);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i);
            const char *u = lua_tostring(L, -1);
            const char *rest = u && !strncmp(u, "https://", 8) ? u + 8 : u && !strncmp(u, "http://", 7) ? u + 7 : NULL;
            if (lua_type(L, -1) != LUA_TSTRING || !rest || !strchr(rest, '/') || strchr(rest, '/') == rest)
                config_error(L, "'%s[%d]' must be an http:// or https:// URL prefix with a host and a path, like "
                                "\"https://api.example.com/v1/\"", full, (int)i);
            lua_pop(L, 1);
        }
        char **urls = xcalloc((size_t)n + 1, sizeof *urls);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i);
            urls[i - 1] = xstrdup(lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        char ***slot = (char ***)((char *)base + s->offset);
        free_strv(*slot);
        *slot = urls;
        return;
    }
    case T_SECRETS:
    case T_NAMES: {
        bool secrets = s->type == T_SECRETS;
        if (t != LUA_TTABLE)
            config_error(L, "'%s' must be a list of %s (got %s)", full, secrets ? "keys" : "names",
                         lua_typename(L, t));
        lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
        if (n > 1024)
            config_error(L, "'%s' may list at most 1024 entries", full);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i);
            size_t len = 0;
            const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (!v || strlen(v) != len || (secrets ? len < 16 || len > 512 : len == 0 || len > 128))
                config_error(L, secrets ? "'%s[%d]' must be a key of 16 to 512 characters"
                                        : "'%s[%d]' must be a non-empty name", full, (int)i);
            lua_pop(L, 1);
        }
        char **list = xcalloc((size_t)n + 1, sizeof *list);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i);
            list[i - 1] = xstrdup(lua_tostring(L, -1));
            lua_pop(L, 1);
        }
        char ***slot = (char ***)((char *)base + s->offset);
        free_strv(*slot);
        *slot = list;
        return;
    }
    case T_BOOL:
        if (t != LUA_TBOOLEAN)
            config_error(L, "'%s' must be true or false (got %s)", full, lua_typename(L, t));
        *(bool *)((char *)base + s->offset) = lua_toboolean(L, idx);
        return;
    case T_TABLE: {
        if (t != LUA_TTABLE)
            config_error(L, "'%s' must be a table (got %s)", full, lua_typename(L, t));
        void *tbl = (char *)base + s->offset;
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            if (lua_type(L, -2) != LUA_TSTRING)
                config_error(L, "'%s' has a key that is not a name", full);
            const char *k = lua_tostring(L, -2);
            const setting *sub = find_setting(s->sub, k);
            if (!sub)
                config_error(L, "unknown key '%s.%s'", full, k);
            char name[128];
            snprintf(name, sizeof name, "%s.%s", full, k);
            apply_setting(L, tbl, sub, name, lua_gettop(L));
            lua_pop(L, 1);
        }
        return;
    }
    case T_DIRS: {
        if (t != LUA_TTABLE)
            config_error(L, "'%s' must be a list of folders (got %s)", full, lua_typename(L, t));
        lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
        if (n < 1 || n > 16)
            config_error(L, "'%s' must list 1 to 16 folders", full);
        char **dirs = xcalloc((size_t)n + 1, sizeof *dirs);
        const char *cfgdir = lua_tostring(L, lua_upvalueindex(3));
        for (lua_Integer i = 1; i <= n; i++) {
            size_t len;
            lua_rawgeti(L, idx, i);
            const char *d = lua_tolstring(L, -1, &len);
            if (lua_type(L, -1) != LUA_TSTRING || len == 0 || strlen(d) != len) {
                free_strv(dirs);
                config_error(L, "'%s[%d]' must be a folder name", full, (int)i);
            }
            if (d[0] == '/' || !cfgdir)
                dirs[i - 1] = xstrdup(d);
            else {
                dirs[i - 1] = xmalloc(strlen(cfgdir) + len + 2);
                sprintf(dirs[i - 1], "%s/%s", cfgdir, d);
            }
            lua_pop(L, 1);
        }
        char ***slot = (char ***)((char *)base + s->offset);
        free_strv(*slot);
        *slot = dirs;
        return;
    }
    }
}

/* The store table as a whole: a kind it knows, and a DSN libpq can parse for postgres (its
 * text is never quoted back: it may hold a password). */
static void check_store(lua_State *L, const config_store *st)
{
    bool pg = st->kind && !strcmp(st->kind, "postgres");
    if (st->kind && !pg && strcmp(st->kind, "sqlite"))
        config_error(L, "'store.kind' must be \"sqlite\" or \"postgres\" (got '%s')", st->kind);
    if (pg && !st->dsn)
        config_error(L, "'store.dsn' is needed with store.kind = \"postgres\" (a libpq connection string, "
                        "e.g. \"host=db.internal dbname=ratchet user=ratchet\")");
    if (!pg && st->dsn)
        config_error(L, "'store.dsn' is only for store.kind = \"postgres\"");
    if (pg) {
        char *why = NULL;
        PQconninfoOption *opts = PQconninfoParse(st->dsn, &why);
        if (!opts) {
            /* libpq's message names the bad keyword, never the password's value */
            char msg[256];
            snprintf(msg, sizeof msg, "%s", why ? why : "out of memory");
            PQfreemem(why);
            msg[strcspn(msg, "\n")] = 0;
            config_error(L, "'store.dsn' is not a libpq connection string: %s", msg);
        }
        PQconninfoFree(opts);
    }
}

/* __newindex(env, key, value): validate, apply, remember for later reads. */
static int env_newindex(lua_State *L)
{
    config *c = lua_touserdata(L, lua_upvalueindex(1));
    if (lua_type(L, 2) != LUA_TSTRING)
        return config_error(L, "settings are named by strings");
    const char *k = lua_tostring(L, 2);
    const setting *s = find_setting(settings, k);
    if (!s)
        return config_error(L, "unknown key '%s'", k);
    apply_setting(L, c, s, k, 3);
    if (s->offset == OFF(store))
        check_store(L, &c->store);
    if (s->offset == OFF(gateway)) {
        lua_Debug ar;
        c->gateway.enabled = true;
        c->gateway.line = lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar) ? ar.currentline : 0;
    }
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, lua_upvalueindex(2)); /* shadow[k] = v */
    return 0;
}

/* __index(env, key): settings made so far, then the allowed helpers. */
static int env_index(lua_State *L)
{
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) /* shadow */
        return 1;
    lua_pop(L, 1);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL) /* helpers */
        return 1;
    const char *k = lua_tostring(L, 2);
    if (k && find_setting(settings, k))
        return 1; /* a known setting not made yet reads as nil */
    return config_error(L, "unknown name '%s'", k ? k : "?");
}

/* env(NAME) -> the environment variable's value, or nil. */
static int helper_env(lua_State *L)
{
    const char *v = getenv(luaL_checkstring(L, 1));
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

static int push_file_contents(lua_State *L, const char *path, const char *what)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return config_error(L, "%s: cannot read '%s': %s", what, path, strerror(errno));
    buf_t b;
    buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && b.len < (1 << 20))
        buf_append(&b, chunk, n);
    fclose(f);
    while (b.len && (b.data[b.len - 1] == '\n' || b.data[b.len - 1] == '\r' || b.data[b.len - 1] == ' '))
        b.len--;
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    buf_free(&b);
    return 1;
}

/* file(PATH) -> contents with trailing newlines removed; relative paths are
 * relative to the config file's folder. */
static int helper_file(lua_State *L)
{
    const char *p = luaL_checkstring(L, 1);
    if (p[0] == '/')
        return push_file_contents(L, p, "file()");
    const char *dir = lua_tostring(L, lua_upvalueindex(1));
    lua_pushfstring(L, "%s/%s", dir, p);
    return push_file_contents(L, lua_tostring(L, -1), "file()");
}

/* credential(NAME) -> a systemd credential ($CREDENTIALS_DIRECTORY/NAME). */
static int helper_credential(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    if (strchr(name, '/'))
        return config_error(L, "credential(): '%s' is a path, not a credential name", name);
    const char *dir = getenv("CREDENTIALS_DIRECTORY");
    if (!dir)
        return config_error(L, "credential('%s'): $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)", name);
    lua_pushfstring(L, "%s/%s", dir, name);
    return push_file_contents(L, lua_tostring(L, -1), "credential()");
}

/* ---- prompt "name" { evaluators = { ... } } ---- */

#define RAWJSON_MT "ratchet.config.rawjson"

/* json(text): a JSON text to embed as it is in evaluator options (for
 * example a schema read with file()). Checked here, so a bad file is an
 * error at its line. */
static int helper_json(lua_State *L)
{
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    json_error_t jerr;
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY, &jerr);
    if (!v)
        return config_error(L, "json(): not valid JSON (line %d, column %d): %s", jerr.line, jerr.column, jerr.text);
    json_decref(v);
    lua_createtable(L, 1, 0);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, 1);
    luaL_setmetatable(L, RAWJSON_MT);
    return 1;
}

/* Whether the value at idx is what json() returns (a table marked by its metatable). */
static bool is_rawjson(lua_State *L, int idx)
{
    if (!lua_istable(L, idx) || !lua_getmetatable(L, idx))
        return false;
    luaL_getmetatable(L, RAWJSON_MT);
    bool same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same;
}

/* Checks that the Lua value at idx converts to JSON; raises naming where (a
 * path). Allocates nothing, so a raise leaks nothing. */
static void check_json(lua_State *L, int idx, const char *where, int depth)
{
    idx = lua_absindex(L, idx);
    if (depth > 64)
        config_error(L, "%s: nested too deeply (over 64 levels)", where);
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        return;
    case LUA_TNUMBER:
        if (!lua_isinteger(L, idx)) {
            double d = lua_tonumber(L, idx);
            if (d != d || d - d != 0)
                config_error(L, "%s: a number must be finite", where);
        }
        return;
    case LUA_TSTRING: {
        size_t len;
        const char *v = lua_tolstring(L, idx, &len);
        json_t *j = json_stringn(v, len);
        if (!j)
            config_error(L, "%s: strings must be UTF-8", where);
        json_decref(j);
        return;
    }
    case LUA_TTABLE:
        break;
    default:
        config_error(L, "%s: a %s cannot be an option (use strings, numbers, booleans and tables)", where,
                     luaL_typename(L, idx));
    }
    if (is_rawjson(L, idx))
        return;
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    bool strings = false, numbers = false;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        char sub[256];
        if (lua_type(L, -2) == LUA_TSTRING) {
            strings = true;
            snprintf(sub, sizeof sub, "%s.%s", where, lua_tostring(L, -2));
        } else if (lua_isinteger(L, -2) && lua_tointeger(L, -2) >= 1 && lua_tointeger(L, -2) <= n) {
            numbers = true;
            snprintf(sub, sizeof sub, "%s[%d]", where, (int)lua_tointeger(L, -2));
        } else {
            config_error(L, "%s: a table is either a list or has string keys", where);
        }
        if (strings && numbers)
            config_error(L, "%s: a table is either a list or has string keys", where);
        check_json(L, -1, sub, depth + 1);
        lua_pop(L, 1);
    }
}

/* Builds the JSON for a value check_json accepted. */
static json_t *build_json(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
        return json_boolean(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            return json_integer((json_int_t)lua_tointeger(L, idx));
        return json_real(lua_tonumber(L, idx));
    case LUA_TSTRING: {
        size_t len;
        const char *v = lua_tolstring(L, idx, &len);
        return json_stringn(v, len);
    }
    default:
        break;
    }
    if (is_rawjson(L, idx)) {
        lua_rawgeti(L, idx, 1);
        size_t len;
        const char *text = lua_tolstring(L, -1, &len);
        json_t *j = json_loadb(text, len, JSON_DECODE_ANY, NULL);
        lua_pop(L, 1);
        return j;
    }
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    if (n > 0) {
        json_t *arr = json_array();
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, idx, i);
            json_array_append_new(arr, build_json(L, -1));
            lua_pop(L, 1);
        }
        return arr;
    }
    json_t *obj = json_object();
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        json_object_set_new(obj, lua_tostring(L, -2), build_json(L, -1));
        lua_pop(L, 1);
    }
    return obj;
}

static bool valid_name(const char *s, size_t len, size_t max)
{
    if (len == 0 || len > max)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              ch == '_' || ch == '.' || ch == ':' || ch == '/'))
            return false;
    }
    return true;
}

static int current_line(lua_State *L)
{
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar))
        return ar.currentline;
    return 0;
}

/* One entry of a prompt's evaluators list: "name" or
 * { "evaluator", name = ..., options = {...}, required = true }.
 * With a == NULL only checks (raising on any error); with a, fills it (the
 * entry was checked before, so nothing raises while memory is held). Pushes
 * nothing; *name_out gets the attachment's name (valid while the entry is). */
static void parse_attachment(lua_State *L, int idx, const char *prompt, int pos, config_attachment *a,
                             const char **name_out)
{
    char where[200];
    snprintf(where, sizeof where, "prompt '%s': evaluators[%d]", prompt, pos);
    int top = lua_gettop(L);
    const char *ev = NULL, *name = NULL;
    bool required = true;
    int opts = 0;
    if (lua_type(L, idx) == LUA_TSTRING) {
        ev = name = lua_tostring(L, idx);
    } else if (lua_type(L, idx) == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            bool ok = (lua_isinteger(L, -2) && lua_tointeger(L, -2) == 1) ||
                      (k && (!strcmp(k, "evaluator") || !strcmp(k, "name") || !strcmp(k, "options") ||
                             !strcmp(k, "required")));
            if (!ok)
                config_error(L, "%s: unknown key '%s' (give the evaluator's name first, then name, options, "
                                "required)", where, k ? k : "(a positional value)");
            lua_pop(L, 1);
        }
        if (lua_rawgeti(L, idx, 1) == LUA_TNIL)
            lua_getfield(L, idx, "evaluator");
        if (lua_type(L, -1) != LUA_TSTRING)
            config_error(L, "%s: the first value must be the evaluator's name", where);
        ev = name = lua_tostring(L, -1);
        int nt = lua_getfield(L, idx, "name");
        if (nt != LUA_TNIL && nt != LUA_TSTRING)
            config_error(L, "%s: 'name' must be a string", where);
        if (nt == LUA_TSTRING) {
            size_t len;
            name = lua_tolstring(L, -1, &len);
            if (!valid_name(name, len, 64))
                config_error(L, "%s: name '%s' must be 1 to 64 letters, digits and - _ . : /", where, name);
        }
        int rt = lua_getfield(L, idx, "required");
        if (rt != LUA_TNIL && rt != LUA_TBOOLEAN)
            config_error(L, "%s: 'required' must be true or false", where);
        if (rt == LUA_TBOOLEAN)
            required = lua_toboolean(L, -1);
        int ot = lua_getfield(L, idx, "options");
        if (ot != LUA_TNIL) {
            if (ot != LUA_TTABLE || is_rawjson(L, -1) || lua_rawlen(L, -1) > 0)
                config_error(L, "%s: 'options' must be a table of named options", where);
            char ow[240];
            snprintf(ow, sizeof ow, "%s.options", where);
            check_json(L, -1, ow, 0);
            opts = lua_gettop(L);
        }
    } else {
        config_error(L, "%s: must be an evaluator's name or a table (got %s)", where, luaL_typename(L, idx));
    }
    size_t evlen = strlen(ev);
    if (!valid_name(ev, evlen, 64) || strchr(ev, '/') || strchr(ev, '.') || strchr(ev, ':'))
        config_error(L, "%s: '%s' is not an evaluator name (letters, digits, - and _)", where, ev);
    if (a) {
        memset(a, 0, sizeof *a);
        a->evaluator = xstrdup(ev);
        a->name = xstrdup(name);
        a->required = required;
        a->line = current_line(L);
        if (opts) {
            json_t *j = build_json(L, opts);
            a->options_json = json_text(j, JSON_COMPACT);
            json_decref(j);
        } else {
            a->options_json = xstrdup("{}");
        }
    }
    *name_out = name;
    (void)top;
}

/* A table's known keys and the type each takes: 'b' boolean, 's' a name,
 * 'n' a number >= 0, 'f' a share from 0 to 1, 'i' a positive integer, 'z' an
 * integer from 0 to 10000, 'o' a table of options (any JSON), or 't' a
 * nested table checked by sub. */
typedef struct key_spec {
    const char *key;
    char type;
    const struct key_spec *sub;
} key_spec;

static const key_spec optimizer_keys[] = {
    {"provider", 's', NULL}, {"model", 's', NULL}, {"temperature", 'n', NULL}, {"max_tokens", 'i', NULL}, {NULL, 0, NULL}};
static const key_spec budget_keys[] = {{"calls", 'n', NULL}, {"tokens", 'n', NULL}, {"cost", 'n', NULL}, {NULL, 0, NULL}};
static const key_spec gepa_keys[] = {
    {"iterations", 'i', NULL}, {"minibatch", 'i', NULL}, {"merge_every", 'z', NULL}, {"passing", 'z', NULL},
    {"proposals", 'i', NULL},  {"final", 'i', NULL},     {"seed", 'i', NULL},        {"cache", 'b', NULL},
    {"budget", 't', budget_keys}, {NULL, 0, NULL}};
static const key_spec loop_keys[] = {
    {"enabled", 'b', NULL},          {"dataset", 's', NULL},        {"template", 's', NULL},
    {"optimizer", 't', optimizer_keys}, {"candidates", 'i', NULL},  {"require_approval", 'b', NULL},
    {"window_ms", 'i', NULL},        {"check_interval_ms", 'i', NULL}, {"max_shown", 'i', NULL},
    {"max_failures", 'i', NULL},     {"holdout", 'f', NULL},        {"k", 'i', NULL},
    {"concurrency", 'i', NULL},      {"budget", 't', budget_keys},  {"trigger", 's', NULL},
    {"accept", 's', NULL},           {"rollout", 's', NULL},        {"mining", 's', NULL},
    {"trigger_options", 'o', NULL},  {"accept_options", 'o', NULL}, {"rollout_options", 'o', NULL},
    {"mining_options", 'o', NULL},   {"replay", 'z', NULL},         {"replay_pool", 'i', NULL},
    {"search", 's', NULL},           {"search_options", 'o', NULL}, {"gepa", 't', gepa_keys},
    {NULL, 0, NULL}};

/* Checks the table at idx against spec; raises naming where.key. */
static void check_keys(lua_State *L, int idx, const char *where, const key_spec *spec)
{
    idx = lua_absindex(L, idx);
    if (lua_type(L, idx) != LUA_TTABLE || is_rawjson(L, idx) || lua_rawlen(L, idx) > 0)
        config_error(L, "%s must be a table of named settings", where);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        const key_spec *ks = NULL;
        for (const key_spec *x = spec; k && x->key; x++)
            if (!strcmp(x->key, k))
                ks = x;
        if (!ks) {
            char known[600] = "";
            const char *names[40];
            size_t n = 0;
            for (const key_spec *x = spec; x->key; x++) {
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", known[0] ? ", " : "", x->key);
                if (n < 40)
                    names[n++] = x->key;
            }
            const char *near = k ? closest_name(k, names, n) : NULL;
            config_error(L, "%s: unknown key '%s'%s%s%s (known: %s)", where, k ? k : "(a positional value)",
                         near ? "; did you mean '" : "", near ? near : "", near ? "'?" : "", known);
        }
        char sub[300];
        snprintf(sub, sizeof sub, "%s.%s", where, k);
        int t = lua_type(L, -1);
        switch (ks->type) {
        case 'b':
            if (t != LUA_TBOOLEAN)
                config_error(L, "%s must be true or false", sub);
            break;
        case 's': {
            size_t len;
            const char *v = t == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
            if (!v || !valid_name(v, len, 128))
                config_error(L, "%s must be a name (1 to 128 letters, digits and - _ . : /)", sub);
            break;
        }
        case 'n':
        case 'f':
            if (t != LUA_TNUMBER || lua_tonumber(L, -1) < 0 || lua_tonumber(L, -1) != lua_tonumber(L, -1) ||
                (ks->type == 'f' && lua_tonumber(L, -1) > 1))
                config_error(L, ks->type == 'f' ? "%s must be a number from 0 to 1" : "%s must be a number >= 0", sub);
            break;
        case 'i':
            if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > 1000000000)
                config_error(L, "%s must be a positive integer", sub);
            break;
        case 'z':
            if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 || lua_tointeger(L, -1) > 10000)
                config_error(L, "%s must be an integer from 0 to 10000", sub);
            break;
        case 'o':
            if (t != LUA_TTABLE || lua_rawlen(L, -1) > 0)
                config_error(L, "%s must be a table of named options", sub);
            check_json(L, -1, sub, 0);
            break;
        default:
            check_keys(L, -1, sub, ks->sub);
        }
        lua_pop(L, 1);
    }
}

/* The function `prompt "name"` returns: takes the prompt's table. */
static int prompt_body(lua_State *L)
{
    config *c = lua_touserdata(L, lua_upvalueindex(1));
    const char *name = lua_tostring(L, lua_upvalueindex(2));
    if (lua_type(L, 1) != LUA_TTABLE)
        return config_error(L, "prompt '%s' must be followed by a table: prompt \"%s\" { evaluators = {...} }", name,
                            name);
    lua_settop(L, 1);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        if (lua_type(L, -2) != LUA_TSTRING ||
            (strcmp(lua_tostring(L, -2), "evaluators") != 0 && strcmp(lua_tostring(L, -2), "loop") != 0))
            config_error(L, "prompt '%s': unknown key '%s' (known: evaluators, loop)", name,
                         lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "(a positional value)");
        lua_pop(L, 1);
    }
    if (lua_getfield(L, 1, "loop") != LUA_TNIL) {
        char where[200];
        snprintf(where, sizeof where, "prompt '%s': loop", name);
        check_keys(L, lua_gettop(L), where, loop_keys);
    }
    lua_pop(L, 1);
    int t = lua_getfield(L, 1, "evaluators"); /* 2 */
    if (t != LUA_TNIL && t != LUA_TTABLE)
        return config_error(L, "prompt '%s': 'evaluators' must be a list", name);
    size_t n = t == LUA_TTABLE ? lua_rawlen(L, 2) : 0;
    if (n > 64)
        return config_error(L, "prompt '%s': at most 64 evaluators", name);
    /* pass 1: check everything (raises, holding no memory) */
    lua_newtable(L); /* 3: names seen */
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        int top = lua_gettop(L);
        const char *aname;
        parse_attachment(L, top, name, (int)i + 1, NULL, &aname);
        lua_pushstring(L, aname);
        if (lua_rawget(L, 3) != LUA_TNIL)
            return config_error(L, "prompt '%s': two evaluators are named '%s'; give one a distinct name = \"...\"",
                                name, aname);
        lua_pushstring(L, aname);
        lua_pushboolean(L, 1);
        lua_rawset(L, 3);
        lua_settop(L, 3);
    }
    /* pass 2: build */
    config_prompt p = {.line = current_line(L), .name = xstrdup(name), .nevaluators = n};
    p.evaluators = n ? xcalloc(n, sizeof *p.evaluators) : NULL;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i + 1);
        const char *aname;
        parse_attachment(L, lua_gettop(L), name, (int)i + 1, &p.evaluators[i], &aname);
        lua_settop(L, 3);
    }
    if (lua_getfield(L, 1, "loop") == LUA_TTABLE) {
        json_t *j = build_json(L, -1);
        p.loop_json = json_text(j, JSON_COMPACT);
        json_decref(j);
    }
    lua_pop(L, 1);
    c->prompts = xrealloc(c->prompts, (c->nprompts + 1) * sizeof *c->prompts);
    c->prompts[c->nprompts++] = p;
    return 0;
}

/* prompt "name" -> a function taking the prompt's settings. */
static int helper_prompt(lua_State *L)
{
    config *c = lua_touserdata(L, lua_upvalueindex(1));
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (!valid_name(name, len, 128))
        return config_error(L, "prompt: '%s' is not a prompt name (1 to 128 letters, digits and - _ . : /)", name);
    if (config_find_prompt(c, name))
        return config_error(L, "prompt '%s' is declared twice", name);
    lua_pushlightuserdata(L, c);
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, prompt_body, 2);
    return 1;
}

const config_provider *config_find_provider(const config *c, const char *name)
{
    for (size_t i = 0; i < c->nproviders; i++)
        if (strcmp(c->providers[i].name, name) == 0)
            return &c->providers[i];
    return NULL;
}

/* The function `provider "name"` returns: takes the provider's table. */
static int provider_body(lua_State *L)
{
    config *c = lua_touserdata(L, lua_upvalueindex(1));
    const char *name = lua_tostring(L, lua_upvalueindex(2));
    if (lua_type(L, 1) != LUA_TTABLE || lua_rawlen(L, 1) > 0)
        return config_error(L, "provider '%s' must be followed by a table of settings: provider \"%s\" { kind = "
                               "\"openai\", ... }", name, name);
    lua_settop(L, 1);
    char where[160];
    snprintf(where, sizeof where, "provider '%s'", name);
    check_json(L, 1, where, 0);
    json_t *j = build_json(L, 1);
    char *text = json_text(j, JSON_COMPACT);
    json_decref(j);
    char err[400];
    if (llm_provider_parse(name, text, NULL, err, sizeof err) != 0) {
        free(text);
        return config_error(L, "%s", err);
    }
    c->providers = xrealloc(c->providers, (c->nproviders + 1) * sizeof *c->providers);
    c->providers[c->nproviders++] = (config_provider){xstrdup(name), text, current_line(L)};
    return 0;
}

/* provider "name" -> a function taking the provider's settings. */
static int helper_provider(lua_State *L)
{
    config *c = lua_touserdata(L, lua_upvalueindex(1));
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    if (!valid_name(name, len, 64) || strchr(name, '/') || strchr(name, ':'))
        return config_error(L, "provider: '%s' is not a provider name (1 to 64 letters, digits and - _ .)", name);
    if (config_find_provider(c, name))
        return config_error(L, "provider '%s' is declared twice", name);
    lua_pushlightuserdata(L, c);
    lua_pushvalue(L, 1);
    lua_pushcclosure(L, provider_body, 2);
    return 1;
}

long config_instruction_limit = 100000000;

/* Past the limit every instruction raises, so a pcall in the file cannot
 * keep it running. */
static void instruction_limit(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, instruction_limit, LUA_MASKCOUNT, 1);
    luaL_error(L, "configuration took too long to run (over %d instructions)", (int)config_instruction_limit);
}

/* The config's Lua state may hold at most this much: a file that builds
 * without end fails instead of exhausting the machine. */
#define CONFIG_MEMORY_LIMIT (64u << 20)
static void *config_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    size_t *used = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        *used -= old;
        return NULL;
    }
    if (nsize > old && *used + (nsize - old) > CONFIG_MEMORY_LIMIT)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        *used = *used - old + nsize;
    return p;
}

static int load_protected(lua_State *L)
{
    config *c = lua_touserdata(L, 1);
    const char *path = lua_tostring(L, 2);

    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base}, {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math}, {NULL, NULL},
    };
    for (const luaL_Reg *l = libs; l->func; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }

    /* helpers = the allowed globals plus env/file/credential */
    lua_newtable(L);
    int helpers = lua_gettop(L);
    for (const char *const *g = allowed_globals; *g; g++) {
        lua_getglobal(L, *g);
        lua_setfield(L, helpers, *g);
    }
    lua_pushcfunction(L, helper_env);
    lua_setfield(L, helpers, "env");
    const char *slash = strrchr(path, '/');
    if (slash)
        lua_pushlstring(L, path, (size_t)(slash - path));
    else
        lua_pushliteral(L, ".");
    lua_pushcclosure(L, helper_file, 1);
    lua_setfield(L, helpers, "file");
    lua_pushcfunction(L, helper_credential);
    lua_setfield(L, helpers, "credential");
    lua_pushcfunction(L, helper_json);
    lua_setfield(L, helpers, "json");
    lua_pushlightuserdata(L, c);
    lua_pushcclosure(L, helper_prompt, 1);
    lua_setfield(L, helpers, "prompt");
    lua_pushlightuserdata(L, c);
    lua_pushcclosure(L, helper_provider, 1);
    lua_setfield(L, helpers, "provider");
    luaL_newmetatable(L, RAWJSON_MT);
    lua_pop(L, 1);

    lua_newtable(L); /* shadow of the settings made */
    int shadow = lua_gettop(L);

    lua_newtable(L); /* the file's _ENV: always empty, all through metamethods */
    int env = lua_gettop(L);
    lua_newtable(L);
    lua_pushvalue(L, shadow);
    lua_pushvalue(L, helpers);
    lua_pushcclosure(L, env_index, 2);
    lua_setfield(L, -2, "__index");
    lua_pushlightuserdata(L, c);
    lua_pushvalue(L, shadow);
    if (slash)
        lua_pushlstring(L, path, (size_t)(slash - path));
    else
        lua_pushliteral(L, ".");
    lua_pushcclosure(L, env_newindex, 3);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, env);

    if (luaL_loadfilex(L, path, "t") != LUA_OK)
        return lua_error(L);
    lua_pushvalue(L, env);
    lua_setupvalue(L, -2, 1); /* the chunk's _ENV */
    lua_sethook(L, instruction_limit, LUA_MASKCOUNT, (int)config_instruction_limit);
    lua_call(L, 0, 0);
    /* the gateway may name providers declared after it */
    for (int i = 0; c->gateway.providers && c->gateway.providers[i]; i++)
        if (!config_find_provider(c, c->gateway.providers[i]))
            return luaL_error(L, "%s:%d: 'gateway.providers[%d]': no provider named '%s' is declared", path,
                              c->gateway.line, i + 1, c->gateway.providers[i]);
    return 0;
}

int config_load(config *c, const char *path, char *err, size_t errlen)
{
    char **default_dirs = c->scripts.dirs;
    size_t used = 0;
    lua_State *L = lua_newstate(config_alloc, &used);
    if (!L) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    lua_pushcfunction(L, load_protected);
    lua_pushlightuserdata(L, c);
    lua_pushstring(L, path);
    int rc = lua_pcall(L, 2, 0, 0);
    if (rc != LUA_OK) {
        const char *msg = rc == LUA_ERRMEM ? "the configuration used more than 64 MiB" : lua_tostring(L, -1);
        snprintf(err, errlen, "%s%s%s", rc == LUA_ERRMEM ? path : "", rc == LUA_ERRMEM ? ": " : "",
                 msg ? msg : "error in configuration");
        lua_close(L);
        return -1;
    }
    lua_close(L);
    free(c->path);
    c->path = xstrdup(path);
    buf_t text;
    buf_init(&text);
    FILE *f = fopen(path, "rb");
    char chunk[8192];
    size_t got;
    while (f && (got = fread(chunk, 1, sizeof chunk, f)) > 0 && text.len < (8u << 20))
        buf_append(&text, chunk, got);
    if (f)
        fclose(f);
    free(c->source);
    c->source = buf_steal(&text);
    place_attachments(c);
    if (c->scripts.dirs == default_dirs) {
        free_strv(default_dirs);
        /* default: the config file's folder (user scripts), then the shipped ones */
        const char *slash = strrchr(path, '/');
        c->scripts.dirs = xcalloc(3, sizeof *c->scripts.dirs);
        c->scripts.dirs[0] = slash ? xstrndup(path, (size_t)(slash - path)) : xstrdup(".");
        c->scripts.dirs[1] = xstrdup(config_share_dir());
    }
    return 0;
}
