/* policy.h — calls a function of a policy script (policies/NAME.lua) with one
 * argument handed over as JSON, and gets its first result back as JSON. A
 * policy is a pure function of the numbers the core gives it, so the same
 * call runs in the engine and in the busted module. */
#ifndef RATCHET_POLICY_H
#define RATCHET_POLICY_H

#include "script/script.h"

/* result: the JSON of the first value returned, or NULL with error
 * ("file:line: message", a kill, or a missing function). */
typedef void (*policy_done)(const char *result, const char *error, void *ud);

/* Runs table[fn](arg) where table is the value at ref, under budget_ms.
 * done runs once, on the loop, later. */
void policy_call(script_vm *vm, int ref, const char *name, const char *fn, int budget_ms, const char *arg_json,
                 policy_done done, void *ud);

/* The same with several arguments: args_json is a JSON array of them. */
void policy_call_args(script_vm *vm, int ref, const char *name, const char *fn, int budget_ms, const char *args_json,
                      policy_done done, void *ud);

#endif
