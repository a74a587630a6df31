/* policy.c — one call into a policy script (see policy.h). */
#include "script/policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

typedef struct {
    char *name, *fn, *arg;
    bool spread; /* arg is an array of the arguments */
    policy_done done;
    void *ud;
} policy_ctx;

static int push_arg(lua_State *co, void *ud)
{
    policy_ctx *c = ud;
    if (!script_push_json(co, c->arg, strlen(c->arg))) {
        lua_pushnil(co);
        return 1;
    }
    if (!c->spread || !lua_istable(co, -1))
        return 1;
    /* stack: args -> args[1] .. args[n] */
    int n = (int)lua_rawlen(co, -1), t = lua_gettop(co);
    if (!lua_checkstack(co, n + 1))
        return 1;
    for (int i = 1; i <= n; i++)
        lua_rawgeti(co, t, i);
    lua_remove(co, t);
    return n;
}

static void on_done(script_call *call, enum script_status status, lua_State *co, int nres, const char *message,
                    void *ud)
{
    (void)call;
    policy_ctx *c = ud;
    char err[800];
    char *json = NULL;
    if (status != SCRIPT_OK) {
        snprintf(err, sizeof err, "policy %s: %s failed: %s", c->name, c->fn,
                 status == SCRIPT_KILLED ? "it ran out of time (killed)" : status == SCRIPT_NOMEM ? "out of memory"
                                                                                                 : message);
    } else if (nres < 1 || lua_isnil(co, lua_gettop(co) - nres + 1)) {
        snprintf(err, sizeof err, "policy %s: %s returned nothing", c->name, c->fn);
    } else {
        char why[300];
        json = script_to_json(co, lua_gettop(co) - nres + 1, why, sizeof why);
        if (!json)
            snprintf(err, sizeof err, "policy %s: %s returned a value that is not JSON: %s", c->name, c->fn, why);
    }
    c->done(json, json ? NULL : err, c->ud);
    free(json);
    free(c->name);
    free(c->fn);
    free(c->arg);
    free(c);
}

static void call(script_vm *vm, int ref, const char *name, const char *fn, int budget_ms, const char *arg_json,
                 bool spread, policy_done done, void *ud)
{
    policy_ctx *c = xcalloc(1, sizeof *c);
    c->spread = spread;
    c->name = xstrdup(name);
    c->fn = xstrdup(fn);
    c->arg = xstrdup(arg_json);
    c->done = done;
    c->ud = ud;
    script_invoke(vm, ref, fn, budget_ms, "policy", name, push_arg, on_done, c);
}

void policy_call(script_vm *vm, int ref, const char *name, const char *fn, int budget_ms, const char *arg_json,
                 policy_done done, void *ud)
{
    call(vm, ref, name, fn, budget_ms, arg_json, false, done, ud);
}

void policy_call_args(script_vm *vm, int ref, const char *name, const char *fn, int budget_ms, const char *args_json,
                      policy_done done, void *ud)
{
    call(vm, ref, name, fn, budget_ms, args_json, true, done, ud);
}
