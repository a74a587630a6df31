/* lua_module.c — `ratchet_sandbox`, a Lua module for busted specs: it loads
 * evaluator files with the engine's own runtime (script.c + evaluator.c: same
 * sandbox, same API, same JSON crossing), on a private libuv loop, so teams
 * test their evaluators with `busted` and no running engine.
 *
 *   local sandbox = require "ratchet_sandbox"
 *   local ev = sandbox.load_evaluator("evaluators/contains.lua")
 *   local r = ev:evaluate({ output = "hello" }, { value = "hell" })
 *   -- r.pass, r.score, r.reason, r.status ("ok", "error", "killed", "nomem")
 *
 * ratchet.llm.chat and ratchet.http.request answer from stubs the spec
 * gives: load_evaluator(path, { llm = function(request) return result end,
 * http = function(request) return { status = 200, body = "..." } end }); a
 * stub may return nil, message, kind to fail the call. Without a stub the
 * call answers nil, "... is not available here", "unavailable". */
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "script/evaluator.h"
#include "script/optdecl.h"
#include "script/policy.h"

#define EVALUATOR_MT "ratchet_sandbox.evaluator"

typedef struct {
    uv_loop_t loop;
    script_vm *vm;
    evaluator ev;
    bool policy;         /* a policy (load_policy), not an evaluator */
    lua_State *host;     /* the spec's state, during evaluate */
    int stub_ref[2];     /* llm, http stubs in the host registry, or LUA_NOREF */
    script_io io;
} sandbox_evaluator;

typedef struct {
    sandbox_evaluator *se;
    enum script_io_op op;
    char *request;
    script_io_done done;
    void *ud;
    uv_timer_t timer;
} stub_call;

static void on_stub_closed(uv_handle_t *h)
{
    stub_call *c = h->data;
    free(c->request);
    free(c);
}

/* Runs the stub in the host state (later, like real I/O) and reports back. */
static void on_stub_timer(uv_timer_t *t)
{
    stub_call *c = t->data;
    lua_State *L = c->se->host;
    if (c->se->stub_ref[c->op] == LUA_NOREF) {
        c->done(c->ud, NULL, "unavailable",
                c->op == SCRIPT_IO_LLM ? "no llm stub was given to load_evaluator" : "no http stub was given to load_evaluator");
        uv_close((uv_handle_t *)&c->timer, on_stub_closed);
        return;
    }
    int top = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    int cj = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->se->stub_ref[c->op]);
    lua_getfield(L, cj, "decode");
    lua_pushstring(L, c->request);
    lua_call(L, 1, 1);
    if (lua_pcall(L, 1, 3, 0) != LUA_OK) {
        c->done(c->ud, NULL, "stub_error", lua_tostring(L, -1));
    } else if (lua_isnil(L, -3)) {
        c->done(c->ud, NULL, luaL_optstring(L, -1, "error"), luaL_optstring(L, -2, "the stub returned nil"));
    } else {
        lua_getfield(L, cj, "encode");
        lua_pushvalue(L, -4);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK)
            c->done(c->ud, NULL, "stub_error", lua_tostring(L, -1));
        else
            c->done(c->ud, lua_tostring(L, -1), NULL, NULL);
    }
    lua_settop(L, top);
    uv_close((uv_handle_t *)&c->timer, on_stub_closed);
}

static void *stub_start(void *ctx, enum script_io_op op, const char *request, const char *caller_kind,
                        const char *caller_name, script_io_done done, void *done_ud)
{
    (void)caller_kind;
    (void)caller_name;
    sandbox_evaluator *se = ctx;
    stub_call *c = calloc(1, sizeof *c);
    c->se = se;
    c->op = op;
    c->done = done;
    c->ud = done_ud;
    c->request = strdup(request);
    uv_timer_init(&se->loop, &c->timer);
    c->timer.data = c;
    uv_timer_start(&c->timer, on_stub_timer, 0, 0);
    return c;
}

static void stub_cancel(void *ctx, enum script_io_op op, void *handle)
{
    (void)ctx;
    (void)op;
    stub_call *c = handle;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_stub_closed);
}

static const char *status_name(enum script_status s)
{
    switch (s) {
    case SCRIPT_OK: return "ok";
    case SCRIPT_KILLED: return "killed";
    case SCRIPT_NOMEM: return "nomem";
    default: return "error";
    }
}

/* host value -> JSON text, with the host's cjson (pushes the text) */
static const char *to_json(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "encode");
    lua_remove(L, -2);
    lua_pushvalue(L, idx);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK)
        luaL_error(L, "evaluate: the case or options cannot be sent as JSON: %s", lua_tostring(L, -1));
    return lua_tostring(L, -1);
}

typedef struct {
    bool finished;
    eval_result r;
} wait_result;

static void on_result(const eval_result *r, void *ud)
{
    wait_result *w = ud;
    w->finished = true;
    w->r = *r;
    w->r.reason = strdup(r->reason);
}

static void add_problem(const char *problem, void *ud)
{
    buf_t *b = ud;
    buf_printf(b, "%s%s", b->len ? "; " : "", problem);
}

/* ev:evaluate(case [, opts]) -> { pass, score, reason, status }; case and
 * opts are tables, or JSON texts passed on as they are (to send [] and {}
 * apart, which the host's cjson cannot). ev:evaluate_trace(trace [, opts])
 * judges a trace as online evaluation does: the case is built from it. */
static int evaluate(lua_State *L, bool from_trace)
{
    sandbox_evaluator *se = luaL_checkudata(L, 1, EVALUATOR_MT);
    if (lua_type(L, 2) != LUA_TSTRING)
        luaL_checktype(L, 2, LUA_TTABLE);
    bool has_opts = !lua_isnoneornil(L, 3); /* before to_json pushes anything */
    const char *opts_json = !has_opts ? NULL : lua_type(L, 3) == LUA_TSTRING ? lua_tostring(L, 3) : to_json(L, 3);
    const char *case_json = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : to_json(L, 2);
    wait_result w = {0};
    se->host = L;
    /* the engine refuses options its declaration rejects when the config
     * loads; here, where there is no config, the call answers that error */
    buf_t problems;
    buf_init(&problems);
    if (evaluator_check_options(se->vm, &se->ev, opts_json, add_problem, &problems) > 0) {
        w.finished = true;
        w.r.status = SCRIPT_ERROR;
        buf_t why;
        buf_init(&why);
        buf_printf(&why, "evaluator %s: %s", se->ev.name, problems.data);
        w.r.reason = buf_steal(&why);
    } else {
        evaluator_run(se->vm, &se->ev, 0, from_trace, case_json, opts_json, on_result, &w);
    }
    buf_free(&problems);
    while (!w.finished)
        uv_run(&se->loop, UV_RUN_ONCE);
    lua_createtable(L, 0, 4);
    lua_pushboolean(L, w.r.pass);
    lua_setfield(L, -2, "pass");
    lua_pushnumber(L, w.r.score);
    lua_setfield(L, -2, "score");
    lua_pushstring(L, w.r.reason);
    lua_setfield(L, -2, "reason");
    lua_pushstring(L, status_name(w.r.status));
    lua_setfield(L, -2, "status");
    free(w.r.reason);
    return 1;
}

static int l_evaluate(lua_State *L) { return evaluate(L, false); }
static int l_evaluate_trace(lua_State *L) { return evaluate(L, true); }

/* host cjson.decode(text) (pushes the value) */
static void from_json(lua_State *L, const char *text)
{
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    lua_remove(L, -2);
    lua_pushstring(L, text);
    lua_call(L, 1, 1);
}

/* ev:check_options(opts) -> true, or false and the list of problems, as the
 * engine checks a config's options when it loads */
static void list_problem(const char *problem, void *ud)
{
    lua_State *L = ud;
    lua_pushstring(L, problem);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

/* A policy's options (a prompt's *_options) against its declaration: the
 * keys and types of its settings, narrowed by its options table, as the
 * engine checks them when the config loads. */
static int policy_check_options(sandbox_evaluator *se, const char *opts_json, lua_State *L)
{
    char *stext = script_field_json(se->vm, se->ev.ref, "settings");
    char *otext = script_field_json(se->vm, se->ev.ref, "options");
    json_t *st = stext ? json_loads(stext, 0, NULL) : NULL, *ot = otext ? json_loads(otext, 0, NULL) : NULL;
    free(stext);
    free(otext);
    json_t *decl = optdecl_from_settings(st, ot);
    json_t *opts = opts_json ? json_loads(opts_json, 0, NULL) : NULL;
    char err[700];
    int n = 0;
    if (decl && optdecl_check(decl, err, sizeof err) != 0) {
        list_problem(err, L);
        n = 1;
    } else if (decl) {
        n = optdecl_validate(decl, json_object_size(opts) ? opts : NULL, list_problem, L);
    }
    json_decref(st);
    json_decref(ot);
    json_decref(decl);
    json_decref(opts);
    return n;
}

static int l_check_options(lua_State *L)
{
    sandbox_evaluator *se = luaL_checkudata(L, 1, EVALUATOR_MT);
    const char *opts_json = lua_isnoneornil(L, 2) ? NULL : lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2)
                                                                                        : to_json(L, 2);
    lua_newtable(L);
    if (se->policy ? policy_check_options(se, opts_json, L) == 0
                   : evaluator_check_options(se->vm, &se->ev, opts_json, list_problem, L) == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    return 2;
}

static void sandbox_close(sandbox_evaluator *se)
{
    for (int i = 0; i < 2; i++)
        if (se->host && se->stub_ref[i] != LUA_NOREF) {
            luaL_unref(se->host, LUA_REGISTRYINDEX, se->stub_ref[i]);
            se->stub_ref[i] = LUA_NOREF;
        }
    if (se->vm) {
        evaluator_free(se->vm, &se->ev);
        script_vm_free(se->vm);
        uv_run(&se->loop, UV_RUN_DEFAULT);
        uv_loop_close(&se->loop);
        se->vm = NULL;
    }
}

typedef struct {
    bool finished;
    char *result, *error;
} policy_wait;

static void on_policy_result(const char *result, const char *error, void *ud)
{
    policy_wait *w = ud;
    w->finished = true;
    w->result = result ? strdup(result) : NULL;
    w->error = error ? strdup(error) : NULL;
}

/* policy:call(fn, arg...) -> the first value fn returned (through JSON, as the
 * engine sees it), or raises with the script's error */
static int l_call(lua_State *L)
{
    sandbox_evaluator *se = luaL_checkudata(L, 1, EVALUATOR_MT);
    const char *fn = luaL_checkstring(L, 2);
    int nargs = lua_gettop(L) - 2;
    policy_wait w = {0};
    se->host = L;
    if (nargs > 1) {
        /* several arguments cross as one JSON array, spread again inside */
        lua_createtable(L, nargs, 0);
        for (int i = 1; i <= nargs; i++) {
            lua_pushvalue(L, 2 + i);
            lua_rawseti(L, -2, i);
        }
        const char *args = to_json(L, lua_gettop(L));
        policy_call_args(se->vm, se->ev.ref, se->ev.name, fn, 0, args, on_policy_result, &w);
    } else {
        const char *arg = lua_type(L, 3) == LUA_TSTRING ? lua_tostring(L, 3) : to_json(L, 3);
        policy_call(se->vm, se->ev.ref, se->ev.name, fn, 0, arg, on_policy_result, &w);
    }
    while (!w.finished)
        uv_run(&se->loop, UV_RUN_ONCE);
    if (!w.result) {
        lua_pushstring(L, w.error);
        free(w.error);
        return lua_error(L);
    }
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "decode");
    lua_pushstring(L, w.result);
    free(w.result);
    lua_call(L, 1, 1);
    return 1;
}

static int l_gc(lua_State *L)
{
    sandbox_close(luaL_checkudata(L, 1, EVALUATOR_MT));
    return 0;
}

static int l_index(lua_State *L)
{
    sandbox_evaluator *se = luaL_checkudata(L, 1, EVALUATOR_MT);
    const char *k = luaL_checkstring(L, 2);
    if (strcmp(k, "name") == 0)
        lua_pushstring(L, se->ev.name);
    else if (strcmp(k, "description") == 0)
        lua_pushstring(L, se->ev.description);
    else if (strcmp(k, "evaluate") == 0 && !se->policy)
        lua_pushcfunction(L, l_evaluate);
    else if (strcmp(k, "evaluate_trace") == 0 && !se->policy)
        lua_pushcfunction(L, l_evaluate_trace);
    else if (strcmp(k, "check_options") == 0)
        lua_pushcfunction(L, l_check_options);
    else if (strcmp(k, "options") == 0 && !se->policy && se->ev.options) {
        char *t = json_dumps(se->ev.options, JSON_COMPACT);
        from_json(L, t);
        free(t);
    }
    else if (strcmp(k, "call") == 0 && se->policy)
        lua_pushcfunction(L, l_call);
    else
        lua_pushnil(L);
    return 1;
}

/* load_evaluator(path [, { dirs = {...}, budget_ms =, memory_limit = }])
 * -> evaluator, or nil and the load error (file:line). */
static int load(lua_State *L, bool policy)
{
    const char *path = luaL_checkstring(L, 1);
    script_limits lim;
    script_limits_default(&lim);
    const char *dirs[17] = {"evaluators", "policies", "scripts", NULL};
    if (lua_istable(L, 2)) {
        if (lua_getfield(L, 2, "budget_ms") == LUA_TNUMBER)
            lim.budget_ms = (int)lua_tointeger(L, -1);
        if (lua_getfield(L, 2, "memory_limit") == LUA_TNUMBER)
            lim.memory_limit = (size_t)lua_tointeger(L, -1);
        if (lua_getfield(L, 2, "dirs") == LUA_TTABLE) {
            int t = lua_gettop(L), n = 0;
            for (; n < 16 && lua_rawgeti(L, t, n + 1) == LUA_TSTRING; n++)
                dirs[n] = lua_tostring(L, -1); /* kept alive by the options table */
            dirs[n] = NULL;
        }
    }
    int stubs[2] = {LUA_NOREF, LUA_NOREF};
    if (lua_istable(L, 2)) {
        static const char *const names[2] = {"llm", "http"}; /* SCRIPT_IO_LLM, SCRIPT_IO_HTTP */
        for (int i = 0; i < 2; i++) {
            int t = lua_getfield(L, 2, names[i]);
            if (t == LUA_TFUNCTION)
                stubs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
            else if (t != LUA_TNIL)
                return luaL_error(L, "load: option '%s' must be a function(request)", names[i]);
            else
                lua_pop(L, 1);
        }
    }
    sandbox_evaluator *se = lua_newuserdatauv(L, sizeof *se, 0);
    memset(se, 0, sizeof *se);
    se->host = L;
    se->stub_ref[0] = stubs[0];
    se->stub_ref[1] = stubs[1];
    uv_loop_init(&se->loop);
    se->vm = script_vm_new(&se->loop, &lim, dirs);
    if (stubs[0] != LUA_NOREF || stubs[1] != LUA_NOREF) {
        se->io = (script_io){.start = stub_start, .cancel = stub_cancel, .ctx = se};
        script_vm_set_io(se->vm, &se->io);
    }
    luaL_setmetatable(L, EVALUATOR_MT);
    char err[1024];
    se->policy = policy;
    if (policy) {
        if (script_load_file(se->vm, path, &se->ev.ref, se->ev.version, err, sizeof err) != 0) {
            sandbox_close(se);
            lua_pushnil(L);
            lua_pushstring(L, err);
            return 2;
        }
        const char *slash = strrchr(path, '/');
        se->ev.name = strdup(slash ? slash + 1 : path);
        se->ev.description = strdup("");
        se->ev.path = strdup(path);
        return 1;
    }
    if (evaluator_load(se->vm, path, &se->ev, err, sizeof err) != 0) {
        sandbox_close(se);
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

static int l_load_evaluator(lua_State *L)
{
    return load(L, false);
}

/* load_policy(path [, opts]) -> policy with :call(fn, arg), or nil and the error */
static int l_load_policy(lua_State *L)
{
    return load(L, true);
}

int luaopen_ratchet_sandbox(lua_State *L)
{
    luaL_newmetatable(L, EVALUATOR_MT);
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_index);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    static const luaL_Reg fns[] = {{"load_evaluator", l_load_evaluator}, {"load_policy", l_load_policy}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
