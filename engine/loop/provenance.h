/* provenance.h — what text in a candidate prompt came from traffic: the
 * user-controlled text of the traces a loop cycle read (template variables,
 * user and tool messages), normalised, as every window of W bytes (a rolling
 * hash) and as tokens with the number of traces each appears in. The loop
 * rejects candidates that copy a window (docs/loop.md, "Checks before a
 * candidate costs a run") and hands the accept policy the trace-derived
 * tokens a candidate adds (the rare-token hold). Pure: no I/O, usable from
 * the thread pool. */
#ifndef RATCHET_PROVENANCE_H
#define RATCHET_PROVENANCE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "base/util.h"

#define PROVENANCE_WINDOW 24

typedef struct provenance provenance;

/* window: bytes of normalised text per copy window (PROVENANCE_WINDOW). */
provenance *provenance_new(size_t window);
void provenance_free(provenance *pv);
/* Adds one trace's user-controlled text: every string inside variables, and
 * the text of messages whose role is user or tool (either may be NULL).
 * Stops taking text past max_bytes of normalised text in all (returns false
 * then, the text beyond unchecked). */
bool provenance_add_trace(provenance *pv, const json_t *variables, const json_t *messages);
/* Adds text as one more "trace" (golden cases, for instance). */
bool provenance_add_text(provenance *pv, const char *text);
/* Done adding: sorts the windows for lookups. */
void provenance_seal(provenance *pv);
size_t provenance_traces(const provenance *pv);
size_t provenance_bytes(const provenance *pv);

/* true when candidate holds a window of trace text that current does not;
 * found gets the copied words (normalised). */
bool provenance_copied(const provenance *pv, const char *candidate, const char *current, char *found, size_t flen);
/* The tokens candidate has and current has not that appear in the traces:
 * [{token, traces}], most traces last, at most max of them. */
json_t *provenance_new_tokens(const provenance *pv, const char *candidate, const char *current, size_t max);
/* How many traces hold the token (normalised as tokens are). */
size_t provenance_token_traces(const provenance *pv, const char *token);

/* The normalised form: NFKC, case-folded, every run of characters that are
 * neither letters nor digits as one space, trimmed. */
void provenance_normalise(const char *s, size_t n, buf_t *out);

#endif
