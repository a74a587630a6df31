/* script.c — the sandboxed Lua runtime (see script.h).
 *
 * Sandbox: scripts see an allow-list (base functions without load, loadfile,
 * dofile and collectgarbage; string without dump; table, math, utf8,
 * coroutine; os.time/clock/date; require limited to the script folders,
 * cjson and ratchet). Library tables are read-only proxies, the string
 * metatable is locked, and each script's environment raises on reading or
 * writing an unknown global. */
#include "script/script.h"

#include "base/metrics.h"
#include "script/script_private.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdarg.h>
#include <lua-cjson.h>
#include <lualib.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "script/luajson.h"
#include "base/util.h"

struct script_vm {
    lua_State *L;
    uv_loop_t *loop;
    script_limits lim;
    size_t mem_used;
    uv_idle_t idle;           /* active while the run queue is not empty */
    uv_idle_t gc_idle;        /* active while a collection goes on in steps */
    int gc_cycles;            /* cycles it still has to complete */
    int handles_closed;
    script_call *runq_head, *runq_tail;
    script_call *current;     /* the invocation running now, if any */
    int base_ref;             /* the base functions every script's globals start from (never shown) */
    int libs_ref;             /* the real library tables by name, shared, never shown to a script */
    int globals_mt_ref;       /* metatable of each script's globals: unknown names raise */
    int sources_ref;          /* module texts the catalog read off the loop: path -> text */
    int null_ref;             /* JSON null (lua-cjson's null) */
    int opts_ref;             /* decoded option tables by JSON text */
    int opts_cached;
    char **dirs;
    int live;                 /* invocations not yet finished */
    uint64_t turn_deadline;   /* when the current loop turn's Lua slice ends */
    uint64_t turn_end;        /* when the last turn's Lua ended (0: the run queue was empty) */
    script_io io;             /* ratchet.llm / ratchet.http; start is NULL without an engine */
    script_call *io_waiting;  /* invocations waiting on io, linked by io_next */
    struct kind_stats {
        char kind[24];
        uint64_t calls, errors, killed, nomem;
    } kinds[8];               /* by caller kind (evaluator, policy, template, ...) */
};

struct script_call {
    script_vm *vm;
    lua_State *co;
    int co_ref;
    int nargs;                 /* values on co's stack for the next resume */
    char *caller_kind, *caller_name;
    /* an I/O call in flight (ratchet.llm / ratchet.http), then its outcome */
    void *io_handle;
    enum script_io_op io_op;
    char *io_result, *io_err_kind, *io_err;
    script_call *io_next, *io_prev;
    bool sliced;       /* the hook yielded: runnable again at once */
    bool waiting;      /* yielded by an async API: its callback resumes */
    bool sleeping;     /* in ratchet.sleep, on the io_waiting list (cancelled at shutdown too) */
    bool killed;
    bool yield_due;    /* the slice ended where it could not yield */
    bool inner_slice;  /* the hook yielded a coroutine inside the invocation to end the slice */
    bool chain_yieldable; /* the coroutine running can hand a slice's end on to the invocation's */
    bool nomem;        /* a scratch state hit the VM's memory cap */
    bool loading;      /* a script file's top level: the load budget, no waiting calls */
    bool unsliced;     /* runs to its end in one go (loads at start-up and in `ratchet check`) */
    bool no_stats;     /* not counted by kind (loads) */
    int budget_ms;
    uint64_t used_ns;
    uint64_t slice_start;
    uv_timer_t *timer; /* ratchet.sleep */
    script_done done;
    void *ud;
    script_call *next;
};

/* ---- memory ---- */

static void *vm_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    script_vm *vm = ud;
    size_t old = ptr ? osize : 0; /* for a new block, osize is a type tag */
    if (nsize == 0) {
        free(ptr);
        vm->mem_used -= old;
        return NULL;
    }
    if (nsize > old && vm->mem_used + (nsize - old) > vm->lim.memory_limit)
        return NULL; /* Lua raises "not enough memory" in the coroutine asking */
    void *p = realloc(ptr, nsize);
    if (!p)
        return NULL;
    vm->mem_used = vm->mem_used - old + nsize;
    return p;
}

/* ---- budget and slicing ---- */

static script_vm *vm_of(lua_State *L)
{
    return *(script_vm **)lua_getextraspace(L);
}

/* Lua runs without a hook: a count hook makes Lua 5.4's VM stop at every
 * instruction (its "trap"), which cost about 40 % of all script time. A
 * POSIX timer instead, one per thread that runs scripts and aimed at that
 * thread, fires when the running slice's deadline passes; its signal handler
 * sets a count hook on the Lua thread running at that moment (lua_sethook is
 * made to be called from a signal handler), and the hook decides what
 * happens: yield the slice, kill past the budget, or arm the timer again.
 * stls.running is the Lua thread executing now: each invocation's coroutine,
 * and inside it any coroutine the script resumes (the sandbox's
 * coroutine.resume, wrap and close keep it true).
 *
 * When the slice ends where the invocation cannot yield (inside a call
 * into C: a pattern match, a sort, a gsub callback, an error handler), it
 * gets scripts.max_stall_ms more, counted in this thread's CPU time (so a
 * busy machine that takes the CPU away does not kill a script); past that
 * it is killed. The handler marks it overdue: the hook kills Lua code,
 * script_stall.c's C calls check the mark or are jumped out of. */
#define DEADLINE_SIGNAL SCRIPT_DEADLINE_SIGNAL
#define POLL_EVERY 1000 /* instructions between checks while a slice is overdue */
#define RETRY_NS 200000u /* a signal that found the scratch allocator busy comes again this soon */
_Thread_local script_tls stls;

static void budget_hook(lua_State *L, lua_Debug *ar);

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* async-signal-safe */
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_deadline_signal(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)si, (void)uc;
    int saved_errno = errno;
    stls.armed = 0;
    if (stls.budget_at) {
        uint64_t now = mono_ns();
        if (stls.turn_at && now >= stls.turn_at && !stls.stall_cpu_at) {
            /* the slice is over: from here the stall is counted */
            stls.stall_cpu_at = thread_cpu_ns() + stls.stall_ns;
            if (now + stls.stall_ns < stls.kill_at)
                stls.kill_at = now + stls.stall_ns;
        }
        uint64_t cpu = stls.stall_cpu_at ? thread_cpu_ns() : 0;
        if (now >= stls.budget_at || (stls.stall_cpu_at && cpu >= stls.stall_cpu_at)) {
            stls.overdue = 1;
            if (stls.in_scratch) {
                if (!stls.in_alloc) {
                    errno = saved_errno;
                    siglongjmp(*stls.jump, 1); /* out of a scratch state's code (script_stall.c) */
                }
                script_deadline_arm(now + RETRY_NS);
            }
        } else {
            uint64_t next = stls.budget_at;
            if (stls.stall_cpu_at && now + (stls.stall_cpu_at - cpu) < next)
                next = now + (stls.stall_cpu_at - cpu);
            else if (!stls.stall_cpu_at && stls.turn_at && stls.turn_at < next)
                next = stls.turn_at;
            script_deadline_arm(next);
        }
    }
    lua_State *L = stls.running;
    if (L)
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    errno = saved_errno;
}

/* The handler is installed while any VM exists, and the signal ignored
 * after the last one is freed: this code may be a module (the busted
 * helper) that is unloaded next, and a deadline still pending would then
 * call into nothing. Ignoring it discards one already queued. */
static atomic_int live_vms;       /* in all threads (a reload probes scripts in the thread pool) */
static _Thread_local int thread_vms; /* in this one: its scratch states go with its last */
static bool handler_installed;

static void install_deadline_handler(void)
{
    struct sigaction sa = {.sa_sigaction = on_deadline_signal, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(DEADLINE_SIGNAL, &sa, NULL);
    handler_installed = true;
}

static void remove_deadline_handler(void)
{
    if (stls.have_timer) {
        timer_delete(stls.timer);
        stls.have_timer = false;
    }
    stls.armed = 0;
    if (handler_installed) {
        signal(DEADLINE_SIGNAL, SIG_IGN);
        handler_installed = false;
    }
}

/* Makes the deadline at (mono_ns) pending: the signal comes at or before it.
 * An earlier one pending already does (its hook arms the next). A deadline
 * is never disarmed: one that passes while no script runs costs a signal
 * that does nothing, which is cheaper than a timer_settime per loop turn
 * (several microseconds each on a virtual machine). Safe in the handler. */
void script_deadline_arm(uint64_t at)
{
    if (stls.armed && stls.armed_at <= at)
        return;
    if (!stls.have_timer) {
        if (!handler_installed)
            install_deadline_handler();
        struct sigevent ev = {.sigev_notify = SIGEV_THREAD_ID, .sigev_signo = DEADLINE_SIGNAL};
        ev._sigev_un._tid = (pid_t)syscall(SYS_gettid); /* glibc 2.36 names no sigev_notify_thread_id */
        if (timer_create(CLOCK_MONOTONIC, &ev, &stls.timer) != 0) {
            log_error("script", "cannot create the script deadline timer: %s", strerror(errno));
            abort(); /* without it no script could be stopped */
        }
        stls.have_timer = true;
    }
    struct itimerspec its = {.it_value = {(time_t)(at / 1000000000u), (long)(at % 1000000000u)}};
    if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
        its.it_value.tv_nsec = 1; /* zero would disarm */
    stls.armed_at = at;
    stls.armed = 1;
    timer_settime(stls.timer, TIMER_ABSTIME, &its, NULL);
}
#define deadline_arm script_deadline_arm

static int budget_ms(const script_vm *vm, const script_call *c)
{
    return c->loading ? vm->lim.load_budget_ms : c->budget_ms;
}

/* when c's budget runs out, on the monotonic clock */
static uint64_t budget_end(const script_vm *vm, const script_call *c)
{
    uint64_t budget = (uint64_t)budget_ms(vm, c) * 1000000u;
    return c->slice_start + (budget > c->used_ns ? budget - c->used_ns : 0);
}

/* the next moment c must be looked at: its budget's end, or the turn's */
static uint64_t next_deadline(const script_vm *vm, const script_call *c)
{
    uint64_t end = budget_end(vm, c);
    return c->unsliced || end < vm->turn_deadline ? end : vm->turn_deadline;
}

/* The deadline state of the thread while c runs; the previous one is
 * kept in *saved and given back by deadline_restore. */
static void deadline_enter(const script_vm *vm, const script_call *c, script_tls *saved)
{
    *saved = stls;
    stls.budget_at = budget_end(vm, c);
    stls.turn_at = c->unsliced ? 0 : vm->turn_deadline;
    stls.stall_ns = (uint64_t)vm->lim.stall_ms * 1000000u;
    stls.stall_cpu_at = 0;
    stls.kill_at = stls.budget_at;
    stls.overdue = 0;
    deadline_arm(next_deadline(vm, c));
}

static void deadline_restore(const script_tls *saved)
{
    stls.budget_at = saved->budget_at;
    stls.turn_at = saved->turn_at;
    stls.stall_ns = saved->stall_ns;
    stls.stall_cpu_at = saved->stall_cpu_at;
    stls.kill_at = saved->kill_at;
    stls.overdue = saved->overdue;
}

/* Raises the kill in L with "file:line:" of the stack level given. */
static int raise_kill(lua_State *L, script_vm *vm, script_call *c, int level, const char *what)
{
    c->killed = true;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1); /* from now on, every instruction: pcall cannot keep it */
    /* "file:line: " of the nearest Lua code from level up (a sort's
     * comparator wrapper is called by sort, which is C too) */
    lua_Debug ar;
    int lv = level;
    while (lua_getstack(L, lv, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline <= 0 && lv < level + 8)
        lv++;
    luaL_where(L, lv);
    if (mono_ns() >= budget_end(vm, c) || !stls.stall_cpu_at)
        lua_pushfstring(L, "killed: the script ran past its budget of %d ms", budget_ms(vm, c));
    else if (what)
        lua_pushfstring(L, "killed: %s ran %d ms past the script's time slice; a call that cannot pause may hold "
                           "the engine at most that long (scripts.max_stall_ms)", what, vm->lim.stall_ms);
    else
        lua_pushfstring(L, "killed: the script ran %d ms past its time slice where it could not pause (Lua called "
                           "from C: a gsub or sort function, an error handler, a metamethod) (scripts.max_stall_ms)",
                        vm->lim.stall_ms);
    lua_concat(L, 2);
    return lua_error(L);
}

int script_raise_kill(lua_State *L, const char *what)
{
    script_vm *vm = vm_of(L);
    script_call *c = vm ? vm->current : NULL;
    if (!c)
        return luaL_error(L, "killed: %s ran past its time", what ? what : "the script");
    return raise_kill(L, vm, c, 1, what);
}

int script_raise_nomem(lua_State *L)
{
    script_vm *vm = vm_of(L);
    if (vm && vm->current)
        vm->current->nomem = true;
    return luaL_error(L, "not enough memory");
}

size_t script_headroom(lua_State *L)
{
    script_vm *vm = vm_of(L);
    return vm->mem_used < vm->lim.memory_limit ? vm->lim.memory_limit - vm->mem_used : 0;
}

static void budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    script_vm *vm = vm_of(L);
    script_call *c = vm ? vm->current : NULL;
    if (!c) {
        lua_sethook(L, NULL, 0, 0);
        return;
    }
    uint64_t now = mono_ns(), end = budget_end(vm, c);
    if (c->killed || now >= end) {
        /* From now on the hook fires on every instruction, in whatever
         * coroutine runs, so no pcall can catch the kill for long. (Level
         * 0: a hook has no frame of its own, so that is the Lua code.) */
        raise_kill(L, vm, c, 0, NULL);
    }
    if (!c->unsliced && now >= vm->turn_deadline) {
        if (L == c->co && lua_isyieldable(L)) {
            lua_sethook(L, NULL, 0, 0);
            c->sliced = true;
            c->yield_due = false;
            lua_yield(L, 0);
        }
        if (L != c->co && lua_isyieldable(L) && c->chain_yieldable) {
            /* a coroutine the script resumed: yield it; its resume (the
             * sandbox's) hands the slice's end on to the invocation */
            lua_sethook(L, NULL, 0, 0);
            c->inner_slice = true;
            lua_yield(L, 0);
        }
        if (stls.overdue)
            raise_kill(L, vm, c, 0, NULL);
        /* It cannot give up the slice here: a Lua function called from C
         * (a sort's comparator, a gsub callback, an error handler). Check
         * again every POLL_EVERY instructions until it can, or until the
         * stall is over (the handler marks it overdue). */
        c->yield_due = true;
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, POLL_EVERY);
        return;
    }
    /* too early: the pending deadline was another's */
    lua_sethook(L, NULL, 0, 0);
    deadline_arm(next_deadline(vm, c));
}

/* coroutine.resume, wrap and close as the sandbox offers them: Lua's own
 * (upvalue 1) with stls.running set to the coroutine while it runs, and the
 * caller hooked on return when a kill or a slice's end is due. When the
 * hook yielded the coroutine to end the slice, this yields its caller too
 * (if it can) and resumes the coroutine when the caller is resumed, so a
 * long computation inside a script's own coroutine is sliced like any
 * other. For wrap, upvalue 2 is the coroutine.
 *
 * Stack while it runs: 1 Lua's function, 2 the coroutine (resume, close)
 * or nothing (wrap), then the arguments. */
static int tracked_co_k(lua_State *L, int status, lua_KContext ctx);

static int tracked_co_run(lua_State *L, lua_State *co, int keep)
{
    for (;;) {
        script_vm *vm = vm_of(L);
        script_call *c = vm ? vm->current : NULL;
        bool chain = c ? c->chain_yieldable : false;
        lua_State *prev = stls.running;
        /* a copy of Lua's function (and the coroutine) to resume with again */
        for (int i = 1; i <= keep; i++)
            lua_pushvalue(L, i);
        lua_rotate(L, keep + 1, keep);
        if (co)
            stls.running = co;
        if (c)
            c->chain_yieldable = chain && (L == c->co || chain) && lua_isyieldable(L);
        int st = lua_pcall(L, lua_gettop(L) - keep - 1, LUA_MULTRET, 0);
        stls.running = prev;
        c = vm ? vm->current : NULL;
        bool slice = c && c->inner_slice;
        if (c) {
            c->chain_yieldable = chain;
            c->inner_slice = false;
        }
        if (st != LUA_OK) {
            if (c && (c->killed || c->yield_due))
                lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
            return lua_error(L);
        }
        if (!slice || !c) {
            if (c && (c->killed || c->yield_due))
                lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
            return lua_gettop(L) - keep;
        }
        /* the coroutine gave up the slice: results are none (wrap) or
         * just true (resume); drop them and pass the slice's end on */
        lua_settop(L, keep);
        if (L == c->co && lua_isyieldable(L)) {
            c->sliced = true;
            c->yield_due = false;
            return lua_yieldk(L, 0, keep, tracked_co_k);
        }
        if (L != c->co && chain && lua_isyieldable(L)) {
            c->inner_slice = true;
            return lua_yieldk(L, 0, keep, tracked_co_k);
        }
        /* nobody above can yield: go on at once (the stall bound holds) */
        c->yield_due = true;
    }
}

/* resumed after passing a slice's end on: resume the coroutine again */
static int tracked_co_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    int keep = (int)ctx;
    lua_settop(L, keep);
    return tracked_co_run(L, keep == 2 ? lua_tothread(L, 2) : lua_tothread(L, lua_upvalueindex(2)), keep);
}

static int tracked_co_call(lua_State *L, lua_State *co, bool wrapped)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    return tracked_co_run(L, co, wrapped ? 1 : 2);
}

static int sandbox_co_resume(lua_State *L)
{
    return tracked_co_call(L, lua_tothread(L, 1), false);
}

static int sandbox_co_close(lua_State *L)
{
    lua_State *prev = stls.running;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    stls.running = lua_tothread(L, 2);
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    stls.running = prev;
    script_vm *vm = vm_of(L);
    script_call *c = vm ? vm->current : NULL;
    if (c && (c->killed || c->yield_due))
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
    return st == LUA_OK ? lua_gettop(L) : lua_error(L);
}

static int sandbox_co_wrapped(lua_State *L)
{
    return tracked_co_call(L, lua_tothread(L, lua_upvalueindex(2)), true);
}

static int sandbox_co_wrap(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1)); /* Lua's wrap */
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    lua_getupvalue(L, -1, 1); /* the coroutine auxwrap resumes */
    if (!lua_isthread(L, -1))
        return luaL_error(L, "coroutine.wrap: unexpected Lua build");
    lua_pushcclosure(L, sandbox_co_wrapped, 2);
    return 1;
}

/* ---- the run queue ---- */

static void call_resume(script_call *c);

/* Every invocation runs from here, one loop turn at a time, within a slice
 * of Lua time per turn however many invocations are runnable, so the loop
 * serves I/O in between. The slice is a third of the time the rest of the
 * loop took since the last one (so busy I/O keeps at least three quarters of
 * the CPU), never under SLICE_MIN_NS nor over slice_ms. Many short
 * invocations share a turn; a long one is yielded by the hook at the turn's
 * deadline and queued again. */
#define SLICE_MIN_NS 200000u
static void on_idle(uv_idle_t *h)
{
    script_vm *vm = h->data;
    uint64_t now = mono_ns(), max = (uint64_t)vm->lim.slice_ms * 1000000u;
    uint64_t slice = vm->turn_end ? (now - vm->turn_end) / 3 : max;
    vm->turn_deadline = now + (slice < SLICE_MIN_NS ? SLICE_MIN_NS : slice > max ? max : slice);
    script_call *c;
    while ((c = vm->runq_head)) {
        vm->runq_head = c->next;
        if (!vm->runq_head)
            vm->runq_tail = NULL;
        c->next = NULL;
        call_resume(c);
        if (mono_ns() >= vm->turn_deadline)
            break;
    }
    vm->turn_end = mono_ns();
    if (!vm->runq_head) {
        uv_idle_stop(h);
        vm->turn_end = 0; /* the loop may now sleep: the next turn gets a full slice */
    }
}

static void enqueue(script_call *c)
{
    script_vm *vm = c->vm;
    if (vm->runq_tail)
        vm->runq_tail->next = c;
    else
        vm->runq_head = c;
    vm->runq_tail = c;
    uv_idle_start(&vm->idle, on_idle);
}

static void call_free(script_call *c)
{
    free(c->caller_kind);
    free(c->caller_name);
    free(c->io_result);
    free(c->io_err_kind);
    free(c->io_err);
    free(c);
}

static void on_timer_closed(uv_handle_t *h)
{
    script_call *c = h->data;
    free(h);
    call_free(c);
}

/* "file:line: " of the innermost Lua function on co's stack (a dead
 * coroutine keeps its frames), or "". */
static void where_in(lua_State *co, char *out, size_t outlen)
{
    lua_Debug ar;
    out[0] = '\0';
    for (int level = 0; lua_getstack(co, level, &ar); level++)
        if (lua_getinfo(co, "Sl", &ar) && ar.currentline > 0) {
            snprintf(out, outlen, "%s:%d: ", ar.short_src, ar.currentline);
            return;
        }
}

static void call_finish(script_call *c, int st, int nres)
{
    script_vm *vm = c->vm;
    lua_State *co = c->co;
    enum script_status status = SCRIPT_OK;
    const char *msg = NULL;
    char clean[1024]; /* messages go into JSON answers and the store: UTF-8 only */
    if (st != LUA_OK) {
        size_t len = 0;
        msg = lua_tolstring(co, -1, &len);
        if (!msg)
            msg = "the script raised an error that is not a string", len = strlen(msg);
        status = c->killed ? SCRIPT_KILLED : st == LUA_ERRMEM || c->nomem ? SCRIPT_NOMEM : SCRIPT_ERROR;
        char where[300];
        if (status == SCRIPT_NOMEM) {
            /* Lua gives a memory error no position: the dead coroutine's
             * stack still shows where it was */
            where_in(co, where, sizeof where);
            snprintf(clean, sizeof clean, "%sthe script ran out of memory (scripts.memory_limit_mb)", where);
            msg = clean, len = strlen(msg);
        }
        utf8_clean(clean, sizeof clean, msg, len);
        msg = clean;
        nres = 0;
    }
    struct kind_stats *ks = NULL;
    for (size_t i = 0; i < sizeof vm->kinds / sizeof vm->kinds[0] && !ks && !c->no_stats; i++)
        if (!vm->kinds[i].kind[0] || !strcmp(vm->kinds[i].kind, c->caller_kind) ||
            i == sizeof vm->kinds / sizeof vm->kinds[0] - 1) {
            ks = &vm->kinds[i];
            if (!ks->kind[0])
                snprintf(ks->kind, sizeof ks->kind, "%s", i == sizeof vm->kinds / sizeof vm->kinds[0] - 1
                                                              ? "other" : c->caller_kind);
        }
    if (ks) {
        ks->calls++;
        ks->errors += status != SCRIPT_OK;
        ks->killed += status == SCRIPT_KILLED;
        ks->nomem += status == SCRIPT_NOMEM;
    }
    c->done(c, status, co, nres, msg, c->ud);
    lua_settop(co, 0);
    luaL_unref(vm->L, LUA_REGISTRYINDEX, c->co_ref);
    vm->live--;
    if (c->timer)
        uv_close((uv_handle_t *)c->timer, on_timer_closed); /* frees c too */
    else
        call_free(c);
}

/* Runs c until it ends, yields for a slice, or waits on an async API. */
static void call_resume(script_call *c)
{
    script_vm *vm = c->vm;
    int nargs = c->nargs;
    c->nargs = 0;
    c->sliced = false;
    c->yield_due = false;
    c->slice_start = mono_ns();
    c->chain_yieldable = true;
    script_call *outer = vm->current;
    vm->current = c;
    lua_State *prev = stls.running;
    stls.running = c->co;
    script_tls saved;
    deadline_enter(vm, c, &saved);
    int nres = 0;
    int st = lua_resume(c->co, vm->L, nargs, &nres);
    deadline_restore(&saved);
    stls.running = prev;
    vm->current = outer;
    c->used_ns += mono_ns() - c->slice_start;
    if (st == LUA_YIELD) {
        lua_pop(c->co, nres);
        if (c->sliced)
            enqueue(c);
        else if (!c->waiting) {
            lua_pushstring(c->co, "the script yielded outside an async call (use ratchet.sleep, not coroutine.yield)");
            call_finish(c, LUA_ERRRUN, 0);
        }
        return;
    }
    call_finish(c, st, nres);
}

/* ---- sandbox construction ---- */

/* Nothing a script can reach is shared with another script, except what
 * cannot change: C functions and strings. Each script file gets its own
 * globals table (the base functions, its own read-only proxies of the
 * libraries, its own `require` with its own module instances), and its
 * environment reads through it. The real library tables sit behind the
 * proxies' protected metatables, and the string metatable (whose __index is
 * the real string table) is locked, so no script reaches them: rawset on a
 * proxy or an assignment to a module changes what that script sees, and
 * nothing else. A reload builds everything afresh. */

/* __newindex of a read-only proxy */
static int proxy_newindex(lua_State *L)
{
    return luaL_error(L, "'%s' is read-only", lua_tostring(L, lua_upvalueindex(1)));
}

/* The iterator __pairs hands out: next over the table behind the proxy
 * (upvalue 1), which the script never gets hold of. */
static int proxy_next(lua_State *L)
{
    lua_settop(L, 2);
    if (lua_next(L, lua_upvalueindex(1)))
        return 2;
    lua_pushnil(L);
    return 1;
}

static int proxy_pairs(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1)); /* the iterator */
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* Replaces the table on top of the stack with a new read-only proxy for
 * it. Table-valued fields get proxies of their own (so the proxy never
 * hands out the real nested table): then the proxy reads a private copy
 * holding them. */
static void push_readonly(lua_State *L, const char *name)
{
    int real = lua_gettop(L);
    bool nested = false;
    lua_pushnil(L);
    while (lua_next(L, real)) {
        nested |= lua_type(L, -1) == LUA_TTABLE;
        lua_pop(L, 1);
    }
    if (nested) {
        lua_newtable(L); /* the copy */
        lua_pushnil(L);
        while (lua_next(L, real)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            if (lua_type(L, -1) == LUA_TTABLE) {
                char sub[64];
                snprintf(sub, sizeof sub, "%s.%s", name, lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?");
                push_readonly(L, sub);
            }
            lua_rawset(L, -4);
        }
        lua_replace(L, real);
    }
    lua_newtable(L); /* proxy */
    lua_newtable(L); /* its metatable */
    lua_pushvalue(L, real);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, name);
    lua_pushcclosure(L, proxy_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushvalue(L, real);
    lua_pushcclosure(L, proxy_next, 1);
    lua_pushcclosure(L, proxy_pairs, 1);
    lua_setfield(L, -2, "__pairs");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_replace(L, real);
}

/* A name missing from a script's globals is an error. */
static int unknown_global(lua_State *L)
{
    return luaL_error(L, "unknown global '%s' (declare it local)", lua_tostring(L, 2));
}

static int env_newindex(lua_State *L)
{
    return luaL_error(L, "assignment to undeclared global '%s' (declare it local)", lua_tostring(L, 2));
}

/* Pushes a fresh environment table reading through the globals at g. */
static void push_env(lua_State *L, int g)
{
    g = lua_absindex(L, g);
    lua_newtable(L);
    lua_newtable(L);
    lua_pushvalue(L, g);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, env_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
}

static int sandbox_require(lua_State *L);

/* Pushes a new globals table for one script file: the base functions, its
 * own proxies of the libraries and of ratchet, and its own require (whose
 * upvalues are its module cache and these globals). */
static void push_script_globals(script_vm *vm)
{
    lua_State *L = vm->L;
    lua_createtable(L, 0, 32);
    int g = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->base_ref);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, g);
    }
    lua_pop(L, 1);
    static const char *const libs[] = {"string", "table", "math", "utf8", "coroutine", "os", "ratchet", NULL};
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->libs_ref);
    for (const char *const *n = libs; *n; n++) {
        lua_getfield(L, -1, *n);
        push_readonly(L, *n);
        lua_setfield(L, g, *n);
    }
    lua_pop(L, 1);
    lua_newtable(L); /* this script's modules */
    lua_pushvalue(L, g);
    lua_pushcclosure(L, sandbox_require, 2);
    lua_setfield(L, g, "require");
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->globals_mt_ref);
    lua_setmetatable(L, g);
}

/* after a module's top level ran (its value on top, its name at 1):
 * caches it (nothing returned counts as true) */
static int require_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status, (void)ctx;
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, lua_upvalueindex(1), lua_tostring(L, 1));
    return 1;
}

/* Loads a module's text (or, with text NULL, its file) in a fresh
 * environment over the globals g and calls it, yieldably (a long top level
 * is sliced like any script); then caches its value. Stack: 1 the module's
 * name, 2 its path. */
static int load_module(lua_State *L, int g, const char *text, size_t len)
{
    lua_settop(L, 2);
    lua_pushfstring(L, "@%s", lua_tostring(L, 2));
    int st = text ? luaL_loadbufferx(L, text, len, lua_tostring(L, 3), "t") : luaL_loadfilex(L, lua_tostring(L, 2), "t");
    if (st != LUA_OK)
        return lua_error(L);
    push_env(L, g);
    lua_setupvalue(L, -2, 1);
    lua_callk(L, 0, 1, 0, require_done);
    return require_done(L, LUA_OK, 0);
}

/* require(name): ratchet, cjson, rex_pcre2, or a module file in the script
 * folders; each loaded once per script file (upvalue 1 caches them). */
static int sandbox_require(lua_State *L)
{
    script_vm *vm = vm_of(L);
    const char *name = luaL_checkstring(L, 1);
    lua_settop(L, 1);
    if (lua_getfield(L, lua_upvalueindex(1), name) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    if (!strcmp(name, "ratchet")) {
        lua_getfield(L, lua_upvalueindex(2), "ratchet");
        return 1;
    }
    if (!strcmp(name, "cjson") || !strcmp(name, "rex_pcre2")) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, vm->libs_ref);
        if (lua_getfield(L, -1, name) == LUA_TNIL)
            return luaL_error(L, "require: '%s' is not installed here", name);
        if (!strcmp(name, "cjson")) { /* an instance of its own: cjson's settings are per instance */
            lua_getfield(L, -1, "new");
            lua_call(L, 0, 1);
        } else {
            lua_newtable(L); /* a copy, so the proxy below is over nothing shared */
            lua_pushnil(L);
            while (lua_next(L, -3)) {
                lua_pushvalue(L, -2);
                lua_insert(L, -2);
                lua_rawset(L, -4);
            }
        }
        push_readonly(L, name);
        lua_pushvalue(L, -1);
        lua_setfield(L, lua_upvalueindex(1), name);
        return 1;
    }
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              *p == '.'))
            return luaL_error(L, "require: '%s' is not a module name (letters, digits, _ and .)", name);
    if (strstr(name, "..") || name[0] == '.')
        return luaL_error(L, "require: '%s' is not a module name", name);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->sources_ref);
    int sources = lua_gettop(L);
    for (char **d = vm->dirs; d && *d; d++) {
        buf_t path;
        buf_init(&path);
        buf_printf(&path, "%s/", *d);
        for (const char *p = name; *p; p++)
            buf_append(&path, *p == '.' ? "/" : p, 1);
        buf_puts(&path, ".lua");
        /* the text the catalog read in the thread pool; else the disk
         * (the busted module and tests, which have no catalog) */
        size_t len = 0;
        const char *text = NULL;
        bool found = false;
        if (lua_getfield(L, sources, path.data) == LUA_TSTRING) {
            text = lua_tolstring(L, -1, &len);
            found = true;
        } else {
            FILE *f = fopen(path.data, "r");
            if (f) {
                fclose(f);
                found = true;
            }
        }
        if (found) {
            /* text stays referenced from the sources table (in the registry) */
            lua_settop(L, 1);
            lua_pushstring(L, path.data);
            buf_free(&path);
            return load_module(L, lua_upvalueindex(2), text, len);
        }
        lua_pop(L, 1);
        buf_free(&path);
    }
    return luaL_error(L, "require: no module '%s' in the script folders", name);
}

/* xpcall(f, msgh, ...) as the sandbox offers it: Lua's own (upvalue 1) with
 * the handler wrapped. A kill is raised from the deadline hook, and Lua
 * calls the message handler right there, inside the hook, where hooks are
 * off: a handler that never returned then ran forever. Once the invocation
 * is killed the wrapper hands the message on without calling the script's
 * handler. */
static int guarded_msgh(lua_State *L)
{
    script_vm *vm = vm_of(L);
    if (vm && vm->current && vm->current->killed) {
        lua_settop(L, 1);
        return 1;
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int xpcall_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status, (void)ctx;
    return lua_gettop(L);
}

static int sandbox_xpcall(lua_State *L)
{
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, guarded_msgh, 1);
    lua_replace(L, 2);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, xpcall_done); /* yieldable, as Lua's is */
    return lua_gettop(L);
}

/* setmetatable without __gc: a finalizer runs inside the collector with
 * hooks off, where no deadline can stop it. */
static int sandbox_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "setmetatable: __gc metamethods are not allowed in scripts");
        lua_pop(L, 1);
    }
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

/* ---- the ratchet module ---- */

/* The error rule of the ratchet API (docs/lua-api.md): a programming error
 * (a missing or wrong argument, a bad field, a call from the wrong place)
 * raises, quoting the usage, with the caller's file:line; a runtime failure
 * returns nil, message, code. */
static int usage_error(lua_State *L, const char *usage, const char *fmt, ...)
{
    luaL_where(L, 1);
    lua_pushfstring(L, "%s: ", usage);
    va_list ap;
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_concat(L, 3);
    return lua_error(L);
}

/* pushes nil, message, code: a runtime failure */
static int runtime_failure(lua_State *L, const char *message, const char *code)
{
    lua_pushnil(L);
    lua_pushstring(L, message);
    lua_pushstring(L, code);
    return 3;
}

static int api_log(lua_State *L, enum log_level level, const char *usage)
{
    if (lua_isnone(L, 1))
        return usage_error(L, usage, "the message is missing");
    lua_Debug ar;
    char where[160] = "script";
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar))
        snprintf(where, sizeof where, "%s:%d", ar.short_src, ar.currentline);
    log_msg(level, "script", "%s: %s", where, luaL_tolstring(L, 1, NULL));
    return 0;
}

static int api_log_debug(lua_State *L) { return api_log(L, LOG_DEBUG, "ratchet.log.debug(message)"); }
static int api_log_info(lua_State *L) { return api_log(L, LOG_INFO, "ratchet.log.info(message)"); }
static int api_log_warn(lua_State *L) { return api_log(L, LOG_WARN, "ratchet.log.warn(message)"); }
static int api_log_error(lua_State *L) { return api_log(L, LOG_ERROR, "ratchet.log.error(message)"); }

static int api_time(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)now_ms());
    return 1;
}

static int api_id(lua_State *L)
{
    char id[37];
    id_uuid7(id);
    lua_pushstring(L, id);
    return 1;
}

static void io_link(script_call *c)
{
    script_vm *vm = c->vm;
    c->io_next = vm->io_waiting;
    c->io_prev = NULL;
    if (vm->io_waiting)
        vm->io_waiting->io_prev = c;
    vm->io_waiting = c;
}

static void io_unlink(script_call *c);

static void on_sleep_done(uv_timer_t *t)
{
    script_call *c = t->data;
    io_unlink(c);
    c->sleeping = false;
    c->waiting = false;
    enqueue(c);
}

/* true after the whole sleep; nil, "the engine is stopping", "cancelled"
 * when a stop cut it short */
static int sleep_continue(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    script_call *c = vm_of(L)->current;
    char *kind = c->io_err_kind, *err = c->io_err;
    c->io_err_kind = c->io_err = NULL;
    int n = 1;
    if (err)
        n = runtime_failure(L, err, kind ? kind : "cancelled");
    else
        lua_pushboolean(L, 1);
    free(kind);
    free(err);
    return n;
}

/* The check every waiting call makes: only an invocation's own coroutine
 * can wait. */
static script_call *waiting_call(lua_State *L, const char *usage)
{
    script_call *c = vm_of(L)->current;
    if (!c || c->loading || L != c->co || !lua_isyieldable(L))
        usage_error(L, usage, "only an invocation's own coroutine can wait (not at load time, not inside "
                              "coroutine.wrap or a C callback)");
    return c;
}

/* ratchet.sleep(ms): yields the invocation; the loop resumes it later. */
static int api_sleep(lua_State *L)
{
    static const char usage[] = "ratchet.sleep(ms)";
    int isint = 0;
    lua_Integer ms = lua_tointegerx(L, 1, &isint);
    if (!isint)
        return usage_error(L, usage, "ms must be an integer number of milliseconds (got %s)", luaL_typename(L, 1));
    if (ms < 0 || ms > 3600000)
        return usage_error(L, usage, "ms must be from 0 to 3600000 (got %I)", ms);
    script_call *c = waiting_call(L, usage);
    if (!c->timer) {
        c->timer = xmalloc(sizeof *c->timer);
        uv_timer_init(c->vm->loop, c->timer);
        c->timer->data = c;
    }
    c->waiting = true;
    c->sleeping = true;
    io_link(c);
    uv_timer_start(c->timer, on_sleep_done, (uint64_t)ms, 0);
    return lua_yieldk(L, 0, 0, sleep_continue);
}

/* ---- ratchet.llm.chat / ratchet.http.request ---- */

void script_vm_set_io(script_vm *vm, const script_io *io)
{
    vm->io = *io;
}

static void io_unlink(script_call *c)
{
    script_vm *vm = c->vm;
    if (c->io_prev)
        c->io_prev->io_next = c->io_next;
    else
        vm->io_waiting = c->io_next;
    if (c->io_next)
        c->io_next->io_prev = c->io_prev;
    c->io_next = c->io_prev = NULL;
}

/* The outcome is kept in C and pushed by the continuation, inside the
 * coroutine's protected resume (a memory error there is the script's). */
static void on_io_done(void *ud, const char *result, const char *err_kind, const char *err)
{
    script_call *c = ud;
    c->io_handle = NULL;
    io_unlink(c);
    c->io_result = result ? xstrdup(result) : NULL;
    c->io_err_kind = err_kind ? xstrdup(err_kind) : NULL;
    c->io_err = err ? xstrdup(err) : NULL;
    c->waiting = false;
    enqueue(c);
}

void script_vm_cancel_io(script_vm *vm)
{
    while (vm->io_waiting) {
        script_call *c = vm->io_waiting;
        if (c->sleeping) {
            uv_timer_stop(c->timer);
            c->sleeping = false;
        } else if (vm->io.cancel) {
            vm->io.cancel(vm->io.ctx, c->io_op, c->io_handle);
        }
        on_io_done(c, NULL, "cancelled", "the engine is stopping");
    }
}

static int io_continue(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    script_call *c = vm_of(L)->current;
    char *result = c->io_result, *kind = c->io_err_kind, *err = c->io_err;
    c->io_result = c->io_err_kind = c->io_err = NULL;
    int n;
    if (result) {
        bool ok = script_push_json(L, result, strlen(result));
        n = ok ? 1 : 0;
        if (!ok)
            n = runtime_failure(L, "the engine returned a result that is not JSON", "internal");
    } else {
        n = runtime_failure(L, err ? err : "failed", kind ? kind : "error");
    }
    free(result);
    free(kind);
    free(err);
    return n;
}

/* Encodes the request table, checks its shape, starts the I/O and yields
 * until it ends. */
static int io_call(lua_State *L, enum script_io_op op, const char *usage)
{
    if (!lua_istable(L, 1))
        return usage_error(L, usage, "the request must be a table (got %s)", luaL_typename(L, 1));
    lua_settop(L, 1);
    script_vm *vm = vm_of(L);
    script_call *c = waiting_call(L, usage);
    char err[400];
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->null_ref);
    if (luajson_encode(L, 1, 2, err, sizeof err) != 0)
        return usage_error(L, usage, "the request cannot be sent as JSON: %s", err);
    const char *req = lua_tostring(L, -1);
    if (vm->io.check && vm->io.check(vm->io.ctx, op, req, err, sizeof err) != 0)
        return usage_error(L, usage, "%s", err);
    if (!vm->io.start)
        return runtime_failure(L, lua_pushfstring(L, "%s is not available here (no engine)", usage), "unavailable");
    c->io_op = op;
    c->io_handle = vm->io.start(vm->io.ctx, op, req, c->caller_kind, c->caller_name, on_io_done, c);
    lua_settop(L, 0);
    c->waiting = true;
    io_link(c);
    return lua_yieldk(L, 0, 0, io_continue);
}

/* ratchet.llm.chat{...} -> result, or nil, message, kind */
static int api_llm_chat(lua_State *L)
{
    return io_call(L, SCRIPT_IO_LLM, "ratchet.llm.chat{...}");
}

/* ratchet.http.request{...} -> {status, body, headers}, or nil, message, kind */
static int api_http_request(lua_State *L)
{
    return io_call(L, SCRIPT_IO_HTTP, "ratchet.http.request{...}");
}

/* json.decode(text) -> value, or nil, message, "bad_json": text from
 * outside that is not JSON is a runtime failure, not a crash of the script. */
static int api_json_decode(lua_State *L)
{
    int t = lua_type(L, 1);
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
        return usage_error(L, "ratchet.json.decode(text)", "text must be a string (got %s)", luaL_typename(L, 1));
    size_t len;
    const char *text = lua_tolstring(L, 1, &len);
    char err[300];
    if (luajson_decode(L, text, len, lua_upvalueindex(1), err, sizeof err) != 0)
        return runtime_failure(L, lua_pushfstring(L, "not valid JSON: %s", err), "bad_json");
    return 1;
}

/* json.encode(value) -> text; raises on a value JSON cannot hold (the
 * script built it: a programming error). */
static int api_json_encode(lua_State *L)
{
    static const char usage[] = "ratchet.json.encode(value)";
    if (lua_isnone(L, 1))
        return usage_error(L, usage, "the value is missing");
    char err[300];
    if (luajson_encode(L, 1, lua_upvalueindex(1), err, sizeof err) != 0)
        return usage_error(L, usage, "%s", err);
    return 1;
}

/* json.is_array(v) -> true for a decoded JSON array (or one marked so);
 * upvalue 1 is the array metatable (no registry lookup per call) */
static int api_json_is_array(lua_State *L)
{
    bool arr = false;
    if (lua_istable(L, 1) && lua_getmetatable(L, 1))
        arr = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pushboolean(L, arr);
    return 1;
}

/* json.array([t]) -> t, marked as an array (so {} encodes as []) */
static int api_json_array(lua_State *L)
{
    static const char usage[] = "ratchet.json.array([t])";
    if (lua_isnoneornil(L, 1))
        lua_newtable(L);
    if (!lua_istable(L, 1))
        return usage_error(L, usage, "t must be a table (got %s)", luaL_typename(L, 1));
    lua_settop(L, 1);
    if (lua_getmetatable(L, 1)) {
        luajson_push_array_mt(L);
        if (!lua_rawequal(L, -1, -2))
            return usage_error(L, usage, "t already has a metatable");
        lua_settop(L, 1);
        return 1;
    }
    luajson_push_array_mt(L);
    lua_setmetatable(L, 1);
    return 1;
}

/* The real ratchet table (each script gets read-only proxies of it). */
static void push_ratchet_module(lua_State *L)
{
    lua_newtable(L);
    static const luaL_Reg log_fns[] = {
        {"debug", api_log_debug}, {"info", api_log_info}, {"warn", api_log_warn}, {"error", api_log_error},
        {NULL, NULL},
    };
    luaL_newlib(L, log_fns);
    lua_setfield(L, -2, "log");
    lua_pushcfunction(L, api_time);
    lua_setfield(L, -2, "time");
    lua_pushcfunction(L, api_id);
    lua_setfield(L, -2, "id");
    lua_pushcfunction(L, api_sleep);
    lua_setfield(L, -2, "sleep");
    lua_newtable(L);
    lua_pushcfunction(L, api_llm_chat);
    lua_setfield(L, -2, "chat");
    lua_setfield(L, -2, "llm");
    lua_newtable(L);
    lua_pushcfunction(L, api_http_request);
    lua_setfield(L, -2, "request");
    lua_setfield(L, -2, "http");

    /* json: yajl through luajson.c (arrays stay arrays); null is
     * lua-cjson's, so values from either library agree */
    lua_newtable(L);
    luaL_requiref(L, "cjson", luaopen_cjson, 0);
    lua_getfield(L, -1, "null");
    lua_setfield(L, -3, "null");
    lua_getfield(L, -1, "null");
    lua_pushcclosure(L, api_json_decode, 1);
    lua_setfield(L, -3, "decode");
    lua_getfield(L, -1, "null");
    lua_pushcclosure(L, api_json_encode, 1);
    lua_setfield(L, -3, "encode");
    lua_pop(L, 1);
    luajson_push_array_mt(L);
    lua_pushcclosure(L, api_json_is_array, 1);
    lua_setfield(L, -2, "is_array");
    lua_pushcfunction(L, api_json_array);
    lua_setfield(L, -2, "array");
    lua_setfield(L, -2, "json");
}

/* ---- VM ---- */

void script_limits_default(script_limits *lim)
{
    lim->memory_limit = 64u << 20;
    lim->budget_ms = 100;
    lim->load_budget_ms = 1000;
    lim->slice_ms = 2;
    lim->stall_ms = 10;
}

static void copy_field(lua_State *L, int from, int to, const char *name)
{
    from = lua_absindex(L, from);
    to = lua_absindex(L, to);
    lua_getfield(L, from, name);
    lua_setfield(L, to, name);
}

/* t[name] = fn with the old t[name] as its upvalue (t on top of the stack) */
static void wrap_field(lua_State *L, const char *name, lua_CFunction fn)
{
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
}

/* Locks the metatable of the userdata on top of the stack (popped), so
 * getmetatable hands scripts false instead of a table they could alter for
 * every script at once. */
static void lock_userdata_metatable(lua_State *L)
{
    if (lua_getmetatable(L, -1)) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Builds what each script's globals are made from, once per VM: the base
 * functions (registry ref base_ref) and the real library tables (libs_ref),
 * neither ever shown to a script. */
static void build_base(script_vm *vm)
{
    lua_State *L = vm->L;
    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base},        {LUA_STRLIBNAME, luaopen_string}, {LUA_TABLIBNAME, luaopen_table},
        {LUA_MATHLIBNAME, luaopen_math},  {LUA_UTF8LIBNAME, luaopen_utf8},  {LUA_COLIBNAME, luaopen_coroutine},
        {LUA_OSLIBNAME, luaopen_os},      {NULL, NULL},
    };
    for (const luaL_Reg *l = libs; l->func; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    /* no bytecode out of the sandbox, and strings' methods stay put; the
     * calls that could hold the loop become stoppable (script_stall.c) */
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    script_stall_string(L, -1);
    lua_pop(L, 1);
    lua_getglobal(L, "table");
    script_stall_table(L, -1);
    lua_pop(L, 1);
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);

    lua_newtable(L);
    int base = lua_gettop(L);
    lua_pushglobaltable(L);
    int g = lua_gettop(L);
    static const char *const base_fns[] = {"assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal",
                                           "rawlen", "rawget", "rawset", "select", "getmetatable", "tonumber",
                                           "tostring", "type", "_VERSION", NULL};
    for (const char *const *f = base_fns; *f; f++)
        copy_field(L, g, base, *f);
    lua_getfield(L, g, "xpcall");
    lua_pushcclosure(L, sandbox_xpcall, 1);
    lua_setfield(L, base, "xpcall");
    lua_getfield(L, g, "setmetatable");
    lua_pushcclosure(L, sandbox_setmetatable, 1);
    lua_setfield(L, base, "setmetatable");
    lua_getfield(L, g, "coroutine"); /* scripts' coroutines run with stls.running kept true */
    wrap_field(L, "resume", sandbox_co_resume);
    wrap_field(L, "close", sandbox_co_close);
    wrap_field(L, "wrap", sandbox_co_wrap);
    lua_pop(L, 1);

    lua_newtable(L); /* the real libraries */
    int real = lua_gettop(L);
    static const char *const lib_names[] = {"string", "table", "math", "utf8", "coroutine", NULL};
    for (const char *const *n = lib_names; *n; n++)
        copy_field(L, g, real, *n);
    lua_newtable(L); /* os: time, clock, date only */
    lua_getfield(L, g, "os");
    copy_field(L, -1, -2, "time");
    copy_field(L, -1, -2, "clock");
    copy_field(L, -1, -2, "date");
    lua_pop(L, 1);
    lua_setfield(L, real, "os");
    push_ratchet_module(L);
    lua_setfield(L, real, "ratchet");
    luaL_requiref(L, "cjson", luaopen_cjson, 0);
    lua_getfield(L, -1, "null");
    vm->null_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_setfield(L, real, "cjson"); /* each script gets cjson.new() of it */
    /* PCRE2 regular expressions (Debian's lua-rex-pcre2), loaded by the C
     * side through the package library, which scripts never see */
    luaL_requiref(L, LUA_LOADLIBNAME, luaopen_package, 1);
    lua_pop(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "rex_pcre2");
    if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
        /* compiled expressions share one metatable: lock it */
        lua_getfield(L, -1, "new");
        lua_pushliteral(L, "x");
        if (lua_pcall(L, 1, 1, 0) == LUA_OK)
            lock_userdata_metatable(L);
        else
            lua_pop(L, 1);
        script_stall_rex(L, -1);
        lua_setfield(L, real, "rex_pcre2");
        lua_pop(L, 1);
    } else {
        log_warn("script", "PCRE2 regular expressions are unavailable (install lua-rex-pcre2): %s",
                 lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    vm->libs_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* pops real */
    lua_pop(L, 1); /* the real globals */
    vm->base_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* pops base */

    lua_newtable(L); /* each script's globals: reading a name they lack is an error */
    lua_pushcfunction(L, unknown_global);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    vm->globals_mt_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    vm->sources_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    vm->opts_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

script_vm *script_vm_new(uv_loop_t *loop, const script_limits *lim, const char *const *dirs)
{
    script_vm *vm = xcalloc(1, sizeof *vm);
    vm->loop = loop;
    vm->lim = *lim;
    size_t n = 0;
    while (dirs && dirs[n])
        n++;
    vm->dirs = xcalloc(n + 1, sizeof *vm->dirs);
    for (size_t i = 0; i < n; i++)
        vm->dirs[i] = xstrdup(dirs[i]);
    /* building the sandbox is not the scripts' memory: no cap until it is done */
    size_t cap = vm->lim.memory_limit;
    vm->lim.memory_limit = (size_t)-1;
    vm->L = lua_newstate(vm_alloc, vm);
    *(script_vm **)lua_getextraspace(vm->L) = vm; /* copied into every new thread */
    build_base(vm);
    live_vms++;
    thread_vms++;
    vm->lim.memory_limit = vm->mem_used + cap;
    uv_idle_init(loop, &vm->idle);
    vm->idle.data = vm;
    uv_idle_init(loop, &vm->gc_idle);
    vm->gc_idle.data = vm;
    return vm;
}

static void on_idle_closed(uv_handle_t *h)
{
    script_vm *vm = h->data;
    if (++vm->handles_closed < 2)
        return;
    for (char **d = vm->dirs; *d; d++)
        free(*d);
    free(vm->dirs);
    free(vm);
}

void script_vm_free(script_vm *vm)
{
    lua_close(vm->L);
    if (--thread_vms == 0)
        script_stall_free();
    if (--live_vms == 0)
        remove_deadline_handler();
    uv_close((uv_handle_t *)&vm->idle, on_idle_closed);
    uv_close((uv_handle_t *)&vm->gc_idle, on_idle_closed);
}

uint64_t script_call_lua_ns(const script_call *call)
{
    return call->used_ns;
}

int script_vm_busy(script_vm *vm)
{
    return vm->live;
}

lua_State *script_vm_state(script_vm *vm)
{
    return vm->L;
}

size_t script_vm_memory(script_vm *vm)
{
    return vm->mem_used;
}

void script_vm_metrics(script_vm *vm, buf_t *b)
{
    static const metrics_counter counters[] = {
        {"ratchet_script_invocations_total", "Script invocations, by who called (evaluator, policy, template, ...).",
         offsetof(struct kind_stats, calls)},
        {"ratchet_script_invocation_errors_total", "Invocations that raised an error or were stopped.",
         offsetof(struct kind_stats, errors)},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
        metrics_family(b, counters[i].name, "counter", counters[i].help);
        for (size_t k = 0; k < sizeof vm->kinds / sizeof vm->kinds[0] && vm->kinds[k].kind[0]; k++)
            metrics_sample(b, counters[i].name,
                           metrics_field(&vm->kinds[k], counters[i].off), "kind",
                           vm->kinds[k].kind, NULL);
    }
    metrics_family(b, "ratchet_script_killed_total", "counter",
                   "Invocations killed for exceeding their time budget or the memory cap.");
    for (size_t k = 0; k < sizeof vm->kinds / sizeof vm->kinds[0] && vm->kinds[k].kind[0]; k++) {
        metrics_sample(b, "ratchet_script_killed_total", (double)vm->kinds[k].killed, "kind", vm->kinds[k].kind,
                       "reason", "time", NULL);
        metrics_sample(b, "ratchet_script_killed_total", (double)vm->kinds[k].nomem, "kind", vm->kinds[k].kind,
                       "reason", "memory", NULL);
    }
    metrics_one(b, "ratchet_script_memory_bytes", "gauge",
                "Memory the Lua VM holds (all scripts together).", (double)vm->mem_used);
    metrics_one(b, "ratchet_script_memory_limit_bytes", "gauge",
                "The VM's memory cap (scripts.memory_limit_mb).", (double)vm->lim.memory_limit);
}

void script_unref(script_vm *vm, int ref)
{
    luaL_unref(vm->L, LUA_REGISTRYINDEX, ref);
}

/* Reads a script's text (bounded: 1 MiB). Returns 0, or -1 with err. */
int script_read_text(const char *path, buf_t *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        return -1;
    }
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        buf_append(out, chunk, n);
        if (out->len > (1u << 20)) {
            fclose(f);
            snprintf(err, errlen, "%s: larger than 1 MiB, not a script", path);
            return -1;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "%s: cannot read", path);
        return -1;
    }
    return 0;
}

int script_compile_text(script_vm *vm, const char *path, const char *text, size_t len, char *err, size_t errlen)
{
    lua_State *L = vm->L;
    lua_pushfstring(L, "@%s", path);
    int rc = 0;
    if (luaL_loadbufferx(L, text, len, lua_tostring(L, -1), "t") != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        rc = -1;
    }
    lua_pop(L, 2);
    return rc;
}

void script_forget_modules(script_vm *vm)
{
    lua_newtable(vm->L);
    lua_rawseti(vm->L, LUA_REGISTRYINDEX, vm->sources_ref);
}

void script_set_source(script_vm *vm, const char *path, const char *text, size_t len)
{
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->sources_ref);
    lua_pushlstring(L, text, len);
    lua_setfield(L, -2, path);
    lua_pop(L, 1);
}

/* A full collection in steps of at most GC_TURN_NS per loop turn: one of
 * a 60 MB heap in one go held the loop for a hundred milliseconds. Two
 * cycles complete, so what became garbage during one in progress goes too. */
#define GC_TURN_NS 1000000u
static void on_gc_idle(uv_idle_t *h)
{
    script_vm *vm = h->data;
    uint64_t t0 = mono_ns();
    do {
        if (lua_gc(vm->L, LUA_GCSTEP, 0) && --vm->gc_cycles <= 0) {
            uv_idle_stop(h);
            return;
        }
    } while (mono_ns() - t0 < GC_TURN_NS);
}

void script_collect(script_vm *vm)
{
    vm->gc_cycles = 2;
    uv_idle_start(&vm->gc_idle, on_gc_idle);
}

int script_load_file(script_vm *vm, const char *path, int *ref, char version[17], char *err, size_t errlen)
{
    buf_t text;
    buf_init(&text);
    int rc = script_read_text(path, &text, err, errlen);
    if (rc == 0)
        rc = script_load_text(vm, path, text.data ? text.data : "", text.len, ref, version, err, errlen);
    buf_free(&text);
    return rc;
}

typedef struct {
    char *err;
    size_t errlen;
    enum script_status status;
} sync_ctx;

static void on_sync_done(script_call *call, enum script_status status, lua_State *co, int nres, const char *message,
                         void *ud)
{
    (void)call;
    (void)co;
    (void)nres;
    sync_ctx *sc = ud;
    sc->status = status;
    if (status != SCRIPT_OK)
        snprintf(sc->err, sc->errlen, "%s", message ? message : "error");
}

int script_call_sync(script_vm *vm, int ref, const char *fn, const char *arg_json, char *err, size_t errlen)
{
    lua_State *L = vm->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushstring(L, fn);
    bool callable = lua_istable(L, -2) && lua_rawget(L, -2) == LUA_TFUNCTION;
    lua_settop(L, top);
    if (!callable) {
        snprintf(err, errlen, "the script has no function '%s'", fn);
        return -1;
    }
    /* an invocation run to its end now, under the load budget, as a load is */
    sync_ctx sc = {err, errlen, SCRIPT_OK};
    script_call *c = xcalloc(1, sizeof *c);
    c->vm = vm;
    c->loading = true;
    c->unsliced = true;
    c->no_stats = true;
    c->budget_ms = vm->lim.load_budget_ms;
    c->caller_kind = xstrdup("check");
    c->caller_name = xstrdup(fn);
    c->done = on_sync_done;
    c->ud = &sc;
    c->co = lua_newthread(L);
    c->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    vm->live++;
    lua_rawgeti(c->co, LUA_REGISTRYINDEX, ref);
    lua_getfield(c->co, -1, fn);
    lua_remove(c->co, -2);
    if (!script_push_json(c->co, arg_json, strlen(arg_json)))
        lua_pushnil(c->co);
    c->nargs = 1;
    call_resume(c); /* finishes it: nothing it may do waits */
    return sc.status == SCRIPT_OK ? 0 : -1;
}

static void text_version(const char *text, size_t len, char version[17])
{
    if (!version)
        return;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    EVP_Digest(text, len, md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 8; i++)
        snprintf(version + 2 * i, 3, "%02x", md[i]);
}

/* A load: a script file's top level, run as an invocation of its own (so
 * its frames outlive an error: a memory error gets its file:line too). */
typedef struct {
    script_loaded cb;
    void *ud;
    char *path;
    int ref;
    char err[1024];
} load_ctx;

static void on_load_done(script_call *call, enum script_status status, lua_State *co, int nres, const char *message,
                         void *ud)
{
    (void)call;
    load_ctx *lc = ud;
    lc->ref = LUA_NOREF;
    if (status != SCRIPT_OK)
        snprintf(lc->err, sizeof lc->err, "%s", message);
    else if (nres < 1 || !lua_istable(co, -nres))
        snprintf(lc->err, sizeof lc->err, "%s: the script must return a table (it returned %s)", lc->path,
                 nres < 1 ? "nothing" : luaL_typename(co, -nres));
    else {
        lua_pushvalue(co, -nres);
        lc->ref = luaL_ref(co, LUA_REGISTRYINDEX);
    }
    if (lc->cb) {
        lc->cb(lc->ud, lc->ref, lc->ref == LUA_NOREF ? lc->err : NULL);
        free(lc->path);
        free(lc);
    }
}

/* Compiles the text into a new invocation (not started); NULL with the
 * message in lc->err for a syntax error. */
static script_call *load_call(script_vm *vm, const char *path, const char *text, size_t len, load_ctx *lc)
{
    lua_State *L = vm->L;
    script_call *c = xcalloc(1, sizeof *c);
    c->vm = vm;
    c->loading = true;
    c->no_stats = true;
    c->budget_ms = vm->lim.load_budget_ms;
    c->caller_kind = xstrdup("load");
    c->caller_name = xstrdup(path);
    c->done = on_load_done;
    c->ud = lc;
    c->co = lua_newthread(L);
    c->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushfstring(c->co, "@%s", path);
    int st = luaL_loadbufferx(c->co, text, len, lua_tostring(c->co, -1), "t");
    if (st != LUA_OK) {
        const char *msg = lua_tostring(c->co, -1);
        utf8_clean(lc->err, sizeof lc->err, msg ? msg : "cannot compile", strlen(msg ? msg : "cannot compile"));
        luaL_unref(L, LUA_REGISTRYINDEX, c->co_ref);
        call_free(c);
        return NULL;
    }
    lua_remove(c->co, -2); /* the chunk name */
    push_script_globals(vm);
    push_env(L, -1);
    lua_remove(L, -2);
    lua_xmove(L, c->co, 1);
    lua_setupvalue(c->co, -2, 1);
    vm->live++;
    return c;
}

int script_load_text(script_vm *vm, const char *path, const char *text, size_t len, int *ref, char version[17],
                     char *err, size_t errlen)
{
    text_version(text, len, version);
    load_ctx lc = {.path = (char *)path, .ref = LUA_NOREF};
    script_call *c = load_call(vm, path, text, len, &lc);
    if (c) {
        c->unsliced = true; /* to its end now: under the load budget, with no slices */
        call_resume(c);     /* finishes it: nothing a load can do waits */
    }
    if (lc.ref == LUA_NOREF) {
        utf8_clean(err, errlen, lc.err[0] ? lc.err : "error while loading", strlen(lc.err[0] ? lc.err : "error while loading"));
        return -1;
    }
    *ref = lc.ref;
    return 0;
}

void script_load_async(script_vm *vm, const char *path, const char *text, size_t len, char version[17],
                       script_loaded cb, void *ud)
{
    text_version(text, len, version);
    load_ctx *lc = xcalloc(1, sizeof *lc);
    lc->cb = cb;
    lc->ud = ud;
    lc->path = xstrdup(path);
    lc->ref = LUA_NOREF;
    script_call *c = load_call(vm, path, text, len, lc);
    if (!c) {
        cb(ud, LUA_NOREF, lc->err);
        free(lc->path);
        free(lc);
        return;
    }
    enqueue(c); /* sliced like any invocation, from the next loop turn */
}

bool script_push_json_cached(lua_State *L, int owner, const char *json, size_t len)
{
    script_vm *vm = vm_of(L);
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->opts_ref); /* top+1: the cache */
    /* keyed by owner too: two scripts given the same options text get two
     * tables, so neither can change the other's */
    lua_pushfstring(L, "%d:", owner);
    lua_pushlstring(L, json, len);
    lua_concat(L, 2); /* top+2: the key */
    lua_pushvalue(L, top + 2);
    if (lua_rawget(L, top + 1) != LUA_TNIL) {
        lua_replace(L, top + 1);
        lua_settop(L, top + 1);
        return true;
    }
    lua_pop(L, 1);
    if (!script_push_json(L, json, len)) {
        lua_settop(L, top);
        return false;
    }
    if (vm->opts_cached >= 256) { /* bounded: start afresh */
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_rawseti(L, LUA_REGISTRYINDEX, vm->opts_ref);
        lua_replace(L, top + 1);
        vm->opts_cached = 0;
    }
    lua_pushvalue(L, top + 2);
    lua_pushvalue(L, top + 3);
    lua_rawset(L, top + 1);
    vm->opts_cached++;
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return true;
}

bool script_push_json(lua_State *L, const char *json, size_t len)
{
    script_vm *vm = vm_of(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->null_ref);
    char err[300];
    int rc = luajson_decode(L, json, len, -1, err, sizeof err);
    lua_remove(L, rc == 0 ? -2 : -1);
    return rc == 0;
}

bool script_push_tree(lua_State *L, const json_t *v)
{
    script_vm *vm = vm_of(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->null_ref);
    char err[100];
    int rc = luajson_push_tree(L, v, -1, err, sizeof err);
    lua_remove(L, rc == 0 ? -2 : -1);
    return rc == 0;
}

char *script_field_json(script_vm *vm, int ref, const char *field)
{
    lua_State *L = script_vm_state(vm);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref); /* +1: the table */
    char *out = NULL;
    if (lua_istable(L, -1)) {
        lua_pushstring(L, field);
        lua_rawget(L, -2); /* +2: the value */
        char err[200];
        if (!lua_isnil(L, -1))
            out = script_to_json(L, -1, err, sizeof err);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return out;
}

char *script_to_json(lua_State *L, int idx, char *err, size_t errlen)
{
    script_vm *vm = vm_of(L);
    idx = lua_absindex(L, idx);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->null_ref);
    if (luajson_encode(L, idx, -1, err, errlen) != 0) {
        lua_pop(L, 1);
        return NULL;
    }
    char *out = xstrdup(lua_tostring(L, -1));
    lua_pop(L, 2);
    return out;
}

void script_invoke(script_vm *vm, int ref, const char *fn, int budget_ms, const char *caller_kind,
                   const char *caller_name, script_push_args push, script_done done, void *ud)
{
    lua_State *L = vm->L;
    script_call *c = xcalloc(1, sizeof *c);
    c->vm = vm;
    c->budget_ms = budget_ms > 0 ? budget_ms : vm->lim.budget_ms;
    c->done = done;
    c->ud = ud;
    c->caller_kind = xstrdup(caller_kind ? caller_kind : "other");
    c->caller_name = xstrdup(caller_name ? caller_name : "");
    c->co = lua_newthread(L);
    c->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    vm->live++;
    lua_rawgeti(c->co, LUA_REGISTRYINDEX, ref);
    lua_getfield(c->co, -1, fn);
    lua_remove(c->co, -2);
    if (!lua_isfunction(c->co, -1)) {
        lua_pushfstring(c->co, "the script has no function '%s'", fn);
        call_finish(c, LUA_ERRRUN, 0);
        return;
    }
    c->nargs = push ? push(c->co, ud) : 0;
    enqueue(c); /* runs in the loop's next turn, within that turn's slice */
}
