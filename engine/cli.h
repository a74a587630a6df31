/* cli.h — the commands that are clients of the engine's API. */
#ifndef RATCHET_CLI_H
#define RATCHET_CLI_H

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
