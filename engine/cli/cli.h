/* cli.h — the commands that are clients of the engine's API. */
#ifndef RATCHET_CLI_H
#define RATCHET_CLI_H

#include "base/exitcode.h"

struct option;
/* getopt_long for `ratchet CMD`: an unknown option or one missing its value
 * is said on stderr naming the option ("ratchet eval: option '--concurrency'
 * needs a value") and '?' is returned; the caller prints its usage and exits
 * EXIT_ERROR. Set optind = 1 before the first call, as for getopt_long. */
int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts, const struct option *longopts);
/* text as a whole number from min to max for option flag; else says so
 * ("ratchet eval: -k must be a whole number from 1 to 20, not '0'") and
 * returns -1. */
int cli_int(const char *cmd, const char *flag, const char *text, long long min, long long max, long long *out);
/* text as a finite number above 0 (a budget); else says so and returns -1. */
int cli_positive(const char *cmd, const char *flag, const char *text, double *out);

extern const char evaluate_usage[];
extern const char prompt_usage[];
extern const char eval_usage[];
int cmd_evaluate(int argc, char **argv);
int cmd_prompt(int argc, char **argv);
int cmd_eval(int argc, char **argv);
extern const char optimize_usage[];
extern const char approve_usage[];
extern const char loop_usage[];
int cmd_optimize(int argc, char **argv);
int cmd_approve(int argc, char **argv);
int cmd_loop(int argc, char **argv);
extern const char status_usage[];
extern const char history_usage[];
int cmd_status(int argc, char **argv);
int cmd_history(int argc, char **argv);
extern const char init_usage[];
extern const char dataset_usage[];
int cmd_dataset(int argc, char **argv);
int cmd_init(int argc, char **argv);
extern const char routes_usage[];
int cmd_routes(int argc, char **argv);
extern const char traces_usage[];
int cmd_traces(int argc, char **argv);
extern const char series_usage[];
int cmd_series(int argc, char **argv);

#endif
