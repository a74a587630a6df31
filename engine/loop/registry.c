/* registry.c — prompts, their versions and the datasets' catalogue, in
 * memory on the loop thread and persisted through the store (see registry.h). */
#include "loop/registry.h"

#include <ctype.h>
#include <git2.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/jtree.h"
#include "base/log.h"
#include "base/metrics.h"
#include "base/jtree.h"

#define MAX_MESSAGES 64
#define MAX_CONTENT (256 * 1024)
#define MAX_VERSIONS 100000

struct registry {
    store *st;
    json_t *prompts;  /* name -> prompt object */
    json_t *datasets; /* name -> dataset object */
    json_t *busy;     /* dataset names being changed */
    json_t *moves;    /* name -> {promotions, rollbacks} since the start, for /metrics */
    json_t *resolved; /* "name\nversion" -> "messages":...,"model":... of that version, dumped once
                       * (versions never change), for GET /v1/prompts/{name} */
};

static void count_move(registry *r, const char *name, const char *what)
{
    json_t *m = json_object_get(r->moves, name);
    if (!m) {
        m = json_object();
        json_object_set_new(r->moves, name, m);
    }
    json_t *n = json_object_get(m, what);
    json_object_set_new(m, what, json_integer(n ? json_integer_value(n) + 1 : 1));
}

static const char *const statuses[] = {"candidate", "testing",    "rejected", "approved",
                                       "canary",    "production", "retired",  "rolled_back", NULL};

void reg_fail(reg_error *e, int status, const char *code, const char *field, const char *fmt, ...)
{
    e->status = status;
    snprintf(e->code, sizeof e->code, "%s", code);
    snprintf(e->field, sizeof e->field, "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

#define FAIL(status, code, field, ...)                                                                               \
    do {                                                                                                             \
        reg_fail(e, status, code, field, __VA_ARGS__);                                                               \
        return status;                                                                                               \
    } while (0)

bool registry_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 128)
        return false;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("-_.:", *p))
            return false;
    return true;
}

registry *registry_new(store *st)
{
    registry *r = xcalloc(1, sizeof *r);
    r->st = st;
    r->prompts = json_object();
    r->datasets = json_object();
    r->resolved = json_object();
    r->busy = json_object();
    r->moves = json_object();
    git_libgit2_init();
    return r;
}

int registry_load(registry *r, char *err, size_t errlen)
{
    json_t *p, *d;
    if (store_load_registry(r->st, &p, &d, err, errlen) != 0) {
        json_decref(p);
        json_decref(d);
        return -1;
    }
    registry_replace(r, p, d);
    return 0;
}

void registry_replace(registry *r, json_t *prompts, json_t *datasets)
{
    json_decref(r->prompts);
    json_decref(r->datasets);
    r->prompts = prompts;
    r->datasets = datasets;
    /* a version whose commit failed is gone, and its number may be reused */
    json_object_clear(r->resolved);
}

void registry_free(registry *r)
{
    if (!r)
        return;
    json_decref(r->prompts);
    json_decref(r->datasets);
    json_decref(r->busy);
    json_decref(r->moves);
    json_decref(r->resolved);
    git_libgit2_shutdown();
    free(r);
}

json_t *registry_prompts(registry *r)
{
    return r->prompts;
}

json_t *registry_prompt(registry *r, const char *name)
{
    return json_object_get(r->prompts, name);
}

json_t *registry_version(registry *r, const char *name, int64_t version)
{
    json_t *p = registry_prompt(r, name);
    if (!p || version < 1)
        return NULL;
    return json_array_get(json_object_get(p, "versions"), (size_t)(version - 1));
}

static const char *status_of(json_t *v)
{
    return json_string_value(json_object_get(v, "status"));
}

void registry_metrics(registry *r, buf_t *b)
{
    static const char *const what[] = {"promotions", "rollbacks"};
    static const char *const help[] = {"Versions put in production (by the loop, a run or a person), per prompt.",
                                       "Rollbacks (of a canary or of production), per prompt."};
    for (int i = 0; i < 2; i++) {
        char name[64];
        snprintf(name, sizeof name, "ratchet_prompt_%s_total", what[i]);
        metrics_family(b, name, "counter", help[i]);
        const char *prompt;
        json_t *m;
        json_object_foreach(r->moves, prompt, m)
            metrics_sample(b, name, (double)json_integer_value(json_object_get(m, what[i])), "prompt", prompt, NULL);
    }
    metrics_family(b, "ratchet_prompt_version", "gauge",
                   "The version number in production and in canary, per prompt (no sample: none).");
    const char *prompt;
    json_t *p;
    json_object_foreach(r->prompts, prompt, p) {
        int64_t prod = registry_version_in(r, prompt, "production"), canary = registry_version_in(r, prompt, "canary");
        if (prod)
            metrics_sample(b, "ratchet_prompt_version", (double)prod, "prompt", prompt, "status", "production", NULL);
        if (canary)
            metrics_sample(b, "ratchet_prompt_version", (double)canary, "prompt", prompt, "status", "canary", NULL);
    }
    metrics_family(b, "ratchet_prompt_canary_share", "gauge", "The share of callers (0 to 1) the canary is served to.");
    json_object_foreach(r->prompts, prompt, p)
        metrics_sample(b, "ratchet_prompt_canary_share",
                       registry_version_in(r, prompt, "canary")
                           ? json_number_value(json_object_get(p, "canary_share")) : 0,
                       "prompt", prompt, NULL);
}

int64_t registry_version_in(registry *r, const char *name, const char *status)
{
    json_t *p = registry_prompt(r, name);
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(p, "versions"), i, v) if (!strcmp(status_of(v), status)) return (int64_t)i + 1;
    return 0;
}

/* ---- templates ---- */

/* Length of a placeholder's name at p ("{{" already seen), 0 when not one;
 * *end gets the position after "}}". */
static size_t placeholder(const char *p, const char **name, const char **end)
{
    while (*p == ' ')
        p++;
    const char *s = p;
    if (!isalpha((unsigned char)*p) && *p != '_')
        return 0;
    while (isalnum((unsigned char)*p) || *p == '_' || *p == '.' || *p == '-')
        p++;
    size_t n = (size_t)(p - s);
    while (*p == ' ')
        p++;
    if (p[0] != '}' || p[1] != '}')
        return 0;
    *name = s;
    *end = p + 2;
    return n;
}

int template_check(json_t *messages, const char *prefix, reg_error *e)
{
    if (!json_is_array(messages) || json_array_size(messages) == 0 || json_array_size(messages) > MAX_MESSAGES)
        FAIL(400, "invalid_field", prefix, "'%s' must be a list of 1 to %d {role, content} messages", prefix,
             MAX_MESSAGES);
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        char f[96];
        snprintf(f, sizeof f, "%s[%zu]", prefix, i);
        if (!json_is_object(m))
            FAIL(400, "invalid_field", f, "'%s' must be an object {role, content}", f);
        const char *k;
        json_t *x;
        json_object_foreach(m, k, x) if (strcmp(k, "role") && strcmp(k, "content"))
            FAIL(400, "invalid_field", f, "'%s' has an unknown field '%s' (known: role, content)", f, k);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!role || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant"))) {
            snprintf(f, sizeof f, "%s[%zu].role", prefix, i);
            FAIL(400, "invalid_field", f, "'%s' must be \"system\", \"user\" or \"assistant\"", f);
        }
        json_t *c = json_object_get(m, "content");
        if (!json_is_string(c) || json_string_length(c) > MAX_CONTENT) {
            snprintf(f, sizeof f, "%s[%zu].content", prefix, i);
            FAIL(400, "invalid_field", f, "'%s' must be a string of at most %d bytes", f, MAX_CONTENT);
        }
    }
    return 0;
}

json_t *template_variables(json_t *messages)
{
    json_t *set = json_object();
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        const char *c = json_string_value(json_object_get(m, "content"));
        for (const char *p = c ? strstr(c, "{{") : NULL; p; p = strstr(p, "{{")) {
            const char *name, *end;
            size_t n = placeholder(p + 2, &name, &end);
            if (!n) {
                p += 2;
                continue;
            }
            char key[256];
            snprintf(key, sizeof key, "%.*s", (int)(n < 255 ? n : 255), name);
            json_object_set_new(set, key, json_true());
            p = end;
        }
    }
    json_t *names = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(set, k, v) json_array_append_new(names, json_string(k));
    json_decref(set);
    /* jansson keeps insertion order; sort for a stable answer */
    size_t n = json_array_size(names);
    for (size_t a = 1; a < n; a++)
        for (size_t b = a; b > 0 && strcmp(json_string_value(json_array_get(names, b - 1)),
                                           json_string_value(json_array_get(names, b))) > 0;
             b--) {
            json_t *t = json_incref(json_array_get(names, b));
            json_array_set(names, b, json_array_get(names, b - 1));
            json_array_set_new(names, b - 1, t);
        }
    return names;
}

int template_render(json_t *messages, json_t *vars, json_t **out, reg_error *e)
{
    *out = NULL;
    json_t *res = json_array();
    buf_t b;
    buf_init(&b);
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        const char *c = json_string_value(json_object_get(m, "content"));
        buf_reset(&b);
        const char *p = c;
        for (const char *q = strstr(p, "{{"); q; q = strstr(p, "{{")) {
            const char *name, *end;
            size_t n = placeholder(q + 2, &name, &end);
            if (!n) {
                buf_append(&b, p, (size_t)(q + 2 - p));
                p = q + 2;
                continue;
            }
            buf_append(&b, p, (size_t)(q - p));
            char key[256];
            snprintf(key, sizeof key, "%.*s", (int)(n < 255 ? n : 255), name);
            json_t *v = json_object_get(vars, key);
            if (!v) {
                buf_free(&b);
                json_decref(res);
                char f[300];
                snprintf(f, sizeof f, "variables.%s", key);
                FAIL(400, "missing_variable", f, "the template uses {{%s}} (message %zu) but no variable '%s' was given",
                     key, i + 1, key);
            }
            if (json_is_string(v)) {
                buf_append(&b, json_string_value(v), json_string_length(v));
            } else {
                char *t = json_text(v, JSON_COMPACT | JSON_ENCODE_ANY);
                buf_puts(&b, t);
                free(t);
            }
            p = end;
        }
        buf_puts(&b, p);
        json_array_append_new(res, json_pack("{s:O, s:s%}", "role", json_object_get(m, "role"), "content",
                                             b.data ? b.data : "", b.len));
    }
    buf_free(&b);
    *out = res;
    return 0;
}

static const char *const model_fields[] = {"provider", "model",       "temperature", "max_tokens",
                                           "top_p",    "seed",        "stop",        "response_format",
                                           "tools",    "tool_choice", "timeout_ms",  NULL};

static int model_check(json_t *model, reg_error *e)
{
    if (!json_is_object(model))
        FAIL(400, "invalid_field", "model",
             "'model' must be an object like {\"provider\":\"openai\",\"model\":\"gpt-4o-mini\",\"temperature\":0}");
    const char *k;
    json_t *v;
    json_object_foreach(model, k, v) {
        bool ok = false;
        for (const char *const *f = model_fields; *f && !ok; f++)
            ok = !strcmp(*f, k);
        char f[96];
        snprintf(f, sizeof f, "model.%s", k);
        if (!ok)
            FAIL(400, "invalid_field", f,
                 "unknown field '%s' (known: provider, model, temperature, max_tokens, top_p, seed, stop, "
                 "response_format, tools, tool_choice, timeout_ms)",
                 f);
        if ((!strcmp(k, "provider") || !strcmp(k, "model")) && (!json_is_string(v) || json_string_length(v) == 0))
            FAIL(400, "invalid_field", f, "'%s' must be a non-empty string", f);
        if (!strcmp(k, "temperature") &&
            (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 2))
            FAIL(400, "invalid_field", f, "'%s' must be a number from 0 to 2", f);
        if (!strcmp(k, "max_tokens") && (!json_is_integer(v) || json_integer_value(v) < 1))
            FAIL(400, "invalid_field", f, "'%s' must be a positive integer", f);
    }
    return 0;
}

/* ---- changes ---- */

static int now_transition(registry *r, store_write *w, const char *name, int64_t version, const char *to,
                          const char *reason, const char *actor)
{
    json_t *v = registry_version(r, name, version);
    const char *from = status_of(v);
    char fromc[32];
    snprintf(fromc, sizeof fromc, "%s", from ? from : "");
    json_object_set_new(v, "status", json_string(to));
    store_set_version_status(w, name, version, to);
    store_put_transition(w, name, version, fromc[0] ? fromc : NULL, to, reason, actor, now_ms());
    return 0;
}

static json_t *need_prompt(registry *r, const char *name, reg_error *e)
{
    json_t *p = registry_prompt(r, name);
    if (!p)
        reg_fail(e, 404, "unknown_prompt", "prompt", "no prompt named '%s' (create it with POST /v1/prompts)", name);
    return p;
}

static json_t *need_version(registry *r, const char *name, int64_t version, const char *field, reg_error *e)
{
    if (!need_prompt(r, name, e))
        return NULL;
    json_t *v = registry_version(r, name, version);
    if (!v)
        reg_fail(e, 404, "unknown_version", field, "prompt '%s' has no version %lld (it has %zu)", name,
                 (long long)version, json_array_size(json_object_get(registry_prompt(r, name), "versions")));
    return v;
}

static void put_prompt_row(store_write *w, const char *name, json_t *p)
{
    store_put_prompt(w, name, json_string_value(json_object_get(p, "description")),
                     json_integer_value(json_object_get(p, "created_ms")),
                     json_is_true(json_object_get(p, "pinned")), json_string_value(json_object_get(p, "pin_reason")),
                     json_number_value(json_object_get(p, "canary_share")));
}

int registry_create_prompt(registry *r, const char *name, json_t *body, const char *actor, store_write *w,
                           reg_error *e)
{
    if (!registry_name_ok(name))
        FAIL(400, "invalid_field", "name", "'name' must be 1 to 128 letters, digits and - _ . :");
    if (registry_prompt(r, name))
        FAIL(409, "prompt_exists", "name", "a prompt named '%s' already exists", name);
    json_t *desc = json_object_get(body, "description");
    if (desc && (!json_is_string(desc) || json_string_length(desc) > 4096))
        FAIL(400, "invalid_field", "description", "'description' must be a string of at most 4096 bytes");
    json_t *share = json_object_get(body, "canary_share");
    if (share && (!json_is_number(share) || json_number_value(share) <= 0 || json_number_value(share) > 1))
        FAIL(400, "invalid_field", "canary_share", "'canary_share' must be a number above 0 and at most 1");
    json_t *p = json_pack("{s:s, s:I, s:b, s:n, s:f, s:{}, s:[]}", "description", desc ? json_string_value(desc) : "",
                          "created_ms", (json_int_t)now_ms(), "pinned", 0, "pin_reason", "canary_share",
                          share ? json_number_value(share) : 0.05, "labels", "versions");
    json_object_set_new(r->prompts, name, p);
    put_prompt_row(w, name, p);
    store_put_transition(w, name, 0, NULL, "created", "prompt created", actor, now_ms());
    return 0;
}

int registry_add_version(registry *r, const char *name, json_t *body, const char *actor, store_write *w,
                         int64_t *version, reg_error *e)
{
    json_t *p = need_prompt(r, name, e);
    if (!p)
        return e->status;
    if (!json_is_object(body))
        FAIL(400, "invalid_json", "", "the body must be a JSON object {messages, model, parent, author, note}");
    const char *k;
    json_t *x;
    json_object_foreach(body, k, x) if (strcmp(k, "messages") && strcmp(k, "model") && strcmp(k, "parent") &&
                                        strcmp(k, "author") && strcmp(k, "note"))
        FAIL(400, "invalid_field", k, "unknown field '%s' (known: messages, model, parent, author, note)", k);
    json_t *messages = json_object_get(body, "messages");
    if (template_check(messages, "messages", e))
        return e->status;
    json_t *model = json_object_get(body, "model");
    if (!model)
        model = json_object();
    else
        json_incref(model);
    if (model_check(model, e)) {
        json_decref(model);
        return e->status;
    }
    json_t *versions = json_object_get(p, "versions");
    size_t n = json_array_size(versions);
    json_t *parent = json_object_get(body, "parent");
    if (parent && !json_is_null(parent) &&
        (!json_is_integer(parent) || json_integer_value(parent) < 1 || (size_t)json_integer_value(parent) > n)) {
        json_decref(model);
        FAIL(400, "invalid_field", "parent", "'parent' must be an existing version of '%s' (1 to %zu)", name, n);
    }
    json_t *author = json_object_get(body, "author"), *note = json_object_get(body, "note");
    if ((author && (!json_is_string(author) || json_string_length(author) > 256)) ||
        (note && (!json_is_string(note) || json_string_length(note) > 65536))) {
        json_decref(model);
        FAIL(400, "invalid_field", author && !json_is_string(author) ? "author" : "note",
             "'author' must be a string up to 256 bytes and 'note' up to 64 KiB");
    }
    if (n >= MAX_VERSIONS) {
        json_decref(model);
        FAIL(409, "too_many_versions", "", "prompt '%s' has %d versions, the most it may have", name, MAX_VERSIONS);
    }
    int64_t par = parent && json_is_integer(parent) ? json_integer_value(parent) : (int64_t)n;
    *version = (int64_t)n + 1;
    json_t *v = json_pack("{s:I, s:O, s:o, s:o, s:s, s:s, s:s, s:I}", "version", (json_int_t)*version, "messages",
                          messages, "model", model, "parent", par ? json_integer(par) : json_null(), "author",
                          author ? json_string_value(author) : actor, "note", note ? json_string_value(note) : "",
                          "status", "candidate", "created_ms", (json_int_t)now_ms());
    json_array_append_new(versions, v);
    char *mj = json_text(messages, JSON_COMPACT), *oj = json_text(json_object_get(v, "model"), JSON_COMPACT);
    store_put_version(w, name, *version, mj, oj, par, json_string_value(json_object_get(v, "author")),
                      json_string_value(json_object_get(v, "note")), "candidate",
                      json_integer_value(json_object_get(v, "created_ms")));
    store_put_transition(w, name, *version, NULL, "candidate", "version added", actor, now_ms());
    free(mj);
    free(oj);
    return 0;
}

static bool allowed(const char *from, const char *to)
{
    static const char *const moves[][2] = {
        {"candidate", "testing"}, {"testing", "rejected"}, {"testing", "approved"}, {"testing", "candidate"},
        {"approved", "testing"},  {"approved", "canary"},  {"canary", "production"}, {"canary", "rolled_back"},
        {"production", "retired"}, {"candidate", "rejected"}, {"approved", "rejected"},
    };
    for (size_t i = 0; i < sizeof moves / sizeof moves[0]; i++)
        if (!strcmp(moves[i][0], from) && !strcmp(moves[i][1], to))
            return true;
    return false;
}

static bool known_status(const char *s)
{
    for (const char *const *p = statuses; *p; p++)
        if (!strcmp(*p, s))
            return true;
    return false;
}

int registry_transition(registry *r, const char *name, int64_t version, const char *to, const char *reason,
                        const char *actor, store_write *w, reg_error *e)
{
    json_t *v = need_version(r, name, version, "version", e);
    if (!v)
        return e->status;
    if (!known_status(to))
        FAIL(400, "invalid_field", "status", "unknown status '%s'", to);
    const char *from = status_of(v);
    if (!allowed(from, to))
        FAIL(409, "invalid_transition", "status", "version %lld of '%s' is %s; it cannot become %s",
             (long long)version, name, from, to);
    if (!strcmp(to, "canary") && registry_version_in(r, name, "canary"))
        FAIL(409, "canary_exists", "version", "prompt '%s' already has a canary (version %lld)", name,
             (long long)registry_version_in(r, name, "canary"));
    if (!strcmp(to, "production")) {
        int64_t cur = registry_version_in(r, name, "production");
        if (cur)
            now_transition(r, w, name, cur, "retired", reason, actor);
        count_move(r, name, "promotions");
    } else if (!strcmp(to, "rolled_back")) {
        count_move(r, name, "rollbacks");
    }
    return now_transition(r, w, name, version, to, reason, actor);
}

int registry_promote(registry *r, const char *name, int64_t version, const char *reason, const char *actor,
                     store_write *w, reg_error *e)
{
    json_t *v = need_version(r, name, version, "version", e);
    if (!v)
        return e->status;
    if (!strcmp(status_of(v), "production"))
        FAIL(409, "already_production", "version", "version %lld of '%s' is already in production",
             (long long)version, name);
    int64_t cur = registry_version_in(r, name, "production");
    if (cur)
        now_transition(r, w, name, cur, "retired", reason, actor);
    count_move(r, name, "promotions");
    return now_transition(r, w, name, version, "production", reason, actor);
}

int registry_start_canary(registry *r, const char *name, int64_t version, double share, const char *reason,
                          const char *actor, store_write *w, reg_error *e)
{
    json_t *v = need_version(r, name, version, "version", e);
    if (!v)
        return e->status;
    const char *st = status_of(v);
    if (!strcmp(st, "production") || !strcmp(st, "canary"))
        FAIL(409, "invalid_transition", "version", "version %lld of '%s' is already %s", (long long)version, name, st);
    int64_t cur = registry_version_in(r, name, "canary");
    if (cur)
        FAIL(409, "canary_exists", "version", "prompt '%s' already has a canary (version %lld); roll it back or "
             "promote it first", name, (long long)cur);
    if (!registry_version_in(r, name, "production"))
        FAIL(409, "no_production", "version", "prompt '%s' has no production version for a canary to share "
             "traffic with; promote one instead", name);
    if (share < 0 || share > 1 || share != share)
        FAIL(400, "invalid_field", "share", "'share' must be a number from 0 to 1");
    json_t *p = registry_prompt(r, name);
    if (share > 0) {
        json_object_set_new(p, "canary_share", json_real(share));
        put_prompt_row(w, name, p);
    }
    return now_transition(r, w, name, version, "canary", reason, actor);
}

int registry_set_canary_share(registry *r, const char *name, double share, const char *reason, const char *actor,
                              store_write *w, reg_error *e)
{
    json_t *p = need_prompt(r, name, e);
    if (!p)
        return e->status;
    int64_t canary = registry_version_in(r, name, "canary");
    if (!canary)
        FAIL(409, "no_canary", "", "prompt '%s' has no canary", name);
    if (!(share > 0 && share <= 1))
        FAIL(400, "invalid_field", "share", "'share' must be a number over 0 and at most 1");
    json_object_set_new(p, "canary_share", json_real(share));
    put_prompt_row(w, name, p);
    store_put_transition(w, name, canary, "canary", "canary", reason, actor, now_ms());
    return 0;
}

int registry_rollback(registry *r, const char *name, int64_t version, const char *reason, const char *actor,
                      store_write *w, reg_error *e)
{
    json_t *p = need_prompt(r, name, e);
    if (!p)
        return e->status;
    int64_t canary = registry_version_in(r, name, "canary");
    if (canary && (!version || version == canary)) {
        count_move(r, name, "rollbacks");
        return now_transition(r, w, name, canary, "rolled_back", reason, actor);
    }
    int64_t prod = registry_version_in(r, name, "production");
    if (!prod)
        FAIL(409, "no_production", "", "prompt '%s' has no production version and no canary to roll back", name);
    if (!version) {
        /* the newest retired version: the one production replaced last */
        for (int64_t i = prod - 1; i >= 1 && !version; i--)
            if (!strcmp(status_of(registry_version(r, name, i)), "retired"))
                version = i;
        if (!version)
            FAIL(409, "nothing_to_roll_back_to", "version", "prompt '%s' has no earlier production version; name the "
                 "version to roll back to", name);
    }
    json_t *v = need_version(r, name, version, "version", e);
    if (!v)
        return e->status;
    if (version == prod)
        FAIL(409, "invalid_transition", "version", "version %lld of '%s' is the production version",
             (long long)version, name);
    count_move(r, name, "rollbacks");
    now_transition(r, w, name, prod, "rolled_back", reason, actor);
    return now_transition(r, w, name, version, "production", reason, actor);
}

int registry_pin(registry *r, const char *name, bool pinned, const char *reason, const char *actor, store_write *w,
                 reg_error *e)
{
    json_t *p = need_prompt(r, name, e);
    if (!p)
        return e->status;
    json_object_set_new(p, "pinned", json_boolean(pinned));
    json_object_set_new(p, "pin_reason", pinned ? json_string(reason) : json_null());
    put_prompt_row(w, name, p);
    store_put_transition(w, name, 0, NULL, pinned ? "pinned" : "unpinned", reason, actor, now_ms());
    return 0;
}

int registry_set_label(registry *r, const char *name, const char *label, int64_t version, const char *actor,
                       store_write *w, reg_error *e)
{
    json_t *p = need_prompt(r, name, e);
    if (!p)
        return e->status;
    if (!registry_name_ok(label) || known_status(label) || !strcmp(label, "latest"))
        FAIL(400, "invalid_field", "label", "a label is 1 to 128 letters, digits and - _ . :, and not a status "
             "name or 'latest'");
    json_t *labels = json_object_get(p, "labels");
    char reason[200];
    if (version) {
        if (!need_version(r, name, version, "version", e))
            return e->status;
        if (!json_object_get(labels, label) && json_object_size(labels) >= 64)
            FAIL(409, "too_many_labels", "label", "prompt '%s' has 64 labels, the most it may have", name);
        json_object_set_new(labels, label, json_integer(version));
        snprintf(reason, sizeof reason, "label %s set", label);
    } else {
        if (!json_object_get(labels, label))
            FAIL(404, "unknown_label", "label", "prompt '%s' has no label '%s'", name, label);
        json_object_del(labels, label);
        snprintf(reason, sizeof reason, "label %s removed", label);
    }
    store_put_label(w, name, label, version);
    store_put_transition(w, name, version, NULL, "labelled", reason, actor, now_ms());
    return 0;
}

/* ---- resolving ---- */

/* A key's place in [0, 1) for this prompt: the same key always lands in the
 * same place, and different prompts split keys independently. */
static double key_point(const char *key, const char *name)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    EVP_DigestUpdate(c, name, strlen(name) + 1);
    EVP_DigestUpdate(c, key, strlen(key));
    EVP_DigestFinal_ex(c, md, &mdlen);
    EVP_MD_CTX_free(c);
    uint64_t x = 0;
    for (int i = 0; i < 8; i++)
        x = x << 8 | md[i];
    return (double)(x >> 11) / 9007199254740992.0; /* 53 bits */
}

json_t *registry_pick(registry *r, const char *name, const char *key, int64_t *version, const char **why,
                      reg_error *e)
{
    json_t *p = need_prompt(r, name, e);
    if (!p)
        return NULL;
    int64_t v = registry_version_in(r, name, "production"), canary = registry_version_in(r, name, "canary");
    *why = "production";
    double share = json_number_value(json_object_get(p, "canary_share"));
    /* no key: a random draw at the canary's share, so key-less traffic still feeds the canary */
    uint64_t draw = 0;
    if (!key)
        random_bytes(&draw, sizeof draw);
    double point = key ? key_point(key, name) : (double)(draw >> 11) / 9007199254740992.0;
    if (canary && point < share) {
        v = canary;
        *why = "canary";
    }
    if (!v) {
        reg_fail(e, 404, "no_production", "model",
                 "prompt '%s' has no production version (promote one, or name a version: ratchet:%s@N)", name, name);
        return NULL;
    }
    *version = v;
    return need_version(r, name, v, "model", e);
}

int registry_resolve(registry *r, const char *name, const char *key, const char *label, int64_t version,
                     json_t *vars, buf_t *out, reg_error *e)
{
    json_t *p = need_prompt(r, name, e);
    if (!p)
        return e->status;
    const char *why;
    if (version) {
        why = "version";
    } else if (label && !strcmp(label, "latest")) {
        version = (int64_t)json_array_size(json_object_get(p, "versions"));
        why = "label";
        if (!version)
            FAIL(404, "no_version", "label", "prompt '%s' has no versions yet", name);
    } else if (label && known_status(label)) {
        version = registry_version_in(r, name, label);
        why = "label";
        if (!version)
            FAIL(404, "no_version", "label", "prompt '%s' has no %s version", name, label);
    } else if (label) {
        json_t *l = json_object_get(json_object_get(p, "labels"), label);
        if (!l)
            FAIL(404, "unknown_label", "label", "prompt '%s' has no label '%s'", name, label);
        version = json_integer_value(l);
        why = "label";
    } else {
        version = registry_version_in(r, name, "production");
        int64_t canary = registry_version_in(r, name, "canary");
        why = "production";
        if (canary && key && key_point(key, name) < json_number_value(json_object_get(p, "canary_share"))) {
            version = canary;
            why = "canary";
        }
        if (!version)
            FAIL(404, "no_production", "prompt", "prompt '%s' has no production version (promote one, or ask for "
                 "?label= or ?version=)", name);
    }
    json_t *v = need_version(r, name, version, "version", e);
    if (!v)
        return e->status;
    json_t *messages = json_object_get(v, "messages");
    if (!vars) { /* the common case, on every request of an application: no tree, no dump */
        char k[300];
        snprintf(k, sizeof k, "%s\n%lld", name, (long long)version);
        json_t *part = json_object_get(r->resolved, k);
        if (!part) {
            json_t *o = json_pack("{s:O, s:O}", "messages", messages, "model", json_object_get(v, "model"));
            char *t = json_text(o, JSON_COMPACT);
            part = json_stringn_nocheck(t + 1, strlen(t) - 2); /* without the braces */
            json_object_set_new(r->resolved, k, part);
            free(t);
            json_decref(o);
        }
        /* name (a registry name) and status need no escaping */
        buf_printf(out,
                   "{\"prompt\":\"%s\",\"version\":%lld,\"status\":\"%s\",\"chosen_by\":\"%s\",%s,"
                   "\"rendered\":false}",
                   name, (long long)version, status_of(v), why, json_string_value(part));
        return 0;
    }
    json_t *rendered = NULL;
    if (template_render(messages, vars, &rendered, e))
        return e->status;
    json_t *ans = json_pack("{s:s, s:I, s:O, s:s, s:O, s:O, s:b}", "prompt", name, "version", (json_int_t)version,
                            "status", json_object_get(v, "status"), "chosen_by", why, "messages",
                            rendered ? rendered : messages, "model", json_object_get(v, "model"), "rendered",
                            rendered != NULL);
    json_decref(rendered);
    char *t = jtree_dump_text(ans, false);
    buf_puts(out, t);
    free(t);
    json_decref(ans);
    return 0;
}

/* ---- diff ---- */

static int diff_line(const git_diff_delta *d, const git_diff_hunk *h, const git_diff_line *l, void *payload)
{
    (void)d;
    (void)h;
    json_t *lines = payload;
    if (l->origin != GIT_DIFF_LINE_CONTEXT && l->origin != GIT_DIFF_LINE_ADDITION &&
        l->origin != GIT_DIFF_LINE_DELETION)
        return 0;
    size_t n = l->content_len;
    if (n && l->content[n - 1] == '\n')
        n--;
    char *s = xmalloc(n + 2);
    s[0] = l->origin;
    memcpy(s + 1, l->content, n);
    s[n + 1] = '\0';
    json_array_append_new(lines, json_stringn(s, n + 1));
    free(s);
    return 0;
}

json_t *text_diff(const char *a, const char *b)
{
    json_t *lines = json_array();
    git_diff_options opts;
    git_diff_options_init(&opts, GIT_DIFF_OPTIONS_VERSION);
    opts.context_lines = 3;
    opts.flags |= GIT_DIFF_FORCE_TEXT;
    /* libgit2 wants a final newline to see the last line as a line */
    size_t la = strlen(a), lb = strlen(b);
    char *aa = xmalloc(la + 2), *bb = xmalloc(lb + 2);
    memcpy(aa, a, la);
    memcpy(bb, b, lb);
    if (la && aa[la - 1] != '\n')
        aa[la++] = '\n';
    if (lb && bb[lb - 1] != '\n')
        bb[lb++] = '\n';
    git_diff_buffers(aa, la, "a", bb, lb, "b", &opts, NULL, NULL, NULL, diff_line, lines);
    free(aa);
    free(bb);
    return lines;
}

int registry_diff(registry *r, const char *name, int64_t from, int64_t to, json_t **out, reg_error *e)
{
    json_t *a = need_version(r, name, from, "from", e);
    if (!a)
        return e->status;
    json_t *b = need_version(r, name, to, "to", e);
    if (!b)
        return e->status;
    json_t *ma = json_object_get(a, "messages"), *mb = json_object_get(b, "messages");
    size_t n = json_array_size(ma) > json_array_size(mb) ? json_array_size(ma) : json_array_size(mb);
    json_t *msgs = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(ma, i), *y = json_array_get(mb, i);
        const char *cx = x ? json_string_value(json_object_get(x, "content")) : "";
        const char *cy = y ? json_string_value(json_object_get(y, "content")) : "";
        const char *st = !x ? "added" : !y ? "removed" : strcmp(cx, cy) ? "changed" : "same";
        json_t *rx = x ? json_object_get(x, "role") : NULL, *ry = y ? json_object_get(y, "role") : NULL;
        if (x && y && !json_equal(rx, ry))
            st = "changed";
        json_array_append_new(msgs, json_pack("{s:I, s:O, s:O, s:s, s:o}", "index", (json_int_t)i, "from_role",
                                              rx ? rx : json_null(), "role", ry ? ry : json_null(), "status", st,
                                              "diff", strcmp(st, "same") ? text_diff(cx, cy) : json_array()));
    }
    json_t *fm = json_object_get(a, "model"), *tm = json_object_get(b, "model");
    *out = json_pack("{s:s, s:I, s:I, s:o, s:{s:O, s:O, s:b}}", "prompt", name, "from", (json_int_t)from, "to",
                     (json_int_t)to, "messages", msgs, "model", "from", fm, "to", tm, "changed", !json_equal(fm, tm));
    return 0;
}

/* ---- datasets ---- */

json_t *registry_datasets(registry *r)
{
    return r->datasets;
}

json_t *registry_dataset(registry *r, const char *name)
{
    return json_object_get(r->datasets, name);
}

int registry_dataset_lock(registry *r, const char *name, reg_error *e)
{
    if (json_object_get(r->busy, name))
        FAIL(409, "dataset_busy", "dataset", "dataset '%s' is being changed by another request; retry", name);
    json_object_set_new(r->busy, name, json_true());
    return 0;
}

void registry_dataset_unlock(registry *r, const char *name)
{
    json_object_del(r->busy, name);
}

/* Normalises one case; where names it ("line 3"). */
static int case_normalise(json_t *c, const char *where, json_t **out, reg_error *e)
{
    if (!json_is_object(c))
        FAIL(400, "invalid_case", where, "%s: a case must be a JSON object {id, variables, expected, tags}", where);
    const char *k;
    json_t *x;
    char f[160];
    json_object_foreach(c, k, x) if (strcmp(k, "id") && strcmp(k, "variables") && strcmp(k, "expected") &&
                                     strcmp(k, "tags") && strcmp(k, "source_trace")) {
        snprintf(f, sizeof f, "%s: %s", where, k);
        FAIL(400, "invalid_case", f, "%s: unknown field '%s' (known: id, variables, expected, tags, source_trace)",
             where, k);
    }
    json_t *vars = json_object_get(c, "variables");
    if (!json_is_object(vars)) {
        snprintf(f, sizeof f, "%s: variables", where);
        FAIL(400, "invalid_case", f, "%s: 'variables' must be an object of the template's variables", where);
    }
    json_t *tags = json_object_get(c, "tags");
    if (tags && (!json_is_array(tags) || json_array_size(tags) > 32)) {
        snprintf(f, sizeof f, "%s: tags", where);
        FAIL(400, "invalid_case", f, "%s: 'tags' must be a list of up to 32 strings", where);
    }
    size_t i;
    json_array_foreach(tags, i, x) if (!json_is_string(x) || !registry_name_ok(json_string_value(x))) {
        snprintf(f, sizeof f, "%s: tags[%zu]", where, i);
        FAIL(400, "invalid_case", f, "%s: tags[%zu] must be 1 to 128 letters, digits and - _ . :", where, i);
    }
    json_t *src = json_object_get(c, "source_trace");
    if (src && !json_is_null(src) && (!json_is_string(src) || json_string_length(src) > 128)) {
        snprintf(f, sizeof f, "%s: source_trace", where);
        FAIL(400, "invalid_case", f, "%s: 'source_trace' must be a trace id", where);
    }
    json_t *id = json_object_get(c, "id");
    char idbuf[40];
    if (id) {
        if (!json_is_string(id) || !registry_name_ok(json_string_value(id))) {
            snprintf(f, sizeof f, "%s: id", where);
            FAIL(400, "invalid_case", f, "%s: 'id' must be 1 to 128 letters, digits and - _ . :", where);
        }
    } else {
        /* no id: one derived from the variables, so the same case keeps its id */
        char *t = json_text(vars, JSON_COMPACT | JSON_SORT_KEYS);
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        EVP_Digest(t, strlen(t), md, &n, EVP_sha256(), NULL);
        free(t);
        strcpy(idbuf, "case-");
        for (int j = 0; j < 6; j++)
            sprintf(idbuf + 5 + 2 * j, "%02x", md[j]);
    }
    json_t *o = json_pack("{s:s, s:O, s:O}", "id", id ? json_string_value(id) : idbuf, "variables", vars, "tags",
                          tags ? tags : json_array());
    if (json_object_get(c, "expected"))
        json_object_set(o, "expected", json_object_get(c, "expected"));
    if (src && json_is_string(src))
        json_object_set(o, "source_trace", src);
    if (!tags)
        json_decref(json_object_get(o, "tags")); /* json_pack O took a ref on the fresh array */
    *out = o;
    return 0;
}

/* Normalises case c (where names it) into cases as id -> compact text;
 * seen maps each id to where it came from. */
static int parse_one(json_t *cases, json_t *seen, json_t *c, const char *where, reg_error *e)
{
    json_t *o;
    int rc = case_normalise(c, where, &o, e);
    if (rc)
        return rc;
    const char *id = json_string_value(json_object_get(o, "id"));
    json_t *prev = json_object_get(seen, id);
    if (prev) {
        reg_fail(e, 400, "duplicate_case", where, "%s: case id '%s' is also used by %s", where, id,
                 json_string_value(prev));
        json_decref(o);
        return 400;
    }
    json_object_set_new(seen, id, json_string(where));
    char *text = json_text(o, JSON_COMPACT);
    json_object_set_new(cases, id, json_string_nocheck(text));
    free(text);
    json_decref(o);
    return 0;
}

int dataset_parse_cases(const char *body, size_t len, json_t **cases, reg_error *e)
{
    *cases = json_object();
    json_t *seen = json_object(); /* id -> where */
    const char *p = body, *end = body + len;
    while (p < end && isspace((unsigned char)*p))
        p++;
    int rc = 0;
    if (p < end && *p == '[') {
        json_error_t je;
        json_t *arr = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
        if (!json_is_array(arr)) {
            reg_fail(e, 400, "invalid_json", "body", "the body is not a JSON array of cases: %s",
                     arr ? "another JSON value" : je.text);
            rc = 400;
        }
        size_t i;
        json_t *c;
        json_array_foreach(arr, i, c) {
            char where[64];
            snprintf(where, sizeof where, "case %zu", i + 1);
            if (rc || (rc = parse_one(*cases, seen, c, where, e)))
                break;
        }
        json_decref(arr);
    } else {
        size_t line = 0;
        while (p < end && !rc) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *le = nl ? nl : end;
            line++;
            const char *q = p;
            while (q < le && isspace((unsigned char)*q))
                q++;
            char where[64];
            snprintf(where, sizeof where, "line %zu", line);
            if (q < le) {
                json_error_t je;
                json_t *c = json_loadb(p, (size_t)(le - p), JSON_REJECT_DUPLICATES, &je);
                if (!c) {
                    reg_fail(e, 400, "invalid_case", where, "%s: not valid JSON: %s", where, je.text);
                    rc = 400;
                } else {
                    rc = parse_one(*cases, seen, c, where, e);
                }
                json_decref(c);
            }
            p = nl ? nl + 1 : end;
        }
    }
    json_decref(seen);
    if (!rc && json_object_size(*cases) == 0) {
        reg_fail(e, 400, "invalid_case", "body", "no cases: send JSON Lines (one case per line) or a JSON array");
        rc = 400;
    }
    if (rc) {
        json_decref(*cases);
        *cases = NULL;
    }
    return rc;
}

int registry_dataset_change(registry *r, const char *name, const char *mode, json_t *cases, json_t *removed,
                            json_t *current, store_write *w, int64_t *version, reg_error *e)
{
    if (!registry_name_ok(name))
        FAIL(400, "invalid_field", "dataset", "a dataset name is 1 to 128 letters, digits and - _ . :");
    json_t *d = registry_dataset(r, name);
    json_t *have = json_object(); /* id -> true, of the current version */
    size_t i;
    json_t *c;
    json_array_foreach(current, i, c) json_object_set_new(have, json_string_value(c), json_true());
    bool replace = !strcmp(mode, "replace");
    const char *id;
    i = 0;
    json_object_foreach(cases, id, c) {
        if (!strcmp(mode, "append") && json_object_get(have, id)) {
            json_decref(have);
            char f[160];
            snprintf(f, sizeof f, "cases[%zu].id", i);
            FAIL(409, "duplicate_case", f, "dataset '%s' already has a case '%s' (use mode=upsert to replace it)",
                 name, id);
        }
        i++;
    }
    json_array_foreach(removed, i, c) if (!json_object_get(have, json_string_value(c))) {
        json_decref(have);
        FAIL(404, "unknown_case", "id", "dataset '%s' has no case '%s'", name, json_string_value(c));
    }
    int64_t v = d ? json_integer_value(json_object_get(d, "version")) + 1 : 1;
    int64_t count = replace ? 0 : (int64_t)json_object_size(have);
    if (replace)
        store_remove_all_cases(w, name, v);
    json_array_foreach(removed, i, c) {
        store_remove_case(w, name, json_string_value(c), v);
        count--;
    }
    json_object_foreach(cases, id, c) {
        if (!replace && json_object_get(have, id))
            store_remove_case(w, name, id, v); /* upsert: the new row replaces it */
        else
            count++;
        store_put_case(w, name, id, v, json_string_value(c));
    }
    json_decref(have);
    int64_t now = now_ms();
    if (!d) {
        d = json_pack("{s:s, s:I, s:I, s:I, s:I}", "description", "", "version", (json_int_t)v, "cases",
                      (json_int_t)count, "created_ms", (json_int_t)now, "updated_ms", (json_int_t)now);
        json_object_set_new(r->datasets, name, d);
    } else {
        json_object_set_new(d, "version", json_integer(v));
        json_object_set_new(d, "cases", json_integer(count));
        json_object_set_new(d, "updated_ms", json_integer(now));
    }
    store_put_dataset(w, name, json_string_value(json_object_get(d, "description")), v, count,
                      json_integer_value(json_object_get(d, "created_ms")), now);
    *version = v;
    return 0;
}
