/* exitcode.h — the one exit-code table of every command (docs/gate.md#exit-codes). */
#ifndef RATCHET_EXITCODE_H
#define RATCHET_EXITCODE_H

/* 0 done (for `eval`: improved, or no regression), 1 regressed, 2
 * inconclusive or incomplete (and `eval --require-improvement` with no
 * improvement shown), 3 an error: usage, configuration, the engine
 * unreachable or refusing, or `status` finding something that needs a look. */
enum { EXIT_OK = 0, EXIT_REGRESSED = 1, EXIT_INCONCLUSIVE = 2, EXIT_ERROR = 3 };

#endif
