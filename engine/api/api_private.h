/* api_private.h — what the API's files share: authentication and query
 * parameter helpers (api.c) and the registry, dataset and run routes
 * (api_registry.c). */
#ifndef RATCHET_API_PRIVATE_H
#define RATCHET_API_PRIVATE_H

#include "api/api.h"

enum scope { SCOPE_INGEST, SCOPE_ADMIN, SCOPE_METRICS };

/* Each returns true when the request may go on; otherwise it has answered. */
bool api_authorize(api *a, http_request *req, enum scope need);
bool api_int_param(http_request *req, const char *name, long long min, long long max, long long *out);
bool api_time_param(http_request *req, const char *name, int64_t *out);
bool api_known_params(http_request *req, const char *const *known);

/* Answers with v as compact JSON. */
void api_respond_json(http_request *req, int status, json_t *v);

/* Routes /v1/prompts..., /v1/datasets..., /v1/runs...; false when the path is
 * none of them. */
bool api_registry_route(api *a, http_request *req);

#endif
