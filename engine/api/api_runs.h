/* api_runs.h — regression runs and the loop: /v1/runs, a gate winner's
 * approval, POST /v1/prompts/{name}/optimize and /v1/loop (docs/gate.md,
 * docs/loop.md). Handlers of rows of api_routes[]. */
#ifndef RATCHET_API_RUNS_H
#define RATCHET_API_RUNS_H

#include "api/api.h"

void api_start_run(const api_call *c);
void api_list_runs(const api_call *c);
void api_get_run(const api_call *c);
void api_run_results(const api_call *c);
void api_cancel_run(const api_call *c);
void api_decide_run(const api_call *c); /* the route's arg: approve or reject */
void api_optimize_prompt(const api_call *c);
void api_loop_status(const api_call *c);
void api_loop_prompt(const api_call *c);

#endif
