/* script.h — the Lua runtime: one sandboxed Lua 5.4 state per VM, scripts
 * loaded each into its own environment, and invocations run as coroutines on
 * the event loop under a CPU budget and a memory cap.
 *
 * An invocation runs in slices: a count hook yields back to the loop when a
 * slice is used up, so a long script never stalls ingest; when the budget is
 * spent the hook raises on every instruction, so pcall cannot swallow the
 * kill. Async calls (ratchet.sleep) yield the coroutine and a libuv callback
 * resumes it. */
#ifndef RATCHET_SCRIPT_H
#define RATCHET_SCRIPT_H

#include <jansson.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "base/util.h"

typedef struct script_vm script_vm;
typedef struct script_call script_call;

typedef struct {
    size_t memory_limit; /* bytes for the whole VM; default 64 MiB */
    int budget_ms;       /* execution time per invocation; default 100 */
    int load_budget_ms;  /* execution time for loading one file; default 1000 */
    int slice_ms;        /* run at most this long before letting the loop turn; default 2 */
    int stall_ms;        /* past its slice, where it cannot pause (a call into C), at most this long; default 10 */
} script_limits;

enum script_status {
    SCRIPT_OK = 0,  /* results are on the coroutine's stack */
    SCRIPT_ERROR,   /* message (with file:line) in the done callback */
    SCRIPT_KILLED,  /* the budget ran out */
    SCRIPT_NOMEM,   /* the memory cap was hit */
};

/* done runs on the loop thread when an invocation ends. On SCRIPT_OK the nres
 * results are the top values of co's stack (valid during the callback only);
 * otherwise message says why. */
typedef void (*script_done)(script_call *call, enum script_status status, lua_State *co, int nres,
                            const char *message, void *ud);
/* Pushes the invocation's arguments onto co; returns how many. */
typedef int (*script_push_args)(lua_State *co, void *ud);

void script_limits_default(script_limits *lim);

/* Async I/O for scripts (ratchet.llm.chat, ratchet.http.request), supplied
 * by the engine; without it those calls answer nil, "...", "unavailable".
 * start returns a handle for cancel, and calls done exactly once, later,
 * unless cancelled: result is a JSON text, or NULL with err_kind and err. */
typedef void (*script_io_done)(void *done_ud, const char *result, const char *err_kind, const char *err);
enum script_io_op { SCRIPT_IO_LLM, SCRIPT_IO_HTTP };
typedef struct {
    /* optional: 0 when the request's shape is right, or -1 with a message
     * naming the field; the call then raises (a bug in the script) */
    int (*check)(void *ctx, enum script_io_op op, const char *request, char *err, size_t errlen);
    void *(*start)(void *ctx, enum script_io_op op, const char *request, const char *caller_kind,
                   const char *caller_name, script_io_done done, void *done_ud);
    void (*cancel)(void *ctx, enum script_io_op op, void *handle);
    void *ctx;
} script_io;
void script_vm_set_io(script_vm *vm, const script_io *io);
/* Cancels the I/O every invocation waits on; each resumes with nil, "the
 * engine is stopping", "cancelled" (at shutdown, so they can finish). */
void script_vm_cancel_io(script_vm *vm);

/* dirs: folders `require` may load modules from (NULL-terminated; copied). */
script_vm *script_vm_new(uv_loop_t *loop, const script_limits *lim, const char *const *dirs);
/* Frees the VM. Every invocation must have finished (see script_vm_busy). */
void script_vm_free(script_vm *vm);
int script_vm_busy(script_vm *vm);
/* Time the invocation has spent running Lua so far (monotonic ns). */
uint64_t script_call_lua_ns(const script_call *call);
lua_State *script_vm_state(script_vm *vm);
size_t script_vm_memory(script_vm *vm);
/* Invocations, errors and kills by caller kind, and memory, for /metrics. */
void script_vm_metrics(script_vm *vm, buf_t *b);

/* Compiles and runs the file (text only, no bytecode) in a fresh environment
 * under the load budget. The value it returns must be a table; a registry
 * reference to it goes into *ref. version (17 bytes, may be NULL) gets the
 * first 16 hex digits of the SHA-256 of the text loaded. Returns 0, or -1
 * with "file:line: message". */
int script_load_file(script_vm *vm, const char *path, int *ref, char version[17], char *err, size_t errlen);
/* Reads a script file (at most 1 MiB: compiling one takes about 20 ms, on
 * the loop on a reload) into out; thread-safe. */
int script_read_text(const char *path, buf_t *out, char *err, size_t errlen);
/* The same from a text already read (path names it in messages). */
int script_load_text(script_vm *vm, const char *path, const char *text, size_t len, int *ref, char version[17],
                     char *err, size_t errlen);
/* The same, but the file's top level runs as an invocation on the run
 * queue, time-sliced under the load budget, so a long (or hostile) top
 * level never holds the loop. cb runs on the loop when the load ends, with
 * a registry ref to the table it returned, or LUA_NOREF and the error
 * ("file:line: message"); for a syntax error, before this returns.
 * version is filled at once. */
typedef void (*script_loaded)(void *ud, int ref, const char *err);
void script_load_async(script_vm *vm, const char *path, const char *text, size_t len, char version[17],
                       script_loaded cb, void *ud);
/* Calls table[fn](arg) where table is the value at ref and arg the value of
 * a JSON text, now, on the VM's main thread under the load budget (it cannot
 * yield, so no ratchet.sleep or I/O): for checks made while loading.
 * Returns 0, or -1 with the error (or "the script has no function 'fn'"). */
int script_call_sync(script_vm *vm, int ref, const char *fn, const char *arg_json, char *err, size_t errlen);
/* Only compiles the text (syntax check), for scripts other stages load. */
int script_compile_text(script_vm *vm, const char *path, const char *text, size_t len, char *err, size_t errlen);
/* Forgets the module texts set with script_set_source (before a reload).
 * Every script file has its own module instances, made when it loads, so
 * a reload gives every script freshly loaded modules anyway. */
void script_forget_modules(script_vm *vm);
/* The text of a module file, read off the loop (the catalog's scan), for
 * `require` to load instead of reading path from the disk on the loop. */
void script_set_source(script_vm *vm, const char *path, const char *text, size_t len);
/* A full garbage collection (after a reload dropped old versions), in
 * steps of at most a millisecond per loop turn. */
void script_collect(script_vm *vm);
void script_unref(script_vm *vm, int ref);

/* Pushes the value of a JSON text onto L (objects and arrays as tables,
 * null as ratchet.json.null). Returns false, pushing nothing, on bad JSON. */
bool script_push_json(lua_State *L, const char *json, size_t len);
/* The same, but the same text gives the same table to the same owner (a
 * script's registry ref; cached per VM, up to 256 texts): for options,
 * which scripts treat as read-only. */
bool script_push_json_cached(lua_State *L, int owner, const char *json, size_t len);
/* Pushes a value the engine holds parsed as script_push_json pushes its
 * text, without the text. */
bool script_push_tree(lua_State *L, const json_t *v);

/* The JSON text of the value at idx (malloc'd), or NULL with err. */
char *script_to_json(lua_State *L, int idx, char *err, size_t errlen);
/* The JSON of a plain data field of the table at ref (read raw, no
 * metamethods, no script code runs), or NULL when absent or not JSON. */
char *script_field_json(script_vm *vm, int ref, const char *field);

/* Calls table[fn](args...) where table is the value at ref, as a new
 * coroutine, under budget_ms (0: the VM's default). It runs from the run
 * queue in a later loop turn; done is called then (or at once when the
 * function does not exist). caller_kind and caller_name (copied) say who
 * asks, for the LLM ledger. */
void script_invoke(script_vm *vm, int ref, const char *fn, int budget_ms, const char *caller_kind,
                   const char *caller_name, script_push_args push, script_done done, void *ud);

#endif
