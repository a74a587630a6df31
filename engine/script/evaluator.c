/* evaluator.c — loads evaluator scripts, checks their contract, runs them
 * and checks what they answer. */
#include "script/evaluator.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "script/optdecl.h"
#include "base/util.h"

int evaluator_load(script_vm *vm, const char *path, evaluator *ev, char *err, size_t errlen)
{
    buf_t text;
    buf_init(&text);
    int rc = script_read_text(path, &text, err, errlen);
    if (rc == 0)
        rc = evaluator_load_text(vm, path, text.data ? text.data : "", text.len, ev, err, errlen);
    else
        memset(ev, 0, sizeof *ev);
    buf_free(&text);
    return rc;
}

int evaluator_load_text(script_vm *vm, const char *path, const char *text, size_t len, evaluator *ev, char *err,
                        size_t errlen)
{
    memset(ev, 0, sizeof *ev);
    int ref;
    char version[17];
    if (script_load_text(vm, path, text, len, &ref, version, err, errlen) != 0)
        return -1;
    return evaluator_from_ref(vm, ref, path, version, ev, err, errlen);
}

int evaluator_from_ref(script_vm *vm, int ref, const char *path, const char version[17], evaluator *ev, char *err,
                       size_t errlen)
{
    memset(ev, 0, sizeof *ev);
    memcpy(ev->version, version, sizeof ev->version);
    lua_State *L = script_vm_state(vm);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    const char *problem = NULL;
    if (lua_getfield(L, -1, "name") != LUA_TSTRING || lua_rawlen(L, -1) == 0)
        problem = "'name' must be a non-empty string";
    else if (lua_getfield(L, -2, "description") != LUA_TSTRING)
        problem = "'description' must be a string";
    else if (lua_getfield(L, -3, "evaluate") != LUA_TFUNCTION)
        problem = "'evaluate' must be a function(case, opts, ctx)";
    else {
        int t = lua_getfield(L, -4, "options");
        if (t != LUA_TNIL && t != LUA_TTABLE)
            problem = "'options', when given, must be a table declaring the options";
        t = lua_getfield(L, -5, "check");
        if (t != LUA_TNIL && t != LUA_TFUNCTION)
            problem = "'check', when given, must be a function(opts) that raises on options it cannot use";
        ev->has_check = t == LUA_TFUNCTION;
        lua_pop(L, 2);
    }
    if (problem) {
        snprintf(err, errlen, "%s: not an evaluator: %s", path, problem);
        lua_settop(L, 0);
        script_unref(vm, ref);
        return -1;
    }
    ev->name = xstrdup(lua_tostring(L, -3));
    ev->description = xstrdup(lua_tostring(L, -2));
    ev->path = xstrdup(path);
    ev->ref = ref;
    lua_settop(L, 0);
    /* the options declaration: plain data, well formed */
    char *decl = script_field_json(vm, ref, "options");
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    bool declared = lua_getfield(L, -1, "options") != LUA_TNIL;
    lua_settop(L, 0);
    if (declared) {
        char why[700];
        ev->options = decl ? json_loads(decl, 0, NULL) : NULL;
        if (!ev->options || optdecl_check(ev->options, why, sizeof why) != 0) {
            snprintf(err, errlen, "%s: not an evaluator: %s", path,
                     ev->options ? why : "'options' must be plain data (tables, strings, numbers, booleans)");
            free(decl);
            evaluator_free(vm, ev);
            return -1;
        }
    }
    free(decl);
    return 0;
}

void evaluator_free(script_vm *vm, evaluator *ev)
{
    if (ev->path)
        script_unref(vm, ev->ref);
    free(ev->name);
    free(ev->description);
    free(ev->path);
    json_decref(ev->options);
    memset(ev, 0, sizeof *ev);
}

int evaluator_check_options(script_vm *vm, const evaluator *ev, const char *opts_json,
                            void (*report)(const char *problem, void *ud), void *ud)
{
    int n = 0;
    if (ev->options) {
        json_t *opts = opts_json ? json_loads(opts_json, 0, NULL) : NULL;
        if (opts_json && !opts) {
            report("the options are not valid JSON", ud);
            return 1;
        }
        n = optdecl_validate(ev->options, opts, report, ud);
        json_decref(opts);
    }
    if (n == 0 && ev->has_check) {
        char err[700];
        if (script_call_sync(vm, ev->ref, "check", opts_json ? opts_json : "{}", err, sizeof err) != 0) {
            report(err, ud);
            n++;
        }
    }
    return n;
}

typedef struct {
    const char *case_json, *opts_json;
    const json_t *case_tree; /* instead of case_json */
    const evaluator *ev;
    bool from_trace;
    eval_done done;
    void *ud;
    eval_stats *stats;
    uint64_t start_ns;
    uint64_t lua_ns;
} run_ctx;

/* Replaces the trace on top of the stack with the case an evaluator judges,
 * in the one shape runs use too (docs/evaluators.md#the-case): {id, source =
 * "trace", version, tags = {}, input = {variables, messages?}, output,
 * trace}. input.variables is always a table. */
static void push_trace_case(lua_State *co)
{
    int trace = lua_gettop(co);
    lua_createtable(co, 0, 7);
    lua_getfield(co, trace, "id");
    lua_setfield(co, -2, "id");
    lua_pushliteral(co, "trace");
    lua_setfield(co, -2, "source");
    if (lua_getfield(co, trace, "prompt") == LUA_TTABLE) {
        lua_getfield(co, -1, "version");
        lua_setfield(co, -3, "version");
    }
    lua_pop(co, 1);
    lua_newtable(co);
    lua_setfield(co, -2, "tags");
    lua_createtable(co, 0, 2); /* input: a copy, so trace.input stays as sent */
    if (lua_getfield(co, trace, "input") == LUA_TTABLE) {
        lua_getfield(co, -1, "messages");
        lua_setfield(co, -3, "messages");
        lua_getfield(co, -1, "variables");
        lua_setfield(co, -3, "variables");
    }
    lua_pop(co, 1);
    if (lua_getfield(co, -1, "variables") != LUA_TTABLE) {
        lua_newtable(co);
        lua_setfield(co, -3, "variables");
    }
    lua_pop(co, 1);
    lua_setfield(co, -2, "input");
    lua_getfield(co, trace, "output");
    lua_setfield(co, -2, "output");
    lua_insert(co, trace);   /* case, trace */
    lua_setfield(co, trace, "trace");
}

/* evaluate(case, opts, ctx) */
static int push_args(lua_State *co, void *ud)
{
    run_ctx *rc = ud;
    if (rc->case_tree ? !script_push_tree(co, rc->case_tree)
                      : !script_push_json(co, rc->case_json, strlen(rc->case_json)))
        lua_pushnil(co);
    else if (rc->from_trace && lua_istable(co, -1))
        push_trace_case(co);
    if (!rc->opts_json || !script_push_json_cached(co, rc->ev->ref, rc->opts_json, strlen(rc->opts_json)))
        lua_newtable(co);
    lua_newtable(co);
    lua_pushstring(co, rc->ev->name);
    lua_setfield(co, -2, "evaluator");
    return 3;
}

/* reason: len bytes, which may hold NULs (a Lua string) */
static void finish_n(run_ctx *rc, enum script_status status, bool pass, double score, const char *reason, size_t len)
{
    char clean[600]; /* a script's text may be cut mid-character, hold NULs, or not be UTF-8 at all */
    utf8_clean(clean, sizeof clean, reason, len);
    eval_result r = {status, pass, score, clean, rc->lua_ns};
    eval_stats *st = rc->stats;
    if (st) {
        st->runs++;
        if (status != SCRIPT_OK)
            st->errors++;
        else if (!pass)
            st->failures++;
        if (status == SCRIPT_KILLED || status == SCRIPT_NOMEM)
            st->killed++;
        metrics_observe(&st->seconds, (double)(mono_ns() - rc->start_ns) / 1e9);
    }
    rc->done(&r, rc->ud);
    free(rc);
}

static void finish(run_ctx *rc, enum script_status status, bool pass, double score, const char *reason)
{
    finish_n(rc, status, pass, score, reason, strlen(reason));
}

static void on_done(script_call *call, enum script_status status, lua_State *co, int nres, const char *message,
                    void *ud)
{
    run_ctx *rc = ud;
    rc->lua_ns = call ? script_call_lua_ns(call) : 0;
    char why[600];
    if (status != SCRIPT_OK) {
        snprintf(why, sizeof why, "evaluator %s failed: %s", rc->ev->name, message);
        finish(rc, status, false, 0, why);
        return;
    }
    int top = lua_gettop(co) - nres + 1;
    if (nres < 1 || !lua_istable(co, top)) {
        snprintf(why, sizeof why, "evaluator %s: evaluate must return a table {pass, score, reason}", rc->ev->name);
        finish(rc, SCRIPT_ERROR, false, 0, why);
        return;
    }
    lua_getfield(co, top, "pass");
    lua_getfield(co, top, "score");
    lua_getfield(co, top, "reason");
    if (!lua_isboolean(co, -3)) {
        snprintf(why, sizeof why, "evaluator %s: 'pass' must be true or false", rc->ev->name);
        finish(rc, SCRIPT_ERROR, false, 0, why);
        return;
    }
    bool pass = lua_toboolean(co, -3);
    double score = pass ? 1 : 0;
    if (!lua_isnil(co, -2)) {
        score = lua_isnumber(co, -2) ? lua_tonumber(co, -2) : NAN;
        if (!(score >= 0 && score <= 1)) {
            snprintf(why, sizeof why, "evaluator %s: 'score' must be a number from 0 to 1", rc->ev->name);
            finish(rc, SCRIPT_ERROR, false, 0, why);
            return;
        }
    }
    if (!lua_isnil(co, -1) && !lua_isstring(co, -1)) {
        snprintf(why, sizeof why, "evaluator %s: 'reason' must be a string", rc->ev->name);
        finish(rc, SCRIPT_ERROR, false, 0, why);
        return;
    }
    if (lua_isnil(co, -1)) {
        finish(rc, SCRIPT_OK, pass, score, pass ? "ok" : "failed");
        return;
    }
    size_t len;
    const char *reason = lua_tolstring(co, -1, &len);
    finish_n(rc, SCRIPT_OK, pass, score, reason, len);
}

static void run(script_vm *vm, const evaluator *ev, int budget_ms, bool from_trace, const char *case_json,
                const json_t *case_tree, const char *opts_json, eval_done done, void *ud)
{
    run_ctx *rc = xcalloc(1, sizeof *rc);
    rc->from_trace = from_trace;
    rc->case_json = case_json;
    rc->case_tree = case_tree;
    rc->opts_json = opts_json;
    rc->ev = ev;
    rc->done = done;
    rc->ud = ud;
    rc->stats = ev->stats;
    rc->start_ns = mono_ns();
    script_invoke(vm, ev->ref, "evaluate", budget_ms, "evaluator", ev->name, push_args, on_done, rc);
}

void evaluator_run(script_vm *vm, const evaluator *ev, int budget_ms, bool from_trace, const char *case_json,
                   const char *opts_json, eval_done done, void *ud)
{
    run(vm, ev, budget_ms, from_trace, case_json, NULL, opts_json, done, ud);
}

void evaluator_run_tree(script_vm *vm, const evaluator *ev, int budget_ms, const json_t *case_tree,
                        const char *opts_json, eval_done done, void *ud)
{
    run(vm, ev, budget_ms, false, NULL, case_tree, opts_json, done, ud);
}
