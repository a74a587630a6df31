/* script_io.h — the engine's side of ratchet.llm.chat and ratchet.http.request. */
#ifndef RATCHET_SCRIPTIO_H
#define RATCHET_SCRIPTIO_H

#include <uv.h>

#include "net/http_client.h"
#include "llm/llm.h"
#include "script/script.h"

typedef struct scriptio scriptio;

scriptio *scriptio_new(uv_loop_t *loop, llm *l, httpc *h);
/* The allow-list (URL prefixes, NULL-terminated), timeout and size cap for
 * ratchet.http.request (the config's http table). */
void scriptio_configure(scriptio *io, char *const *allow, int timeout_ms, int max_response_bytes);
const script_io *scriptio_hooks(scriptio *io);
void scriptio_free(scriptio *io);

#endif
