/* api_registry.h — the prompt registry and datasets: /v1/prompts and
 * /v1/datasets (docs/gate.md). Handlers of rows of api_routes[]. */
#ifndef RATCHET_API_REGISTRY_H
#define RATCHET_API_REGISTRY_H

#include "api/api.h"

void api_list_prompts(const api_call *c);
void api_create_prompt(const api_call *c);
void api_resolve_prompt(const api_call *c);
void api_list_versions(const api_call *c);
void api_add_version(const api_call *c);
void api_show_version(const api_call *c);
void api_diff_versions(const api_call *c);
void api_prompt_history(const api_call *c);
void api_prompt_metrics(const api_call *c);
/* GET /v1/prompts/{name}/series: pass rate and traffic over time, in buckets */
void api_prompt_series(const api_call *c);
void api_prompt_action(const api_call *c); /* the route's arg: promote, canary, rollback, pin, unpin */
void api_set_label(const api_call *c);
void api_delete_label(const api_call *c);

void api_list_datasets(const api_call *c);
void api_show_dataset(const api_call *c);
void api_import_cases(const api_call *c);
void api_export_cases(const api_call *c);
void api_delete_case(const api_call *c);
void api_case_from_trace(const api_call *c);
void api_cases_from_traces(const api_call *c);
void api_dataset_versions(const api_call *c);
void api_dataset_diff(const api_call *c);

#endif
