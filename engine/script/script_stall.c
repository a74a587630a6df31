/* script_stall.c — the C calls a script can make that could hold the event
 * loop longer than any slice, and how each is stopped at the invocation's
 * kill point (script_private.h).
 *
 * Lua's pattern functions (string.find, match, gmatch, gsub) never return
 * to the VM while they match, so no hook reaches them, and their time has
 * no useful bound: `string.find(("a"):rep(1500), ".-.-b")` runs for
 * seconds. They run here in a scratch Lua state of their own, lstrlib's own
 * code on copies of the arguments: when the kill point passes during the
 * call, the deadline signal's handler jumps out of it (siglongjmp) and the
 * scratch state is thrown away whole, every block its allocator handed out
 * freed without looking inside. Nothing the jump can interrupt is shared
 * with the script's VM, so wherever the signal lands (in the matcher, in
 * the scratch state's collector or string table, in a stack resize) the VM
 * stays whole. Only its allocator's own moments are off limits (malloc
 * could hold a lock): a signal landing there tries again 0.2 ms later.
 * gsub's function or table replacement runs in the script's VM, with the
 * jump disarmed, through a bridge that checks the kill point after each
 * call. gmatch's iterator lives in the VM and runs each step as a find.
 * string.rep of more than 64 KiB runs here too (it copies a byte at a time:
 * 9 ns per byte of output). The cost is a copy of the arguments and results
 * (a subject of 1 KiB or more is kept for the next call on the same string).
 *
 * table.sort calls its comparator from C: a Lua comparator is stopped by
 * the hook, a C one (or the built-in order, on big tables) is wrapped in a
 * C function that checks the kill point after each comparison.
 *
 * PCRE2 (rex_pcre2) allocates with malloc while it matches, so it cannot be
 * jumped out of. Each pattern gets PCRE2's own limit, (*LIMIT_MATCH=300000)
 * (about 5 ms of backtracking; over it the call fails with
 * PCRE2_ERROR_MATCHLIMIT), and the functions that loop over matches inside
 * one call (gsub, count) are not offered: gmatch and split iterate, a step
 * per call. */
#include "script/script_private.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

#define SCRATCH_MAX_DEPTH 32     /* pattern calls inside gsub callbacks inside ... */
#define SUBJECT_CACHE_MIN 1024   /* subjects this long are kept for the next call */
#define REP_NATIVE_MAX (64 * 1024)
#define SORT_CHECKED_MIN 4096    /* the built-in order is checked on bigger tables */
#define PCRE2_PREFIX "(*LIMIT_MATCH=300000)(*LIMIT_HEAP=32768)"

/* ---- the scratch states ---- */

typedef struct block {
    struct block *prev, *next;
    size_t size;
    size_t pad; /* keeps what follows 16-byte aligned */
} block;

typedef struct {
    lua_State *S;
    block *blocks;     /* every block S holds */
    size_t used;       /* bytes of them */
    size_t limit;      /* what S may hold during this call */
    lua_CFunction find, match, gsub, rep;
    const void *cached;  /* the VM string whose copy is S's subject cache */
    const void *cached_vm;
} scratch;

/* a gsub's replacement, for the bridge */
typedef struct {
    lua_State *L;
    int repl;          /* its index on L */
    bool failed;       /* the callback raised: its error is on L's top */
    bool killed;       /* the kill point passed during the callbacks */
} bridge_ctx;

static _Thread_local scratch *states[SCRATCH_MAX_DEPTH];
static _Thread_local bridge_ctx *bridges[SCRATCH_MAX_DEPTH];
static _Thread_local int depth; /* scratch calls in progress on this thread */
static char subject_key, pin_keys[SCRATCH_MAX_DEPTH];

static void block_link(scratch *sc, block *b)
{
    b->prev = NULL;
    b->next = sc->blocks;
    if (sc->blocks)
        sc->blocks->prev = b;
    sc->blocks = b;
}

static void block_unlink(scratch *sc, block *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else
        sc->blocks = b->next;
    if (b->next)
        b->next->prev = b->prev;
}

/* S's allocator: tracks every block, so a state abandoned mid-call can be
 * freed whole; marks its moments so the handler never jumps out of one. */
static void *scratch_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)osize;
    scratch *sc = ud;
    stls.in_alloc++;
    atomic_signal_fence(memory_order_seq_cst);
    void *out = NULL;
    block *b = ptr ? (block *)ptr - 1 : NULL;
    if (nsize == 0) {
        if (b) {
            block_unlink(sc, b);
            sc->used -= b->size;
            free(b);
        }
    } else {
        size_t old = b ? b->size : 0;
        if (nsize <= old || sc->used + (nsize - old) <= sc->limit) {
            if (b)
                block_unlink(sc, b);
            block *nb = realloc(b, sizeof *nb + nsize);
            if (nb) {
                nb->size = nsize;
                block_link(sc, nb);
                sc->used = sc->used - old + nsize;
                out = nb + 1;
            } else if (b) {
                block_link(sc, b); /* the old block stays valid */
            }
        }
    }
    atomic_signal_fence(memory_order_seq_cst);
    stls.in_alloc--;
    return out;
}

static lua_CFunction lib_function(lua_State *S, const char *name)
{
    lua_getfield(S, -1, name);
    lua_CFunction f = lua_tocfunction(S, -1);
    lua_pop(S, 1);
    return f;
}

static scratch *scratch_get(int d)
{
    if (states[d])
        return states[d];
    scratch *sc = xcalloc(1, sizeof *sc);
    sc->limit = (size_t)-1;
    sc->S = lua_newstate(scratch_alloc, sc);
    if (!sc->S) {
        free(sc);
        return NULL;
    }
    luaL_requiref(sc->S, LUA_STRLIBNAME, luaopen_string, 0);
    sc->find = lib_function(sc->S, "find");
    sc->match = lib_function(sc->S, "match");
    sc->gsub = lib_function(sc->S, "gsub");
    sc->rep = lib_function(sc->S, "rep");
    lua_settop(sc->S, 0);
    states[d] = sc;
    return sc;
}

/* Frees a state without looking inside it (it may be mid-call). */
static void scratch_discard(int d)
{
    scratch *sc = states[d];
    states[d] = NULL;
    if (!sc)
        return;
    for (block *b = sc->blocks; b;) {
        block *next = b->next;
        free(b);
        b = next;
    }
    free(sc);
}

void script_stall_free(void)
{
    for (int d = 0; d < SCRATCH_MAX_DEPTH; d++)
        if (states[d]) {
            lua_close(states[d]->S);
            free(states[d]);
            states[d] = NULL;
        }
}

/* Pushes the string at idx of L onto S; a long subject is kept in S (and
 * pinned in L's registry, so the pointer cannot come back as another
 * string) for the next call on the same string. */
static void push_arg_string(lua_State *L, int d, int idx, bool subject)
{
    scratch *sc = states[d];
    size_t len;
    const char *s = lua_tolstring(L, idx, &len);
    if (subject && len >= SUBJECT_CACHE_MIN) {
        const void *vm = lua_topointer(L, LUA_REGISTRYINDEX);
        if (sc->cached == s && sc->cached_vm == vm) {
            lua_rawgetp(sc->S, LUA_REGISTRYINDEX, &subject_key);
            return;
        }
        lua_pushvalue(L, idx); /* pinned first: if L raises here, S is untouched */
        lua_rawsetp(L, LUA_REGISTRYINDEX, &pin_keys[d]);
        lua_pushlstring(sc->S, s, len);
        lua_pushvalue(sc->S, -1);
        lua_rawsetp(sc->S, LUA_REGISTRYINDEX, &subject_key);
        sc->cached = s;
        sc->cached_vm = vm;
        return;
    }
    lua_pushlstring(sc->S, s, len);
}

/* Copies S's stack from base on to L; returns how many. */
static int copy_results(lua_State *L, lua_State *S, int base)
{
    int top = lua_gettop(S), n = top - base + 1;
    luaL_checkstack(L, n > 0 ? n : 1, "too many captures");
    for (int i = base; i <= top; i++) {
        switch (lua_type(S, i)) {
        case LUA_TNUMBER:
            if (lua_isinteger(S, i))
                lua_pushinteger(L, lua_tointeger(S, i));
            else
                lua_pushnumber(L, lua_tonumber(S, i));
            break;
        case LUA_TSTRING: {
            size_t len;
            const char *s = lua_tolstring(S, i, &len);
            lua_pushlstring(L, s, len);
            break;
        }
        case LUA_TBOOLEAN:
            lua_pushboolean(L, lua_toboolean(S, i));
            break;
        default:
            lua_pushnil(L);
        }
    }
    return n;
}

enum run_outcome { RUN_OK, RUN_ERROR, RUN_KILLED, RUN_NOMEM, RUN_CALLBACK_ERROR };

/* Calls fn on the nargs values on top of sc->S, where the handler may jump
 * out once the kill point passes. On RUN_OK the results are on S; on
 * RUN_ERROR S's error message is on S's top; RUN_KILLED leaves S gone. */
static enum run_outcome run_scratch(lua_State *L, int d, lua_CFunction fn, int nargs)
{
    scratch *sc = states[d];
    lua_State *S = sc->S;
    lua_pushcfunction(S, fn);
    lua_insert(S, -(nargs + 1));
    /* S may hold only the VM's headroom, which the VM's own garbage can eat
     * up: when S runs out of memory, the VM is collected and the call runs
     * once more, as Lua retries an allocation after an emergency collection.
     * Not when a gsub callback may have run in the VM (it would run twice). */
    const int base = lua_gettop(S) - (nargs + 1);
    const bool may_retry = bridges[d] == NULL;
    if (may_retry)
        for (int i = 1; i <= nargs + 1; i++)
            lua_pushvalue(S, base + i);
    volatile bool retried = !may_retry;
again:
    sc->limit = sc->used + script_headroom(L); /* the VM's headroom, not more */
    sigjmp_buf jb;
    sigjmp_buf *volatile outer_jump = stls.jump;
    if (sigsetjmp(jb, 0)) {
        /* the handler jumped out of S: its signal is still blocked */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SCRIPT_DEADLINE_SIGNAL);
        pthread_sigmask(SIG_UNBLOCK, &set, NULL);
        stls.jump = outer_jump;
        stls.in_scratch = 0;
        stls.in_alloc = 0;
        depth = d;
        scratch_discard(d);
        return RUN_KILLED;
    }
    stls.jump = &jb;
    depth = d + 1; /* a call from a gsub callback takes the next state */
    atomic_signal_fence(memory_order_seq_cst);
    stls.in_scratch = 1;
    atomic_signal_fence(memory_order_seq_cst);
    int st = lua_pcall(S, nargs, LUA_MULTRET, 0);
    atomic_signal_fence(memory_order_seq_cst);
    stls.in_scratch = 0;
    atomic_signal_fence(memory_order_seq_cst);
    depth = d;
    stls.jump = outer_jump;
    if (st == LUA_ERRMEM && !retried) {
        lua_settop(S, base + nargs + 1); /* the call's copy, for another try */
        lua_gc(L, LUA_GCCOLLECT);
        retried = true;
        goto again;
    }
    if (!retried) { /* the copy is still below the results */
        lua_rotate(S, base + 1, -(nargs + 1));
        lua_pop(S, nargs + 1);
    }
    if (st == LUA_OK)
        return RUN_OK;
    if (bridges[d] && bridges[d]->killed)
        return RUN_KILLED;
    if (bridges[d] && bridges[d]->failed)
        return RUN_CALLBACK_ERROR;
    return st == LUA_ERRMEM ? RUN_NOMEM : RUN_ERROR;
}

/* The scratch state for a call now (the first, or the next one inside a
 * gsub callback), with an empty stack; raises in L when there is none.
 * Calls nest only through gsub callbacks, which run inside run_scratch, so
 * the depth is what run_scratch says. */
static int scratch_enter(lua_State *L, const char *what)
{
    if (stls.overdue)
        script_raise_kill(L, what); /* already past the kill point: do not start */
    int d = depth;
    if (d >= SCRATCH_MAX_DEPTH)
        return luaL_error(L, "pattern calls nested too deep (more than %d)", SCRATCH_MAX_DEPTH);
    if (!scratch_get(d))
        return luaL_error(L, "not enough memory");
    lua_settop(states[d]->S, 0);
    states[d]->limit = (size_t)-1; /* copying the arguments in cannot fail but for malloc itself */
    bridges[d] = NULL;
    return d;
}

/* Raises msg in L as the library raised it in its own state, with the
 * script's file:line in front as Lua's own functions put it (the library
 * ran called from C here, where it finds no line to name). */
static int raise_at_caller(lua_State *L) /* the message on L's top */
{
    luaL_where(L, 1);
    lua_insert(L, -2);
    lua_concat(L, 2);
    return lua_error(L);
}

/* Ends a call at depth d: copies the results to L (RUN_OK) or raises. */
static int scratch_leave(lua_State *L, int d, enum run_outcome r, const char *what, int first_result)
{
    bridges[d] = NULL;
    switch (r) {
    case RUN_OK: {
        lua_State *S = states[d]->S;
        int n = copy_results(L, S, first_result);
        lua_settop(S, 0);
        return n;
    }
    case RUN_KILLED:
        if (states[d])
            lua_settop(states[d]->S, 0);
        return script_raise_kill(L, what);
    case RUN_NOMEM:
        lua_settop(states[d]->S, 0);
        return script_raise_nomem(L);
    case RUN_CALLBACK_ERROR:
        lua_settop(states[d]->S, 0);
        return lua_error(L); /* the callback's own error, on L's top */
    default: {
        lua_State *S = states[d]->S;
        size_t len;
        const char *msg = lua_tolstring(S, -1, &len);
        lua_pushlstring(L, msg ? msg : "error in a pattern function", msg ? len : 27);
        lua_settop(S, 0);
        return raise_at_caller(L);
    }
    }
}

/* ---- string.find, match, gsub, rep ---- */

/* find and match: (s, p [, init [, plain]]) */
static int find_or_match(lua_State *L, bool find)
{
    luaL_checkstring(L, 1);
    luaL_checkstring(L, 2);
    lua_Integer init = luaL_optinteger(L, 3, 1);
    bool plain = lua_toboolean(L, 4);
    int d = scratch_enter(L, find ? "string.find" : "string.match");
    scratch *sc = states[d];
    push_arg_string(L, d, 1, true);
    push_arg_string(L, d, 2, false);
    lua_pushinteger(sc->S, init);
    int nargs = 3;
    if (find && plain) {
        lua_pushboolean(sc->S, 1);
        nargs = 4;
    }
    enum run_outcome r = run_scratch(L, d, find ? sc->find : sc->match, nargs);
    return scratch_leave(L, d, r, find ? "string.find" : "string.match", 1);
}

static int stall_find(lua_State *L) { return find_or_match(L, true); }
static int stall_match(lua_State *L) { return find_or_match(L, false); }

/* gsub's replacement, called from the scratch state, runs in the script's
 * VM under a protected call (an error in L must not unwind through S's C
 * frames): a function with the captures, or a table indexed by the first.
 * Arguments: the replacement, S (light userdata), how many captures. The
 * result is what lstrlib's add_value expects: false (keep the match), a
 * string, or anything else (an invalid replacement). */
static int bridge_call(lua_State *L)
{
    lua_State *S = lua_touserdata(L, 2);
    int n = (int)lua_tointeger(L, 3);
    lua_settop(L, 1);
    copy_results(L, S, 1);
    if (lua_type(L, 1) == LUA_TFUNCTION) {
        lua_call(L, n, 1);
    } else {
        lua_settop(L, 2);
        lua_gettable(L, 1);
    }
    if (!lua_toboolean(L, -1))
        lua_pushboolean(L, 0);
    else if (lua_type(L, -1) == LUA_TNUMBER)
        lua_tolstring(L, -1, NULL); /* to text here, where an allocation may fail safely */
    return 1;
}

static int bridge(lua_State *S)
{
    int d = depth - 1;
    bridge_ctx *b = bridges[d];
    lua_State *L = b->L;
    int n = lua_gettop(S);
    atomic_signal_fence(memory_order_seq_cst);
    stls.in_scratch = 0; /* the script's VM runs: no jumping out of it */
    atomic_signal_fence(memory_order_seq_cst);
    int top = lua_gettop(L);
    int st = LUA_ERRMEM;
    if (lua_checkstack(L, n + 4)) {
        lua_pushcfunction(L, bridge_call);
        lua_pushvalue(L, b->repl);
        lua_pushlightuserdata(L, S);
        lua_pushinteger(L, n);
        st = lua_pcall(L, 3, 1, 0);
    }
    bool killed = stls.overdue;
    const char *bad = NULL;
    size_t len = 0;
    const char *text = NULL;
    if (st != LUA_OK) {
        b->failed = true; /* its error stays on L's top for the wrapper */
        if (lua_gettop(L) == top)
            lua_pushliteral(L, "not enough memory");
    } else if (killed) {
        b->killed = true;
        lua_settop(L, top);
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        text = lua_tolstring(L, -1, &len); /* stays alive on L until it is copied */
    } else if (lua_type(L, -1) != LUA_TBOOLEAN) {
        bad = luaL_typename(L, -1);
        lua_settop(L, top);
    }
    atomic_signal_fence(memory_order_seq_cst);
    stls.in_scratch = 1;
    atomic_signal_fence(memory_order_seq_cst);
    if (st != LUA_OK || killed)
        return luaL_error(S, "the replacement failed");
    if (bad)
        return luaL_error(S, "invalid replacement value (a %s)", bad);
    if (text)
        lua_pushlstring(S, text, len); /* S may raise (its memory): L's stack is the wrapper's, dropped then */
    else
        lua_pushboolean(S, 0);
    lua_settop(L, top);
    return 1;
}

/* gsub(s, p, repl [, n]) */
static int stall_gsub(lua_State *L)
{
    luaL_checkstring(L, 1);
    luaL_checkstring(L, 2);
    int tr = lua_type(L, 3);
    luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION || tr == LUA_TTABLE, 3,
                     "string/function/table");
    bool has_n = !lua_isnoneornil(L, 4);
    lua_Integer max_n = has_n ? luaL_checkinteger(L, 4) : 0;
    int d = scratch_enter(L, "string.gsub");
    scratch *sc = states[d];
    bridge_ctx b = {L, 3, false, false};
    push_arg_string(L, d, 1, true);
    push_arg_string(L, d, 2, false);
    if (tr == LUA_TSTRING || tr == LUA_TNUMBER) {
        push_arg_string(L, d, 3, false);
    } else {
        bridges[d] = &b;
        lua_pushcfunction(sc->S, bridge);
    }
    if (has_n)
        lua_pushinteger(sc->S, max_n);
    enum run_outcome r = run_scratch(L, d, sc->gsub, has_n ? 4 : 3);
    return scratch_leave(L, d, r, "string.gsub", 1);
}

/* gmatch(s, p [, init]): the iterator keeps its place in upvalues (the
 * subject, the pattern, the next start, the end of the last match) and
 * runs each step as a find. In gmatch a leading '^' is no anchor (it
 * matches itself), so the find pattern escapes it. */
static int gmatch_step(lua_State *L)
{
    size_t len;
    lua_tolstring(L, lua_upvalueindex(1), &len);
    lua_Integer pos = lua_tointeger(L, lua_upvalueindex(3));
    lua_Integer last = lua_tointeger(L, lua_upvalueindex(4));
    for (;;) {
        if (pos > (lua_Integer)len + 1)
            return 0;
        lua_settop(L, 0);
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_pushvalue(L, lua_upvalueindex(2));
        lua_pushinteger(L, pos);
        int n = stall_find(L);
        if (n < 2 || lua_isnil(L, -n)) {
            lua_pushinteger(L, (lua_Integer)len + 2); /* exhausted */
            lua_replace(L, lua_upvalueindex(3));
            return 0;
        }
        lua_Integer st = lua_tointeger(L, -n), en = lua_tointeger(L, -n + 1);
        if (en == last && en == st - 1) { /* empty, where the last match ended: skip it */
            pos = st + 1;
            continue;
        }
        lua_pushinteger(L, en + 1);
        lua_replace(L, lua_upvalueindex(3));
        lua_pushinteger(L, en);
        lua_replace(L, lua_upvalueindex(4));
        if (n > 2)
            return n - 2; /* the captures */
        const char *s = lua_tostring(L, lua_upvalueindex(1));
        lua_pushlstring(L, s + st - 1, (size_t)(en - st + 1));
        return 1;
    }
}

static int stall_gmatch(lua_State *L)
{
    size_t len, plen;
    luaL_checklstring(L, 1, &len);
    const char *p = luaL_checklstring(L, 2, &plen);
    lua_Integer init = luaL_optinteger(L, 3, 1);
    if (init > 0)
        ;
    else if (init == 0 || init < -(lua_Integer)len)
        init = 1;
    else
        init = (lua_Integer)len + init + 1;
    if (init > (lua_Integer)len + 1)
        init = (lua_Integer)len + 1;
    lua_settop(L, 2);
    if (plen && p[0] == '^') {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addstring(&b, "%^");
        luaL_addlstring(&b, p + 1, plen - 1);
        luaL_pushresult(&b);
        lua_replace(L, 2);
    }
    lua_pushinteger(L, init);
    lua_pushinteger(L, -1);
    lua_pushcclosure(L, gmatch_step, 4);
    return 1;
}

/* rep(s, n [, sep]): natively when the result is small */
static int stall_rep(lua_State *L)
{
    size_t l, lsep = 0;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0 || (double)(l + lsep) * (double)n <= REP_NATIVE_MAX) {
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, 1);
        return 1;
    }
    int d = scratch_enter(L, "string.rep");
    scratch *sc = states[d];
    push_arg_string(L, d, 1, false);
    lua_pushinteger(sc->S, n);
    push_arg_string(L, d, 3, false);
    enum run_outcome r = run_scratch(L, d, sc->rep, 3);
    return scratch_leave(L, d, r, "string.rep", 1);
}

void script_stall_string(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_pushcfunction(L, stall_find);
    lua_setfield(L, idx, "find");
    lua_pushcfunction(L, stall_match);
    lua_setfield(L, idx, "match");
    lua_pushcfunction(L, stall_gmatch);
    lua_setfield(L, idx, "gmatch");
    lua_pushcfunction(L, stall_gsub);
    lua_setfield(L, idx, "gsub");
    lua_getfield(L, idx, "rep");
    lua_pushcclosure(L, stall_rep, 1);
    lua_setfield(L, idx, "rep");
}

/* ---- table.sort ---- */

static int checked_cmp(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, 2, 1);
    if (stls.overdue)
        return script_raise_kill(L, "table.sort");
    return 1;
}

static int checked_lt(lua_State *L)
{
    lua_pushboolean(L, lua_compare(L, 1, 2, LUA_OPLT));
    if (stls.overdue)
        return script_raise_kill(L, "table.sort");
    return 1;
}

/* sort(t [, comp]): a comparator that is C, or the built-in order on a big
 * table, is checked against the kill point after each comparison (a Lua
 * comparator meets the hook). */
static int stall_sort(lua_State *L)
{
    /* Lua's own argument checks, here where they name the script's line and
     * 'sort' (the real sort, called from C below, would name neither); no
     * value a script can make passes Lua's check but a table */
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, lua_isnone(L, 2) ? 1 : 2);
    if (!lua_isnoneornil(L, 2) && lua_type(L, 2) != LUA_TFUNCTION && lua_type(L, 1) == LUA_TTABLE &&
        luaL_len(L, 1) > 1)
        luaL_checktype(L, 2, LUA_TFUNCTION);
    if (lua_type(L, 2) == LUA_TFUNCTION && lua_iscfunction(L, 2)) {
        lua_settop(L, 2);
        lua_pushcclosure(L, checked_cmp, 1);
    } else if (lua_isnoneornil(L, 2) && lua_type(L, 1) == LUA_TTABLE && luaL_len(L, 1) > SORT_CHECKED_MIN) {
        lua_settop(L, 1);
        lua_pushcfunction(L, checked_lt);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 0);
    return 0;
}

void script_stall_table(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_getfield(L, idx, "sort");
    lua_pushcclosure(L, stall_sort, 1);
    lua_setfield(L, idx, "sort");
}

/* ---- rex_pcre2 ---- */

/* True when the leading (*...) options of a pattern set a limit. */
static bool sets_limit(const char *p, size_t n)
{
    size_t i = 0;
    while (i + 2 < n && p[i] == '(' && p[i + 1] == '*') {
        if (n - i > 8 && !strncmp(p + i + 2, "LIMIT_", 6))
            return true;
        const char *close = memchr(p + i, ')', n - i);
        if (!close)
            break;
        i = (size_t)(close - p) + 1;
    }
    return false;
}

/* new, find, match, gmatch, split: a string pattern (at upvalue 2's
 * argument) gets the limits in front; errors quote offsets in the pattern
 * the script wrote. */
static int rex_limited(lua_State *L)
{
    int arg = (int)lua_tointeger(L, lua_upvalueindex(2));
    if (lua_type(L, arg) == LUA_TSTRING) {
        size_t n;
        const char *p = lua_tolstring(L, arg, &n);
        if (sets_limit(p, n))
            return luaL_error(L, "rex_pcre2: a pattern may not set its own (*LIMIT_...): the sandbox sets them");
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addstring(&b, PCRE2_PREFIX);
        luaL_addlstring(&b, p, n);
        luaL_pushresult(&b);
        lua_replace(L, arg);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    if (lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0) == LUA_OK)
        return lua_gettop(L);
    const char *msg = lua_tostring(L, -1);
    const char *at = msg ? strstr(msg, "pattern offset: ") : NULL;
    char *end = NULL;
    long off = at ? strtol(at + 16, &end, 10) : -1;
    if (off >= (long)(sizeof PCRE2_PREFIX - 1)) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addlstring(&b, msg, (size_t)(at + 16 - msg));
        lua_pushinteger(L, off - (long)(sizeof PCRE2_PREFIX - 1));
        luaL_addvalue(&b);
        luaL_addstring(&b, end);
        luaL_pushresult(&b);
    }
    return lua_type(L, -1) == LUA_TSTRING ? raise_at_caller(L) : lua_error(L);
}

void script_stall_rex(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_newtable(L);
    static const struct {
        const char *name;
        int pattern_arg; /* 0: copied as it is */
    } offered[] = {
        {"new", 1}, {"find", 2}, {"match", 2}, {"gmatch", 2}, {"split", 2},
        {"flags", 0}, {"config", 0}, {"version", 0}, {"maketables", 0}, {"_VERSION", 0}, {NULL, 0},
    };
    for (int i = 0; offered[i].name; i++) {
        if (lua_getfield(L, idx, offered[i].name) == LUA_TNIL) {
            lua_pop(L, 1);
            continue;
        }
        if (offered[i].pattern_arg) {
            lua_pushinteger(L, offered[i].pattern_arg);
            lua_pushcclosure(L, rex_limited, 2);
        }
        lua_setfield(L, -2, offered[i].name);
    }
}
