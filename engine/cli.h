/* cli.h — the commands that are clients of the engine's API. */
#ifndef RATCHET_CLI_H
#define RATCHET_CLI_H

/* The one exit-code table of every command (docs/gate.md#exit-codes):
 * 0 done (for `eval`: improved, or no regression), 1 regressed, 2
 * inconclusive or incomplete (and `eval --require-improvement` with no
 * improvement shown), 3 an error: usage, configuration, the engine
 * unreachable or refusing, or `status` finding something that needs a look. */
enum { EXIT_OK = 0, EXIT_REGRESSED = 1, EXIT_INCONCLUSIVE = 2, EXIT_ERROR = 3 };

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

#endif
