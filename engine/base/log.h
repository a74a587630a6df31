/* log.h — leveled, one-line-per-event logging on stderr (journald-friendly). */
#ifndef RATCHET_LOG_H
#define RATCHET_LOG_H

#include <stdbool.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level level);
/* One JSON object per line ({"time","level","subsystem","message"}) for log
 * shippers, instead of text. */
void log_set_json(bool json);
/* Parses "debug", "info", "warn" or "error"; returns -1 for anything else. */
int log_level_parse(const char *name);
bool log_enabled(enum log_level level);
void log_msg(enum log_level level, const char *subsystem, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(sub, ...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, sub, __VA_ARGS__); } while (0)
#define log_info(sub, ...) log_msg(LOG_INFO, sub, __VA_ARGS__)
#define log_warn(sub, ...) log_msg(LOG_WARN, sub, __VA_ARGS__)
#define log_error(sub, ...) log_msg(LOG_ERROR, sub, __VA_ARGS__)

#endif
