/* script_private.h — what script.c and script_stall.c share: the state of
 * the deadline of the thread running scripts, and the kill.
 *
 * An invocation runs until its kill point (kill_at): the end of its budget,
 * or its slice's end plus scripts.max_stall_ms, whichever comes first. Lua
 * code is stopped there by the hook the deadline signal sets; C calls that
 * could hold the loop longer (script_stall.c) check `overdue`, or run in a
 * scratch Lua state the signal handler may jump out of. */
#ifndef RATCHET_SCRIPT_PRIVATE_H
#define RATCHET_SCRIPT_PRIVATE_H

#include <lua.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define SCRIPT_DEADLINE_SIGNAL (SIGRTMIN + 3)

typedef struct {
    lua_State *volatile running;    /* the Lua thread executing now */
    volatile sig_atomic_t armed;    /* a deadline is pending; the handler clears it */
    uint64_t armed_at;
    bool have_timer;
    timer_t timer;
    /* the running invocation (budget_at is 0 when none runs) */
    volatile uint64_t budget_at;    /* its budget ends (mono ns) */
    volatile uint64_t turn_at;      /* its slice ends (mono ns); 0: no slice (a load at start-up) */
    volatile uint64_t stall_ns;     /* scripts.max_stall_ms */
    volatile uint64_t stall_cpu_at; /* the stall ends, in this thread's CPU time (0: the slice has not ended) */
    volatile uint64_t kill_at;      /* the earliest moment it may be stopped (mono ns) */
    volatile sig_atomic_t overdue;  /* the handler found it past its budget or its stall: stop it */
    volatile sig_atomic_t in_scratch; /* a scratch state's code runs: the handler may jump out of it */
    volatile sig_atomic_t in_alloc; /* ... but not while it is inside its allocator */
    sigjmp_buf *volatile jump;      /* where the handler jumps to */
} script_tls;

extern _Thread_local script_tls stls;

/* Makes a deadline pending at (mono ns): the signal comes at or before it.
 * Safe in the signal handler. */
void script_deadline_arm(uint64_t at);
/* Marks the running invocation killed (so the hook raises on every
 * instruction from now on) and raises the kill in L, saying why and, when
 * the caller is Lua, where. what: the call that overran ("string.find"),
 * or NULL. Does not return. */
int script_raise_kill(lua_State *L, const char *what);
/* Marks the running invocation as out of memory (a scratch state hit the
 * VM's headroom) and raises Lua's "not enough memory". */
int script_raise_nomem(lua_State *L);
/* Bytes the VM of L may still allocate. */
size_t script_headroom(lua_State *L);

/* script_stall.c: installs the stoppable versions of string.find, match,
 * gmatch, gsub and rep into the string table at idx, of table.sort into the
 * table library at idx, and builds the sandbox's rex_pcre2 (no gsub or
 * count; patterns carry PCRE2 match limits) from the module at idx, pushed. */
void script_stall_string(lua_State *L, int idx);
void script_stall_table(lua_State *L, int idx);
void script_stall_rex(lua_State *L, int idx);
/* Frees the thread's scratch states (when its last VM is freed). */
void script_stall_free(void);

#endif
