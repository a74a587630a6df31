/* api_gateway.h — gateway mode: OpenAI- and Anthropic-compatible endpoints
 * that resolve the managed prompt, run the canary, call the provider and
 * capture every trace (docs/gateway.md). Handlers of rows of api_routes[]. */
#ifndef RATCHET_API_GATEWAY_H
#define RATCHET_API_GATEWAY_H

#include "api/api.h"

void api_gateway_chat(const api_call *c);
void api_gateway_messages(const api_call *c);
void api_gateway_models(const api_call *c);
/* At shutdown: every call in flight is cancelled and answered 503. */
void api_gateway_stop(api *a);
void api_gateway_free(api *a);

#endif
