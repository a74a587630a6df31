/* api_ops.h — the operators' endpoints: health, readiness, the version,
 * status, /metrics, re-evaluation, LLM checks and the ledger, the debug
 * sleep. Handlers of rows of api_routes[]. */
#ifndef RATCHET_API_OPS_H
#define RATCHET_API_OPS_H

#include "api/api.h"

void api_healthz(const api_call *c);
void api_readyz(const api_call *c);
void api_version(const api_call *c);
void api_status(const api_call *c);
void api_metrics(const api_call *c);
void api_reevaluate(const api_call *c);
void api_llm_chat(const api_call *c);
void api_llm_calls(const api_call *c);
void api_debug_sleep(const api_call *c);

#endif
