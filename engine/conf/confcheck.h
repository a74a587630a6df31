/* confcheck.h — checks a configuration against the scripts it names, the
 * way `ratchet check`, `ratchet serve` at start and every reload do: each
 * attached evaluator exists and its options pass its declaration (and its
 * check); each prompt's loop names a template and policies that exist and
 * meet their contract, gives each policy only options its settings declare,
 * and names configured providers. Every error names the config file and
 * line, the prompt and the setting. */
#ifndef RATCHET_CONFCHECK_H
#define RATCHET_CONFCHECK_H

#include <stdbool.h>

#include "script/catalog.h"
#include "conf/config.h"

typedef void (*confcheck_report)(const char *msg, void *ud);

/* Every check; returns the number of errors reported. */
int confcheck_config(const config *cfg, catalog *cat, confcheck_report report, void *ud);

/* The errors cfg would have with le as the version of script `slot` (an
 * evaluator's name, "policies/NAME" or "metaprompts/NAME"); before a reload
 * swaps it in. Returns their number. */
int confcheck_script(const config *cfg, catalog *cat, const char *slot, const loaded_evaluator *le,
                     confcheck_report report, void *ud);

/* Whether cfg uses script `slot`. */
bool confcheck_uses(const config *cfg, const char *slot);

/* Checks options of the policy at le, used as kind (trigger, mining, accept,
 * rollout), against its declaration (its settings and options tables); each
 * problem goes to report as it is ("unknown option 'x'; ..."). Returns the
 * number of problems. */
int confcheck_policy_options(catalog *cat, const loaded_evaluator *le, const json_t *opts, confcheck_report report,
                             void *ud);

#endif
