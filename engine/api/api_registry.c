/* api_registry.c — the prompt registry and datasets: /v1/prompts and
 * /v1/datasets. Changes are checked and applied by the registry on the loop
 * thread and answered once the store has committed them; reads of cases,
 * versions, diffs, the audit log and a prompt's online figures run in the
 * thread pool. */
#include "api/api_registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_request.h"
#include "base/jtree.h"
#include "base/log.h"

#define MAX_NAME 128

/* ---- changes, answered after their commit ---- */

typedef struct {
    api *a;
    http_request *req;
    int status;
    json_t *answer;
    char *dataset; /* unlocked after the commit */
    store_write w;
} commit_job;

/* Reading the registry back after a failed commit: the store is read in
 * the pool, the registry replaced on the loop (which reads it meanwhile). */
typedef struct {
    uv_work_t w;
    api *a;
    json_t *prompts, *datasets;
    char err[256];
    int rc;
} reload_task;

static void reload_work(uv_work_t *w)
{
    reload_task *t = w->data;
    t->rc = store_load_registry(t->a->store, &t->prompts, &t->datasets, t->err, sizeof t->err);
}

static void reload_after(uv_work_t *w, int status)
{
    (void)status;
    reload_task *t = w->data;
    if (t->rc != 0) {
        log_error("registry", "reloading after a failed commit: %s", t->err);
        json_decref(t->prompts);
        json_decref(t->datasets);
    } else {
        registry_replace(t->a->registry, t->prompts, t->datasets);
    }
    free(t);
}

static void on_committed(store_write *w)
{
    commit_job *j = w->data;
    if (w->status == 0) {
        api_respond_json(j->req, j->status, j->answer);
    } else {
        http_respond_error(j->req, 503, "store_error", "the change could not be stored; nothing changed");
        /* memory moved ahead of the store: read the truth back */
        reload_task *t = xcalloc(1, sizeof *t);
        t->a = j->a;
        t->w.data = t;
        uv_queue_work(j->a->loop, &t->w, reload_work, reload_after);
    }
    if (j->dataset)
        registry_dataset_unlock(j->a->registry, j->dataset);
    store_write_clear(w);
    json_decref(j->answer);
    free(j->dataset);
    free(j);
}

/* Submits j->w and answers (status, answer) after the commit. */
static void commit(commit_job *j)
{
    j->w.done = on_committed;
    j->w.data = j;
    if (store_submit(j->a->store, &j->w) != 0) {
        http_respond_error(j->req, 503, "overloaded", "the store's write queue is full; retry later");
        if (j->dataset)
            registry_dataset_unlock(j->a->registry, j->dataset);
        store_write_clear(&j->w);
        json_decref(j->answer);
        free(j->dataset);
        free(j);
    }
}

static commit_job *commit_new(api *a, http_request *req)
{
    commit_job *j = xcalloc(1, sizeof *j);
    j->a = a;
    j->req = req;
    return j;
}

static void commit_drop(commit_job *j)
{
    store_write_clear(&j->w);
    json_decref(j->answer);
    free(j->dataset);
    free(j);
}

/* ---- views ---- */

static bool version_number(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < 1)
        return false;
    *out = v;
    return true;
}

static json_t *version_view(const char *name, json_t *v)
{
    json_t *o = json_deep_copy(v);
    char when[32];
    rfc3339_format(json_integer_value(json_object_get(v, "created_ms")), when);
    json_object_del(o, "created_ms");
    json_object_set_new(o, "created_at", json_string(when));
    json_object_set_new(o, "prompt", json_string(name));
    json_object_set_new(o, "variables", template_variables(json_object_get(v, "messages")));
    return o;
}

static json_t *prompt_view(registry *r, const char *name, json_t *p)
{
    char when[32];
    rfc3339_format(json_integer_value(json_object_get(p, "created_ms")), when);
    int64_t prod = registry_version_in(r, name, "production"), canary = registry_version_in(r, name, "canary");
    return json_pack("{s:s, s:O, s:s, s:O, s:O, s:o, s:o, s:O, s:O, s:I}", "name", name, "description",
                     json_object_get(p, "description"), "created_at", when, "pinned", json_object_get(p, "pinned"),
                     "pin_reason", json_object_get(p, "pin_reason"), "production",
                     prod ? json_integer(prod) : json_null(), "canary", canary ? json_integer(canary) : json_null(),
                     "canary_share", json_object_get(p, "canary_share"), "labels", json_object_get(p, "labels"),
                     "versions", (json_int_t)json_array_size(json_object_get(p, "versions")));
}

/* ---- prompts ---- */

/* GET /v1/prompts */
void api_list_prompts(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    json_t *items = json_array();
    const char *name;
    json_t *p;
    json_object_foreach(registry_prompts(a->registry), name, p) {
        json_t *v = prompt_view(a->registry, name, p);
        json_object_set_new(v, "registered", json_true());
        json_object_set_new(v, "in_config", json_boolean(a->cfg && config_find_prompt(a->cfg, name)));
        json_array_append_new(items, v);
    }
    /* prompts the config declares that have no version in the registry yet:
     * traces of them are judged, but nothing can be resolved, gated or
     * improved until a first version is added */
    for (size_t i = 0; a->cfg && i < a->cfg->nprompts; i++) {
        const char *cname = a->cfg->prompts[i].name;
        if (registry_prompt(a->registry, cname))
            continue;
        char next[600];
        snprintf(next, sizeof next, "add a first version with `ratchet prompt add %s VERSION.json` (a JSON file "
                                    "{\"messages\": [...], \"model\": {...}}), then `ratchet prompt promote %s 1`",
                 cname, cname);
        json_array_append_new(items, json_pack("{s:s, s:b, s:b, s:n, s:n, s:I, s:s}", "name", cname, "registered", 0,
                                               "in_config", 1, "production", "canary", "versions", (json_int_t)0, "next", next));
    }
    json_t *root = json_pack("{s:o}", "items", items);
    api_respond_json(req, 200, root);
    json_decref(root);
}

/* POST /v1/prompts */
void api_create_prompt(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    static const char *const known[] = {"name", "description", "canary_share", NULL};
    const char *name = json_string_value(json_object_get(body, "name"));
    if (api_known_fields(req, body, known, "name, description, canary_share")) {
        commit_job *j = commit_new(a, req);
        reg_error e;
        if (!name) {
            http_respond_field_error(req, 400, "invalid_field", "name", "'name' must be the prompt's name");
            commit_drop(j);
        } else if (registry_create_prompt(a->registry, name, body, api_actor(req), &j->w, &e)) {
            api_respond_reg_error(req, &e);
            commit_drop(j);
        } else {
            j->status = 201;
            j->answer = prompt_view(a->registry, name, registry_prompt(a->registry, name));
            commit(j);
        }
    }
    json_decref(body);
}

/* GET /v1/prompts/{name}?key=&label=&version=&var.NAME=... */
void api_resolve_prompt(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    char key[512] = "", label[MAX_NAME + 1] = "";
    int kr = http_query_get(req, "key", key, sizeof key);
    int lr = http_query_get(req, "label", label, sizeof label);
    long long version = 0;
    if (kr < 0) {
        http_respond_field_error(req, 400, "invalid_parameter", "key", "'key' must be at most 511 bytes");
        return;
    }
    if (lr < 0) {
        http_respond_field_error(req, 400, "invalid_parameter", "label", "'label' must be a label name");
        return;
    }
    if (!api_int_param(req, "version", 1, 1000000000, &version))
        return;
    json_t *vars = NULL;
    for (const char *p = req->query; p && *p;) {
        size_t n = strcspn(p, "=&");
        if (n > 4 && !strncmp(p, "var.", 4)) {
            char k[MAX_NAME + 8], val[16384];
            snprintf(k, sizeof k, "%.*s", (int)(n < MAX_NAME + 4 ? n : MAX_NAME + 4), p);
            if (http_query_get(req, k, val, sizeof val) < 0) {
                json_decref(vars);
                http_respond_field_error(req, 400, "invalid_parameter", k, "'%s' is not a valid value (at most 16 KiB)",
                                         k);
                return;
            }
            if (!vars)
                vars = json_object();
            json_object_set_new(vars, k + 4, json_string(val));
        } else if (!(n == 3 && !strncmp(p, "key", 3)) && !(n == 5 && !strncmp(p, "label", 5)) &&
                   !(n == 7 && !strncmp(p, "version", 7))) {
            char k[64];
            snprintf(k, sizeof k, "%.*s", (int)(n < 60 ? n : 60), p);
            json_decref(vars);
            http_respond_field_error(req, 400, "invalid_parameter", k,
                                     "unknown query parameter '%s' (known: key, label, version, var.NAME)", k);
            return;
        }
        p = strchr(p, '&');
        if (p)
            p++;
    }
    buf_t out;
    buf_init(&out);
    reg_error e;
    if (registry_resolve(a->registry, name, kr > 0 ? key : NULL, lr > 0 ? label : NULL, version, vars, &out, &e))
        api_respond_reg_error(req, &e);
    else
        http_respond(req, 200, "application/json", "Cache-Control: no-store\r\n", out.data, out.len);
    buf_free(&out);
    json_decref(vars);
}

/* POST /v1/prompts/{name}/versions */
void api_add_version(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    json_t *body = api_body_object(req);
    if (!body)
        return;
    /* a model block must name a provider the config declares: a version
     * no run could call is refused now, not at its first run */
    const char *prov = json_string_value(json_object_get(json_object_get(body, "model"), "provider"));
    if (prov && a->cfg && registry_prompt(a->registry, name) && !config_find_provider(a->cfg, prov)) {
        buf_t known;
        buf_init(&known);
        const char **names = xcalloc(a->cfg->nproviders + 1, sizeof *names);
        for (size_t i = 0; i < a->cfg->nproviders; i++) {
            names[i] = a->cfg->providers[i].name;
            buf_printf(&known, "%s%s", i ? ", " : "", names[i]);
        }
        const char *near = closest_name(prov, names, a->cfg->nproviders);
        http_respond_field_error(req, 422, "unknown_provider", "model.provider",
                                 "'model.provider': no provider '%s' is configured%s%s%s (configured: %s); declare it "
                                 "in the config with provider \"%s\" { kind = ..., ... }",
                                 prov, near ? "; did you mean '" : "", near ? near : "", near ? "'?" : "",
                                 known.data ? known.data : "none", prov);
        free(names);
        buf_free(&known);
        json_decref(body);
        return;
    }
    commit_job *j = commit_new(a, req);
    reg_error e;
    int64_t v;
    if (registry_add_version(a->registry, name, body, api_actor(req), &j->w, &v, &e)) {
        api_respond_reg_error(req, &e);
        commit_drop(j);
    } else {
        j->status = 201;
        j->answer = version_view(name, registry_version(a->registry, name, v));
        commit(j);
    }
    json_decref(body);
}

/* GET /v1/prompts/{name}/versions */
void api_list_versions(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    json_t *p = registry_prompt(a->registry, name);
    if (!p) {
        http_respond_field_error(req, 404, "unknown_prompt", "prompt", "no prompt named '%s'", name);
        return;
    }
    json_t *items = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(p, "versions"), i, v) {
        json_t *o = version_view(name, v);
        json_object_del(o, "messages");
        json_array_append_new(items, o);
    }
    json_t *root = json_pack("{s:o, s:o}", "prompt", prompt_view(a->registry, name, p), "items", items);
    api_respond_json(req, 200, root);
    json_decref(root);
}

/* GET /v1/prompts/{name}/versions/{version} */
void api_show_version(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    const char *vs = c->param[1];
    int64_t v;
    if (!version_number(vs, &v)) {
        http_respond_field_error(req, 400, "invalid_parameter", "version", "a version is a number from 1");
        return;
    }
    if (!registry_prompt(a->registry, name)) {
        http_respond_field_error(req, 404, "unknown_prompt", "prompt", "no prompt named '%s'", name);
        return;
    }
    json_t *ver = registry_version(a->registry, name, v);
    if (!ver) {
        http_respond_field_error(req, 404, "unknown_version", "version", "prompt '%s' has no version %lld", name,
                                 (long long)v);
        return;
    }
    json_t *o = version_view(name, ver);
    api_respond_json(req, 200, o);
    json_decref(o);
}

/* GET /v1/prompts/{name}/diff?from=&to= */
void api_diff_versions(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    static const char *const known[] = {"from", "to", NULL};
    long long from = 0, to = 0;
    if (!api_known_params(req, known) || !api_int_param(req, "from", 1, 1000000000, &from) ||
        !api_int_param(req, "to", 1, 1000000000, &to))
        return;
    if (!from || !to) {
        http_respond_field_error(req, 400, "invalid_parameter", from ? "to" : "from",
                                 "give both versions: ?from=N&to=M");
        return;
    }
    json_t *out;
    reg_error e;
    if (registry_diff(a->registry, name, from, to, &out, &e)) {
        api_respond_reg_error(req, &e);
        return;
    }
    api_respond_json(req, 200, out);
    json_decref(out);
}

/* POST /v1/prompts/{name}/{promote|rollback|canary|pin|unpin} */
void api_prompt_action(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    const char *action = c->route->arg;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    static const char *const known[] = {"version", "reason", "share", NULL};
    if (!api_known_fields(req, body, known, "version, reason, share")) {
        json_decref(body);
        return;
    }
    json_t *vj = json_object_get(body, "version"), *rj = json_object_get(body, "reason"),
           *sj = json_object_get(body, "share");
    int64_t version = json_integer_value(vj);
    const char *reason = json_string_value(rj);
    char defreason[64];
    snprintf(defreason, sizeof defreason, "manual %s", action);
    commit_job *j = commit_new(a, req);
    reg_error e = {0};
    int rc;
    if (vj && (!json_is_integer(vj) || version < 1)) {
        reg_fail(&e, 400, "invalid_field", "version", "'version' must be a version number");
        rc = 400;
    } else if (rj && (!json_is_string(rj) || json_string_length(rj) > 1024)) {
        reg_fail(&e, 400, "invalid_field", "reason", "'reason' must be a string of at most 1024 bytes");
        rc = 400;
    } else if (sj && (!json_is_number(sj) || json_number_value(sj) <= 0 || json_number_value(sj) > 1)) {
        reg_fail(&e, 400, "invalid_field", "share", "'share' must be a number above 0 and at most 1");
        rc = 400;
    } else if ((!strcmp(action, "promote") || !strcmp(action, "canary")) && !vj) {
        reg_fail(&e, 400, "invalid_field", "version", "'%s' needs the version", action);
        rc = 400;
    } else if (!strcmp(action, "promote")) {
        rc = registry_promote(a->registry, name, version, reason ? reason : defreason, api_actor(req), &j->w, &e);
    } else if (!strcmp(action, "canary")) {
        rc = registry_start_canary(a->registry, name, version, sj ? json_number_value(sj) : 0,
                                   reason ? reason : defreason, api_actor(req), &j->w, &e);
    } else if (!strcmp(action, "rollback")) {
        rc = registry_rollback(a->registry, name, version, reason ? reason : defreason, api_actor(req), &j->w, &e);
    } else {
        rc = registry_pin(a->registry, name, !strcmp(action, "pin"), reason ? reason : defreason, api_actor(req),
                          &j->w, &e);
    }
    if (rc) {
        api_respond_reg_error(req, &e);
        commit_drop(j);
    } else {
        j->status = 200;
        j->answer = prompt_view(a->registry, name, registry_prompt(a->registry, name));
        commit(j);
    }
    json_decref(body);
}

static void set_label(const api_call *c, bool remove)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0], *label = c->param[1];
    json_t *body = remove ? json_object() : api_body_object(req);
    if (!body)
        return;
    json_t *vj = json_object_get(body, "version");
    commit_job *j = commit_new(a, req);
    reg_error e;
    static const char *const known[] = {"version", NULL};
    if (!api_known_fields(req, body, known, "version")) {
        commit_drop(j);
    } else if (!remove && (!json_is_integer(vj) || json_integer_value(vj) < 1)) {
        http_respond_field_error(req, 400, "invalid_field", "version", "'version' must be the version to label");
        commit_drop(j);
    } else if (registry_set_label(a->registry, name, label, remove ? 0 : json_integer_value(vj), api_actor(req), &j->w,
                                  &e)) {
        api_respond_reg_error(req, &e);
        commit_drop(j);
    } else {
        j->status = 200;
        j->answer = prompt_view(a->registry, name, registry_prompt(a->registry, name));
        commit(j);
    }
    json_decref(body);
}

/* PUT /v1/prompts/{name}/labels/{label} {version} */
void api_set_label(const api_call *c)
{
    set_label(c, false);
}

/* DELETE /v1/prompts/{name}/labels/{label} */
void api_delete_label(const api_call *c)
{
    set_label(c, true);
}

static void history_work(api_task *t)
{
    t->rc = store_list_transitions_json(t->a->store, t->name, t->n1, t->limit, &t->out, t->err, sizeof t->err);
}

/* GET /v1/prompts/{name}/history?cursor=&limit= */
void api_prompt_history(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    static const char *const known[] = {"cursor", "limit", NULL};
    long long cursor = 0, limit = 100;
    if (!api_known_params(req, known) || !api_int_param(req, "cursor", 0, INT64_MAX, &cursor) ||
        !api_int_param(req, "limit", 1, 1000, &limit))
        return;
    if (!registry_prompt(a->registry, name)) {
        http_respond_field_error(req, 404, "unknown_prompt", "prompt", "no prompt named '%s'", name);
        return;
    }
    api_task *t = api_task_new(a, req, history_work);
    t->name = xstrdup(name);
    t->n1 = cursor;
    t->limit = (int)limit;
    api_task_queue(t);
}

/* GET /v1/prompts/{name}/metrics?since=&until=&version=: the online figures
 * (pass rate, per evaluator, feedback, latency, cost) of the production and
 * canary versions, or of one version, over a window (default the last 24 h). */
static void metrics_work(api_task *t)
{
    size_t i;
    json_t *v;
    json_array_foreach(t->j1, i, v) {
        json_t *m = NULL;
        if (store_prompt_metrics(t->a->store, t->name, json_integer_value(json_object_get(v, "version")), t->n1, t->n2,
                                 &m, t->err, sizeof t->err) != 0) {
            t->rc = -1;
            return;
        }
        json_object_update(v, m);
        json_decref(m);
    }
    char since[32], until[32];
    rfc3339_format(t->n1, since);
    rfc3339_format(t->n2, until);
    json_t *ans = json_pack("{s:s, s:s, s:s, s:O}", "prompt", t->name, "since", since, "until", until, "versions", t->j1);
    char *text = jtree_dump_text(ans, false);
    buf_puts(&t->out, text);
    free(text);
    json_decref(ans);
}

void api_prompt_metrics(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    static const char *const known[] = {"since", "until", "version", NULL};
    /* until is exclusive: + 1 so a trace acknowledged this millisecond counts */
    int64_t until = now_ms() + 1, since = until - 86400000;
    long long version = 0;
    if (!api_known_params(req, known) || !api_time_param(req, "since", &since) ||
        !api_time_param(req, "until", &until) || !api_int_param(req, "version", 1, INT64_MAX, &version))
        return;
    if (until <= since) {
        http_respond_field_error(req, 400, "invalid_parameter", "until", "'until' must be later than 'since'");
        return;
    }
    if (!registry_prompt(a->registry, name)) {
        http_respond_field_error(req, 404, "unknown_prompt", "prompt", "no prompt named '%s'", name);
        return;
    }
    json_t *versions = json_array();
    if (version) {
        json_t *v = registry_version(a->registry, name, version);
        if (!v) {
            json_decref(versions);
            http_respond_field_error(req, 404, "unknown_version", "version", "prompt '%s' has no version %lld", name,
                                     version);
            return;
        }
        json_array_append_new(versions, json_pack("{s:I, s:s}", "version", (json_int_t)version, "status",
                                                  json_string_value(json_object_get(v, "status"))));
    } else {
        static const char *const live[] = {"production", "canary"};
        for (int i = 0; i < 2; i++) {
            int64_t n = registry_version_in(a->registry, name, live[i]);
            if (n)
                json_array_append_new(versions, json_pack("{s:I, s:s}", "version", (json_int_t)n, "status", live[i]));
        }
    }
    api_task *t = api_task_new(a, req, metrics_work);
    t->name = xstrdup(name);
    t->n1 = since;
    t->n2 = until;
    t->j1 = versions;
    api_task_queue(t);
}

/* The pass rate over time, bucket by bucket (the console's sparklines). */
static void series_work(api_task *t)
{
    int64_t step = json_integer_value(t->j2);
    json_t *buckets = NULL;
    if (store_prompt_series(t->a->store, t->name, json_integer_value(t->j1), t->n1, t->n2, step, &buckets, t->err,
                            sizeof t->err) != 0) {
        t->rc = -1;
        return;
    }
    json_t *points = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(buckets, i, m) {
        char at[32];
        rfc3339_format(json_integer_value(json_object_get(m, "since_ms")), at);
        json_t *ev = json_object();
        const char *k;
        json_t *e;
        json_object_foreach(json_object_get(m, "evaluators"), k, e)
            json_object_set_new(ev, k, json_pack("{s:O, s:O}", "n", json_object_get(e, "n"), "pass_rate",
                                                 json_object_get(e, "pass_rate")));
        /* a bucket with nothing evaluated has no pass rate (null), not 0 */
        bool none = json_integer_value(json_object_get(m, "evaluated")) == 0;
        json_array_append_new(points, json_pack("{s:s, s:O, s:O, s:O, s:O, s:o}", "t", at, "traces",
                                                json_object_get(m, "traces"), "evaluated", json_object_get(m, "evaluated"),
                                                "pass_rate", none ? json_null() : json_object_get(m, "pass_rate"),
                                                "negative", json_object_get(m, "negative"), "evaluators", ev));
    }
    json_decref(buckets);
    char since[32], until[32];
    rfc3339_format(t->n1, since);
    rfc3339_format(t->n2, until);
    json_t *ans = json_pack("{s:s, s:O, s:s, s:s, s:I, s:o}", "prompt", t->name, "version",
                            json_integer_value(t->j1) ? t->j1 : json_null(), "since", since, "until", until,
                            "bucket_ms", (json_int_t)step, "points", points);
    char *text = jtree_dump_text(ans, false);
    buf_puts(&t->out, text);
    free(text);
    json_decref(ans);
}

void api_prompt_series(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    static const char *const known[] = {"since", "until", "version", "buckets", NULL};
    int64_t until = now_ms() + 1, since = until - 86400000;
    long long version = 0, buckets = 24;
    if (!api_known_params(req, known) || !api_time_param(req, "since", &since) ||
        !api_time_param(req, "until", &until) || !api_int_param(req, "version", 1, INT64_MAX, &version) ||
        !api_int_param(req, "buckets", 1, 96, &buckets))
        return;
    if (until <= since) {
        http_respond_field_error(req, 400, "invalid_parameter", "until", "'until' must be later than 'since'");
        return;
    }
    if (!registry_prompt(a->registry, name)) {
        http_respond_field_error(req, 404, "unknown_prompt", "prompt", "no prompt named '%s'", name);
        return;
    }
    /* A window of at least a minute per bucket starts on its minute and
     * its buckets are whole minutes (the store reads those from its
     * per-minute figures, not trace by trace); the answer's since and
     * bucket_ms say where they fall. A shorter window is cut as asked. */
    int64_t step = (until - since + buckets - 1) / buckets;
    if (step >= 60000 && since >= 0) {
        since -= since % 60000;
        step = (until - since + buckets - 1) / buckets;
        step = (step + 59999) / 60000 * 60000;
    }
    api_task *t = api_task_new(a, req, series_work);
    t->name = xstrdup(name);
    t->n1 = since;
    t->n2 = until;
    t->j1 = json_integer(version);
    t->j2 = json_integer(step);
    api_task_queue(t);
}

/* ---- datasets ---- */

static json_t *dataset_view(const char *name, json_t *d)
{
    char c[32], u[32];
    rfc3339_format(json_integer_value(json_object_get(d, "created_ms")), c);
    rfc3339_format(json_integer_value(json_object_get(d, "updated_ms")), u);
    return json_pack("{s:s, s:O, s:O, s:O, s:s, s:s}", "name", name, "description", json_object_get(d, "description"),
                     "version", json_object_get(d, "version"), "cases", json_object_get(d, "cases"), "created_at", c,
                     "updated_at", u);
}

static void export_work(api_task *t)
{
    json_t *cases;
    t->rc = store_dataset_cases(t->a->store, t->name, t->n1, STORE_CASE_TEXTS, &cases, t->err, sizeof t->err);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        buf_append(&t->out, json_string_value(c), json_string_length(c));
        buf_puts(&t->out, "\n");
    }
    json_decref(cases);
    t->content_type = "application/x-ndjson";
}

static void change_work(api_task *t)
{
    if (t->parse_cases) { /* up to the body limit (8 MiB): never on the loop */
        json_t *cases;
        if (dataset_parse_cases(t->req->body.data ? t->req->body.data : "", t->req->body.len, &cases, &t->e)) {
            t->rc = 2;
            return;
        }
        json_object_set_new(t->j1, "cases", cases);
    }
    /* the current cases, for the duplicate check */
    if (t->n1 > 0)
        t->rc = store_dataset_cases(t->a->store, t->name, t->n1, STORE_CASE_IDS, &t->j2, t->err, sizeof t->err);
    else
        t->j2 = json_array();
}

/* j1: {mode, cases, removed, answer fields} */
static void change_after(api_task *t)
{
    api *a = t->a;
    if (api_task_failed(t, "not_found", NULL)) {
        registry_dataset_unlock(a->registry, t->name);
        return;
    }
    commit_job *j = commit_new(a, t->req);
    reg_error e;
    int64_t v;
    if (registry_dataset_change(a->registry, t->name, json_string_value(json_object_get(t->j1, "mode")),
                                json_object_get(t->j1, "cases"), json_object_get(t->j1, "removed"), t->j2, &j->w, &v,
                                &e)) {
        registry_dataset_unlock(a->registry, t->name);
        api_respond_reg_error(t->req, &e);
        commit_drop(j);
        return;
    }
    j->dataset = xstrdup(t->name);
    j->status = 200;
    j->answer = dataset_view(t->name, registry_dataset(a->registry, t->name));
    size_t changed = json_object_size(json_object_get(t->j1, "cases")) +
                     json_array_size(json_object_get(t->j1, "removed"));
    json_object_set_new(j->answer, "changed", json_integer((json_int_t)changed));
    json_object_update(j->answer, json_object_get(t->j1, "extra"));
    commit(j);
}

/* Starts a dataset change: the current version's cases are read (and with
 * parse, the body's cases parsed) in the pool. */
static void dataset_change(api *a, http_request *req, const char *name, const char *mode, json_t *cases,
                           json_t *removed, bool parse, json_t *extra)
{
    reg_error e;
    if (!registry_name_ok(name)) {
        http_respond_field_error(req, 400, "invalid_parameter", "dataset",
                                 "a dataset name is 1 to 128 letters, digits and - _ . :");
        json_decref(cases);
        json_decref(removed);
        json_decref(extra);
        return;
    }
    if (registry_dataset_lock(a->registry, name, &e)) {
        api_respond_reg_error(req, &e);
        json_decref(cases);
        json_decref(removed);
        json_decref(extra);
        return;
    }
    api_task *t = api_task_new(a, req, change_work);
    t->after_fn = change_after;
    t->parse_cases = parse;
    t->name = xstrdup(name);
    json_t *d = registry_dataset(a->registry, name);
    t->n1 = d ? json_integer_value(json_object_get(d, "version")) : 0;
    t->j1 = json_pack("{s:s, s:o, s:o, s:o}", "mode", mode, "cases", cases ? cases : json_object(), "removed",
                      removed ? removed : json_array(), "extra", extra ? extra : json_object());
    api_task_queue(t);
}

/* POST /v1/datasets/{name}/cases?mode= (JSON Lines) */
void api_import_cases(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    static const char *const known[] = {"mode", NULL};
    if (!api_known_params(req, known))
        return;
    char mode[16] = "append";
    int mr = http_query_get(req, "mode", mode, sizeof mode);
    if (mr < 0 || (strcmp(mode, "append") && strcmp(mode, "upsert") && strcmp(mode, "replace"))) {
        http_respond_field_error(req, 400, "invalid_parameter", "mode", "'mode' must be append, upsert or replace");
        return;
    }
    dataset_change(a, req, name, mode, NULL, NULL, true, NULL);
}

static void from_trace_work(api_task *t)
{
    t->rc = store_get_trace_json(t->a->store, t->id, &t->out, t->err, sizeof t->err);
    if (t->rc == 1)
        snprintf(t->err, sizeof t->err, "no trace has id '%s'", t->id);
}

static void from_trace_after(api_task *t)
{
    if (api_task_failed(t, "unknown_trace", "trace_id"))
        return;
    json_t *trace = json_loadb(t->out.data, t->out.len, 0, NULL);
    json_t *vars = json_object_get(json_object_get(trace, "input"), "variables");
    if (!json_is_object(vars)) {
        http_respond_field_error(t->req, 409, "no_variables", "trace_id",
                                 "trace '%s' has no input.variables, so it cannot become a case", t->id);
        json_decref(trace);
        return;
    }
    json_t *c = json_pack("{s:O, s:s}", "variables", vars, "source_trace", t->id);
    json_t *b = t->j1;
    if (json_object_get(b, "id"))
        json_object_set(c, "id", json_object_get(b, "id"));
    if (json_object_get(b, "tags"))
        json_object_set(c, "tags", json_object_get(b, "tags"));
    json_object_set(c, "expected", json_object_get(b, "expected") ? json_object_get(b, "expected")
                                                                    : json_object_get(trace, "output"));
    json_decref(trace);
    char *text = json_text(c, JSON_COMPACT);
    json_decref(c);
    json_t *cases;
    reg_error e;
    int rc = dataset_parse_cases(text, strlen(text), &cases, &e);
    free(text);
    if (rc) {
        api_respond_reg_error(t->req, &e);
        return;
    }
    dataset_change(t->a, t->req, t->name, "upsert", cases, NULL, false, NULL);
}

/* POST /v1/datasets/{name}/from-trace {trace_id, expected?, id?, tags?} */
void api_case_from_trace(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    json_t *body = api_body_object(req);
    if (!body)
        return;
    static const char *const known[] = {"trace_id", "expected", "id", "tags", NULL};
    if (!api_known_fields(req, body, known, "trace_id, expected, id, tags")) {
        json_decref(body);
        return;
    }
    const char *tid = json_string_value(json_object_get(body, "trace_id"));
    if (!tid || !*tid || strlen(tid) > 128) {
        http_respond_field_error(req, 400, "invalid_field", "trace_id", "'trace_id' must be a trace id");
        json_decref(body);
        return;
    }
    api_task *t = api_task_new(a, req, from_trace_work);
    t->after_fn = from_trace_after;
    t->name = xstrdup(name);
    t->id = xstrdup(tid);
    t->j1 = body;
    api_task_queue(t);
}

static bool meta_key_ok(const char *k)
{
    size_t n = strlen(k);
    return n >= 1 && n <= 64 && strspn(k, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") == n;
}

/* j1: the request body; j2: the traces found; n1: duplicates skipped */
static void from_traces_work(api_task *t)
{
    json_t *b = t->j1;
    store_trace_filter f = {.prompt = json_string_value(json_object_get(b, "prompt")),
                            .version = json_integer_value(json_object_get(b, "version")),
                            .since_ms = 0, .until_ms = INT64_MAX, .failed = -1,
                            .evaluator = json_string_value(json_object_get(b, "evaluator")),
                            .limit = json_object_get(b, "limit") ? (int)json_integer_value(json_object_get(b, "limit"))
                                                                 : 1000};
    if (json_object_get(b, "since"))
        api_json_time(json_object_get(b, "since"), &f.since_ms);
    if (json_object_get(b, "until"))
        api_json_time(json_object_get(b, "until"), &f.until_ms);
    if (json_is_boolean(json_object_get(b, "failed")))
        f.failed = json_is_true(json_object_get(b, "failed"));
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(b, "metadata"), k, v) {
        f.meta_key[f.nmeta] = k;
        f.meta_value[f.nmeta++] = json_string_value(v);
    }
    json_t *traces;
    t->rc = store_select_traces(t->a->store, &f, &traces, t->err, sizeof t->err);
    if (t->rc) {
        json_decref(traces);
        return;
    }
    if (json_array_size(traces) == 0) {
        json_decref(traces);
        reg_fail(&t->e, 404, "no_matching_traces", "prompt",
                 "no trace of prompt '%s' matches the filter (with input.variables, in the time range, ...)", f.prompt);
        t->rc = 2;
        return;
    }
    /* one case per distinct variables, the newest trace's; expected: its output, or none */
    const char *from = json_string_value(json_object_get(b, "expected_from"));
    bool with_output = from ? !strcmp(from, "output")
                            : !(json_is_true(json_object_get(b, "failed")) || json_object_get(b, "evaluator"));
    json_t *seen = json_object();
    buf_t lines;
    buf_init(&lines);
    size_t i;
    json_t *tr;
    json_array_foreach(traces, i, tr) {
        char *key = json_dumps(json_object_get(tr, "variables"), JSON_COMPACT | JSON_SORT_KEYS);
        if (json_object_get(seen, key)) {
            t->n1++;
            free(key);
            continue;
        }
        json_object_set_new(seen, key, json_true());
        free(key);
        json_t *c = json_pack("{s:O, s:O, s:O}", "id", json_object_get(tr, "id"), "variables",
                              json_object_get(tr, "variables"), "source_trace", json_object_get(tr, "id"));
        if (json_object_get(b, "tags"))
            json_object_set(c, "tags", json_object_get(b, "tags"));
        if (with_output && !json_is_null(json_object_get(tr, "output")))
            json_object_set(c, "expected", json_object_get(tr, "output"));
        char *text = json_dumps(c, JSON_COMPACT);
        buf_puts(&lines, text);
        buf_puts(&lines, "\n");
        free(text);
        json_decref(c);
    }
    json_decref(seen);
    json_t *cases;
    if (dataset_parse_cases(lines.data, lines.len, &cases, &t->e)) {
        t->rc = 2;
    } else {
        t->j2 = cases;
        t->n2 = (int64_t)json_array_size(traces);
    }
    buf_free(&lines);
    json_decref(traces);
}

static void from_traces_after(api_task *t)
{
    if (api_task_failed(t, "not_found", NULL))
        return;
    json_t *extra = json_pack("{s:{s:I, s:I}}", "from_traces", "matched", (json_int_t)t->n2, "duplicates",
                              (json_int_t)t->n1);
    const char *mode = json_string_value(json_object_get(t->j1, "mode"));
    json_t *cases = t->j2;
    t->j2 = NULL;
    dataset_change(t->a, t->req, t->name, mode ? mode : "upsert", cases, NULL, false, extra);
}

/* POST /v1/datasets/{name}/from-traces {prompt, version?, since?, until?,
 * failed?, evaluator?, metadata?, limit?, tags?, expected_from?, mode?}:
 * one case per matching trace with input.variables (the newest of those with
 * the same variables), its id and source_trace the trace's id. */
void api_cases_from_traces(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    json_t *body = api_body_object(req);
    if (!body)
        return;
    static const char *const known[] = {"prompt", "version", "since", "until", "failed", "evaluator", "metadata",
                                        "limit", "tags", "expected_from", "mode", NULL};
    if (!api_known_fields(req, body, known,
                      "prompt, version, since, until, failed, evaluator, metadata, limit, tags, expected_from, mode")) {
        json_decref(body);
        return;
    }
    const char *bad = NULL, *why = NULL;
    json_t *v;
    int64_t t0, t1 = INT64_MAX;
    const char *prompt = json_string_value(json_object_get(body, "prompt"));
    if (!prompt || !*prompt || strlen(prompt) > 128)
        bad = "prompt", why = "'prompt' must be a prompt name (the traces' prompt.name)";
    else if ((v = json_object_get(body, "version")) && (!json_is_integer(v) || json_integer_value(v) < 1))
        bad = "version", why = "'version' must be an integer of at least 1 (a prompt version)";
    else if ((v = json_object_get(body, "since")) && !api_json_time(v, &t0))
        bad = "since", why = "'since' must be an RFC 3339 time or milliseconds since the epoch";
    else if ((v = json_object_get(body, "until")) && !api_json_time(v, &t1))
        bad = "until", why = "'until' must be an RFC 3339 time or milliseconds since the epoch";
    else if (json_object_get(body, "since") && json_object_get(body, "until") &&
             api_json_time(json_object_get(body, "since"), &t0) && t1 <= t0)
        bad = "until", why = "'until' must be after 'since'";
    else if ((v = json_object_get(body, "failed")) && !json_is_boolean(v))
        bad = "failed", why = "'failed' must be true (only failed traces) or false (only the others)";
    else if ((v = json_object_get(body, "evaluator")) && (!json_is_string(v) || !registry_name_ok(json_string_value(v))))
        bad = "evaluator", why = "'evaluator' must be the name an evaluator is attached under";
    else if ((v = json_object_get(body, "limit")) &&
             (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 10000))
        bad = "limit", why = "'limit' must be an integer from 1 to 10000";
    else if ((v = json_object_get(body, "expected_from")) &&
             (!json_is_string(v) || (strcmp(json_string_value(v), "output") && strcmp(json_string_value(v), "none"))))
        bad = "expected_from", why = "'expected_from' must be \"output\" (the trace's output) or \"none\"";
    else if ((v = json_object_get(body, "mode")) &&
             (!json_is_string(v) || (strcmp(json_string_value(v), "append") && strcmp(json_string_value(v), "upsert") &&
                                     strcmp(json_string_value(v), "replace"))))
        bad = "mode", why = "'mode' must be append, upsert or replace";
    else if ((v = json_object_get(body, "metadata")) && (!json_is_object(v) || json_object_size(v) > 8))
        bad = "metadata", why = "'metadata' must be an object of up to 8 {key: value} to match";
    if (!bad && (v = json_object_get(body, "metadata"))) {
        const char *k;
        json_t *x;
        static char field[100];
        json_object_foreach(v, k, x) if (!meta_key_ok(k) || !json_is_string(x) || json_string_length(x) > 1000) {
            snprintf(field, sizeof field, "metadata.%.64s", k);
            bad = field, why = "each metadata filter is \"key\": \"value\" (a key of letters, digits, - _ .; the "
                               "trace's metadata.key equals the value, or is a list holding it)";
            break;
        }
    }
    if (bad) {
        http_respond_field_error(req, 400, "invalid_field", bad, "%s", why);
        json_decref(body);
        return;
    }
    if (!registry_name_ok(name)) {
        http_respond_field_error(req, 400, "invalid_parameter", "dataset",
                                 "a dataset name is 1 to 128 letters, digits and - _ . :");
        json_decref(body);
        return;
    }
    api_task *t = api_task_new(a, req, from_traces_work);
    t->after_fn = from_traces_after;
    t->name = xstrdup(name);
    t->j1 = body;
    api_task_queue(t);
}

static void versions_work(api_task *t)
{
    json_t *items;
    t->rc = store_dataset_versions(t->a->store, t->name, t->n1, &items, t->err, sizeof t->err);
    json_t *root = json_pack("{s:s, s:o}", "dataset", t->name, "items", items);
    char *text = json_dumps(root, JSON_COMPACT);
    buf_puts(&t->out, text);
    free(text);
    json_decref(root);
}

/* Cases of two versions (id order) merged: added, removed, changed. */
static void diff_work(api_task *t)
{
    json_t *a, *b;
    t->rc = store_dataset_cases(t->a->store, t->name, t->n1, STORE_CASE_OBJECTS, &a, t->err, sizeof t->err);
    if (!t->rc)
        t->rc = store_dataset_cases(t->a->store, t->name, t->n2, STORE_CASE_OBJECTS, &b, t->err, sizeof t->err);
    else
        b = json_array();
    json_t *added = json_array(), *removed = json_array(), *changed = json_array();
    size_t i = 0, j = 0, na = json_array_size(a), nb = json_array_size(b);
    while (!t->rc && (i < na || j < nb)) {
        json_t *x = json_array_get(a, i), *y = json_array_get(b, j);
        int c = !x ? 1 : !y ? -1 : strcmp(json_string_value(json_object_get(x, "id")), json_string_value(json_object_get(y, "id")));
        if (c < 0) {
            json_array_append(removed, x);
            i++;
        } else if (c > 0) {
            json_array_append(added, y);
            j++;
        } else {
            if (!json_equal(x, y))
                json_array_append_new(changed, json_pack("{s:O, s:O, s:O}", "id", json_object_get(x, "id"), "from", x,
                                                         "to", y));
            i++, j++;
        }
    }
    json_t *root = json_pack("{s:s, s:I, s:I, s:o, s:o, s:o}", "dataset", t->name, "from", (json_int_t)t->n1, "to",
                             (json_int_t)t->n2, "added", added, "removed", removed, "changed", changed);
    char *text = json_dumps(root, JSON_COMPACT);
    buf_puts(&t->out, text);
    free(text);
    json_decref(root);
    json_decref(a);
    json_decref(b);
}

/* The dataset a route names, or NULL having answered 404. */
static json_t *dataset_of(const api_call *c)
{
    json_t *d = registry_dataset(c->a->registry, c->param[0]);
    if (!d)
        http_respond_field_error(c->req, 404, "unknown_dataset", "dataset", "no dataset named '%s'", c->param[0]);
    return d;
}

/* GET /v1/datasets/{name}/diff?from=&to= */
void api_dataset_diff(const api_call *c)
{
    api *a = c->a;
    http_request *req = c->req;
    const char *name = c->param[0];
    json_t *d = dataset_of(c);
    if (!d)
        return;
    static const char *const known[] = {"from", "to", NULL};
    long long from = 0, to = 0;
    if (!api_known_params(req, known) || !api_int_param(req, "from", 1, 1000000000, &from) ||
        !api_int_param(req, "to", 1, 1000000000, &to))
        return;
    int64_t cur = json_integer_value(json_object_get(d, "version"));
    if (!from || !to) {
        http_respond_field_error(req, 400, "invalid_parameter", from ? "to" : "from",
                                 "give both 'from' and 'to' (versions 1 to %lld)", (long long)cur);
        return;
    }
    if (from > cur || to > cur) {
        http_respond_field_error(req, 404, "unknown_version", from > cur ? "from" : "to",
                                 "dataset '%s' has versions 1 to %lld", name, (long long)cur);
        return;
    }
    api_task *t = api_task_new(a, req, diff_work);
    t->name = xstrdup(name);
    t->n1 = from;
    t->n2 = to;
    api_task_queue(t);
}

/* GET /v1/datasets/{name}/versions */
void api_dataset_versions(const api_call *c)
{
    static const char *const none[] = {NULL};
    json_t *d = dataset_of(c);
    if (!d || !api_known_params(c->req, none))
        return;
    api_task *t = api_task_new(c->a, c->req, versions_work);
    t->name = xstrdup(c->param[0]);
    t->n1 = json_integer_value(json_object_get(d, "version"));
    api_task_queue(t);
}

/* GET /v1/datasets */
void api_list_datasets(const api_call *c)
{
    json_t *items = json_array();
    const char *name;
    json_t *d;
    json_object_foreach(registry_datasets(c->a->registry), name, d)
        json_array_append_new(items, dataset_view(name, d));
    json_t *root = json_pack("{s:o}", "items", items);
    api_respond_json(c->req, 200, root);
    json_decref(root);
}

/* GET /v1/datasets/{name} */
void api_show_dataset(const api_call *c)
{
    json_t *d = dataset_of(c);
    if (!d)
        return;
    json_t *o = dataset_view(c->param[0], d);
    api_respond_json(c->req, 200, o);
    json_decref(o);
}

/* GET /v1/datasets/{name}/cases?version= (JSON Lines) */
void api_export_cases(const api_call *c)
{
    http_request *req = c->req;
    const char *name = c->param[0];
    static const char *const known[] = {"version", NULL};
    long long version = 0;
    if (!api_known_params(req, known) || !api_int_param(req, "version", 1, 1000000000, &version))
        return;
    json_t *d = dataset_of(c);
    if (!d)
        return;
    int64_t cur = json_integer_value(json_object_get(d, "version"));
    if (version > cur) {
        http_respond_field_error(req, 404, "unknown_version", "version", "dataset '%s' has versions 1 to %lld", name,
                                 (long long)cur);
        return;
    }
    api_task *t = api_task_new(c->a, req, export_work);
    t->name = xstrdup(name);
    t->n1 = version ? version : cur;
    api_task_queue(t);
}

/* DELETE /v1/datasets/{name}/cases/{id}: a new version without the case */
void api_delete_case(const api_call *c)
{
    if (dataset_of(c))
        dataset_change(c->a, c->req, c->param[0], "upsert", NULL, json_pack("[s]", c->param[1]), false, NULL);
}
