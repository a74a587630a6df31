/* config.h — the engine's settings, read from a Lua file in a sandbox. */
#ifndef RATCHET_CONFIG_H
#define RATCHET_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    int max_connections;
    int max_header_bytes;
    int max_body_bytes;
    int max_batch_items;
    int header_timeout_ms;
    int body_timeout_ms;
    int idle_timeout_ms;
    int shutdown_timeout_ms;
    int max_pending_writes;
} config_limits;

typedef struct {
    char *path;          /* the file read, or NULL for built-in defaults */
    char *listen;        /* "host:port" or "[v6]:port" */
    char *data_dir;
    char *ingest_token;  /* NULL: ingest only from loopback clients */
    char *admin_token;   /* NULL: reads and admin only from loopback clients */
    char *log_level;
    char *log_format;    /* "text" or "json" */
    bool access_log;
    config_limits limits;
} config;

/* Fills c with every default. */
void config_defaults(config *c);
/* Reads the Lua file at path on top of the defaults. On error returns -1 and
 * writes "file:line: message" into err. */
int config_load(config *c, const char *path, char *err, size_t errlen);
void config_free(config *c);
/* Splits a listen address; returns 0 and fills host (with no brackets) and port. */
int config_parse_listen(const char *listen, char *host, size_t hostlen, int *port);

#endif
