/* optdecl.h — the one schema of a script's options: an evaluator's
 * `options` table, and a policy's settings (its `settings` defaults plus an
 * optional `options` table), declare each option's type, whether it is
 * required, its allowed values and bounds, its default and what it means
 * (docs/evaluators.md#declaring-options). The engine checks the options a
 * config gives against it when the config or the script loads, so a typo is
 * an error at `ratchet check`, not a failure on every trace.
 *
 *   options = {
 *     value = { type = { "string", "list" }, items = "string", required = true,
 *               description = "the text to look for" },
 *     mode  = { type = "string", allowed = { "all", "any" }, default = "all",
 *               description = "all of the texts, or any one" },
 *   }
 *
 * Plain C on jansson values: the engine and the busted module share it. */
#ifndef RATCHET_OPTDECL_H
#define RATCHET_OPTDECL_H

#include <jansson.h>
#include <stddef.h>

/* Checks that decl (option name -> declaration; a string declares an option
 * of any type by its description) is well formed, including that each
 * default passes its own declaration. Returns 0, or -1 with err naming the
 * option ("options.mode: ..."). */
int optdecl_check(const json_t *decl, char *err, size_t errlen);

/* Called once per problem found, with a message such as "unknown option
 * 'valeu'; did you mean 'value'? (known: value, mode)". */
typedef void (*optdecl_report)(const char *problem, void *ud);

/* Checks opts (an object; NULL: none given) against decl: unknown keys,
 * types, required options, allowed values, bounds. Returns the number of
 * problems reported. decl must have passed optdecl_check. */
int optdecl_validate(const json_t *decl, const json_t *opts, optdecl_report report, void *ud);

/* Checks the options whose declaration says `names = KIND` (today only
 * "provider") against the names the configuration declares: a value must be
 * one of known; an absent option is a problem unless exactly one is known
 * (the script's default is then that one). Returns the number of problems
 * reported. decl must have passed optdecl_check. */
int optdecl_validate_names(const json_t *decl, const json_t *opts, const char *kind, const char *const *known,
                           size_t nknown, optdecl_report report, void *ud);

/* The declaration of a policy's options: every key of settings (its
 * defaults), typed by its default (a number: any number; a list: a list,
 * of numbers when the default's items are; a table: a table), overlaid by
 * decl (the policy's own `options`, may be NULL), which may narrow a type,
 * add bounds or allowed values, or declare options without a default.
 * A new reference; NULL when neither is given. */
json_t *optdecl_from_settings(const json_t *settings, const json_t *decl);

#endif
