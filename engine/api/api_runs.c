/* api_runs.c — regression runs and the loop: POST and GET /v1/runs, a run's
 * report (waiting for its end on request), results and cancel; the loop's
 * requests (start a cycle, answer a gate winner) and its state and events
 * under /v1/loop. Reads run in the thread pool. */
#include "api/api_runs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_request.h"
#include "base/jtree.h"

#define MAX_NAME 128

/* The run a route names, or NULL having answered 400. */
static const char *run_id(const api_call *c)
{
    if (strlen(c->param[0]) > 64) {
        http_respond_field_error(c->req, 400, "invalid_parameter", "id", "a run id is at most 64 characters");
        return NULL;
    }
    return c->param[0];
}

/* ---- runs ---- */

static void on_run_started(const char *id, json_t *view, const reg_error *e, void *ud)
{
    http_request *req = ud;
    (void)id;
    if (e)
        api_respond_reg_error(req, e);
    else
        api_respond_json(req, 201, view);
}

/* POST /v1/runs {prompt, baseline, candidates, dataset, ...} */
void api_start_run(const api_call *c)
{
    json_t *body = api_body_object(c->req);
    if (!body)
        return;
    reg_error e;
    if (runner_start(c->a->runner, body, api_actor(c->req), on_run_started, c->req, &e))
        api_respond_reg_error(c->req, &e);
    json_decref(body);
}

static void list_runs_work(api_task *t)
{
    t->rc = store_list_runs(t->a->store, t->name, t->limit, &t->j1, t->err, sizeof t->err);
}

static void list_runs_after(api_task *t)
{
    if (api_task_failed(t, "not_found", NULL))
        return;
    size_t i;
    json_t *r;
    json_array_foreach(t->j1, i, r) {
        json_t *p = runner_progress(t->a->runner, json_string_value(json_object_get(r, "id")));
        if (p)
            json_object_set_new(r, "progress", p);
        json_object_del(r, "created_ms");
    }
    json_t *root = json_pack("{s:O}", "items", t->j1);
    api_respond_json(t->req, 200, root);
    json_decref(root);
}

/* GET /v1/runs?prompt=&limit= */
void api_list_runs(const api_call *c)
{
    http_request *req = c->req;
    static const char *const known[] = {"prompt", "limit", NULL};
    long long limit = 50;
    char prompt[MAX_NAME + 1];
    if (!api_known_params(req, known) || !api_int_param(req, "limit", 1, 1000, &limit))
        return;
    int pr = http_query_get(req, "prompt", prompt, sizeof prompt);
    if (pr < 0) {
        http_respond_field_error(req, 400, "invalid_parameter", "prompt", "'prompt' must be a prompt name");
        return;
    }
    api_task *t = api_task_new(c->a, req, list_runs_work);
    t->after_fn = list_runs_after;
    t->name = pr > 0 ? xstrdup(prompt) : NULL;
    t->limit = (int)limit;
    api_task_queue(t);
}

static void get_run_work(api_task *t)
{
    t->rc = store_get_run(t->a->store, t->id, &t->j1, t->err, sizeof t->err);
    if (t->rc == 1)
        snprintf(t->err, sizeof t->err, "no run has id '%s'", t->id);
}

static void get_run_after(api_task *t)
{
    if (api_task_failed(t, "unknown_run", "id"))
        return;
    json_t *p = runner_progress(t->a->runner, t->id);
    if (p)
        json_object_set_new(t->j1, "progress", p);
    json_object_del(t->j1, "created_ms");
    api_respond_json(t->req, 200, t->j1);
}

/* ?wait=: the run ended, the wait is over or the engine drains: read it now */
static void run_waited(void *ud)
{
    api_task_queue(ud);
}

/* GET /v1/runs/{id}?wait=ms */
void api_get_run(const api_call *c)
{
    const char *id = run_id(c);
    static const char *const known[] = {"wait", NULL};
    long long wait = 0;
    if (!id || !api_known_params(c->req, known) || !api_int_param(c->req, "wait", 0, 60000, &wait))
        return;
    api_task *t = api_task_new(c->a, c->req, get_run_work);
    t->after_fn = get_run_after;
    t->id = xstrdup(id);
    if (!wait || !runner_wait(c->a->runner, id, (uint64_t)wait, run_waited, t))
        api_task_queue(t);
}

static void results_work(api_task *t)
{
    json_t *rows;
    int64_t idx = t->n1;
    t->rc = store_run_results(t->a->store, t->id, t->n1 >= 0 ? &idx : NULL, 1, t->n2, t->limit, &rows, t->err,
                              sizeof t->err);
    json_t *cases;
    if (t->rc == 0)
        t->rc = store_run_cases(t->a->store, t->id, STORE_CASE_OBJECTS, &cases, t->err, sizeof t->err);
    else
        cases = json_array();
    size_t i;
    json_t *r;
    int64_t last = -1;
    json_array_foreach(rows, i, r) {
        json_t *c = json_array_get(cases, (size_t)json_integer_value(json_object_get(r, "case")));
        json_object_set(r, "case_id", json_object_get(c, "id"));
        last = json_integer_value(json_object_get(r, "case"));
    }
    json_t *root = json_pack("{s:o, s:o}", "items", rows, "next_cursor",
                             (int)json_array_size(rows) >= t->limit && last >= 0 ? json_integer(last) : json_null());
    char *s = jtree_dump_text(root, false);
    buf_puts(&t->out, s);
    free(s);
    json_decref(root);
    json_decref(cases);
}

/* GET /v1/runs/{id}/results?case=&cursor=&limit= */
void api_run_results(const api_call *c)
{
    const char *id = run_id(c);
    static const char *const known[] = {"case", "cursor", "limit", NULL};
    long long ci = -1, cursor = -1, limit = 500;
    if (!id || !api_known_params(c->req, known) || !api_int_param(c->req, "case", 0, 10000000, &ci) ||
        !api_int_param(c->req, "cursor", 0, 10000000, &cursor) || !api_int_param(c->req, "limit", 1, 5000, &limit))
        return;
    api_task *t = api_task_new(c->a, c->req, results_work);
    t->id = xstrdup(id);
    t->n1 = ci;
    t->n2 = cursor;
    t->limit = (int)limit;
    api_task_queue(t);
}

/* POST /v1/runs/{id}/cancel */
void api_cancel_run(const api_call *c)
{
    const char *id = run_id(c);
    reg_error e;
    if (!id)
        return;
    if (runner_cancel(c->a->runner, id, &e))
        api_respond_reg_error(c->req, &e);
    else
        http_respond(c->req, 202, "application/json", NULL, "{\"state\":\"stopping\"}", 20);
}

/* ---- the loop ---- */

/* The loop's answer to a request: its error, or the prompt's view. */
static void answer_view(http_request *req, int status, json_t *view, const reg_error *e)
{
    if (e)
        api_respond_reg_error(req, e);
    else
        api_respond_json(req, status, view);
}

static void on_optimizing(json_t *view, const reg_error *e, void *ud)
{
    answer_view(ud, 202, view, e);
}

static void on_decided(json_t *view, const reg_error *e, void *ud)
{
    answer_view(ud, 200, view, e);
}

/* POST /v1/prompts/{name}/optimize {template?} */
void api_optimize_prompt(const api_call *c)
{
    http_request *req = c->req;
    json_t *body = api_body_object(req);
    if (!body)
        return;
    static const char *const known[] = {"template", NULL};
    bool ok = api_known_fields(req, body, known, "template");
    json_t *t = json_object_get(body, "template");
    if (ok && t && (!json_is_string(t) || !registry_name_ok(json_string_value(t)))) {
        http_respond_field_error(req, 400, "invalid_field", "template",
                                 "'template' must be the name of a meta-prompt template (scripts/metaprompts/NAME.lua)");
        ok = false;
    }
    char tpl[160] = "";
    if (ok && t)
        snprintf(tpl, sizeof tpl, "%s", json_string_value(t));
    json_decref(body);
    reg_error e;
    if (ok && loop_optimize(c->a->loop_sm, c->param[0], api_actor(req), tpl[0] ? tpl : NULL, on_optimizing, req, &e))
        api_respond_reg_error(req, &e);
}

/* POST /v1/runs/{id}/approve, /v1/runs/{id}/reject {reason?} */
void api_decide_run(const api_call *c)
{
    http_request *req = c->req;
    const char *id = run_id(c);
    json_t *body = id ? api_body_object(req) : NULL;
    if (!body)
        return;
    static const char *const known[] = {"reason", NULL};
    json_t *rj = json_object_get(body, "reason");
    bool ok = api_known_fields(req, body, known, "reason");
    if (ok && rj && (!json_is_string(rj) || json_string_length(rj) > 1024)) {
        http_respond_field_error(req, 400, "invalid_field", "reason", "'reason' must be a string of at most 1024 bytes");
        ok = false;
    }
    reg_error e;
    if (ok && loop_approve(c->a->loop_sm, id, !strcmp(c->route->arg, "approve"), json_string_value(rj), api_actor(req),
                          on_decided, req, &e))
        api_respond_reg_error(req, &e);
    json_decref(body);
}

/* GET /v1/loop: every prompt's loop view and the counters */
void api_loop_status(const api_call *c)
{
    json_t *v = loop_status_json(c->a->loop_sm);
    api_respond_json(c->req, 200, v);
    json_decref(v);
}

static void events_work(api_task *t)
{
    t->rc = store_list_loop_events(t->a->store, t->name, t->n1, t->limit, &t->j1, t->err, sizeof t->err);
}

static void events_after(api_task *t)
{
    if (api_task_failed(t, "not_found", NULL))
        return;
    /* the view was taken before the read, with its moves on disk: the
     * events are at least as new as the state */
    json_t *v = t->j2 ? json_incref(t->j2) : json_pack("{s:s, s:s, s:b}", "prompt", t->name, "state", "idle",
                                                       "configured", 0);
    json_object_set(v, "events", t->j1);
    size_t n = json_array_size(t->j1);
    if (n)
        json_object_set(v, "next_cursor", json_object_get(json_array_get(t->j1, n - 1), "seq"));
    api_respond_json(t->req, 200, v);
    json_decref(v);
}

static void events_read(json_t *view, void *ud)
{
    api_task *t = ud;
    t->j2 = json_incref(view);
    api_task_queue(t);
}

/* GET /v1/loop/{name}?cursor=&limit=: one prompt's state and events */
void api_loop_prompt(const api_call *c)
{
    http_request *req = c->req;
    const char *name = c->param[0];
    static const char *const known[] = {"cursor", "limit", NULL};
    long long cursor = 0, limit = 200;
    if (!api_known_params(req, known) || !api_int_param(req, "cursor", 0, INT64_MAX, &cursor) ||
        !api_int_param(req, "limit", 1, 1000, &limit))
        return;
    if (!registry_prompt(c->a->registry, name)) {
        http_respond_field_error(req, 404, "unknown_prompt", "prompt", "no prompt named '%s'", name);
        return;
    }
    api_task *t = api_task_new(c->a, req, events_work);
    t->after_fn = events_after;
    t->name = xstrdup(name);
    t->n1 = cursor;
    t->limit = (int)limit;
    loop_prompt_view(c->a->loop_sm, t->name, events_read, t);
}
