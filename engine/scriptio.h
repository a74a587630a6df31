/* scriptio.h — the engine's side of ratchet.llm.chat and ratchet.http.request. */
#ifndef RATCHET_SCRIPTIO_H
#define RATCHET_SCRIPTIO_H

#include <uv.h>

#include "config.h"
#include "httpc.h"
#include "llm.h"
#include "script.h"

typedef struct scriptio scriptio;

scriptio *scriptio_new(uv_loop_t *loop, llm *l, httpc *h);
/* The allow-list, timeout and size cap for ratchet.http.request. */
void scriptio_configure(scriptio *io, const config_http *http);
const script_io *scriptio_hooks(scriptio *io);
void scriptio_free(scriptio *io);

#endif
