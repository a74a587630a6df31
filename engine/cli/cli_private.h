/* cli_private.h — what the engine's client commands share: the engine's
 * address and admin token, one JSON request, error printing. */
#ifndef RATCHET_CLI_PRIVATE_H
#define RATCHET_CLI_PRIVATE_H

#include <jansson.h>
#include <stdbool.h>

#include "base/util.h"

typedef struct {
    char base[512];
    char *token;
    char actor[200];
} client;

/* The engine's URL and admin token: --url, else the config's listen; the
 * token from the config or $RATCHET_ADMIN_TOKEN. Returns 0 or -1 (said). */
int client_init(client *c, const char *url, const char *config_path);
void client_free(client *c);
/* One request with a JSON body (or none); returns the HTTP status, 0 when the
 * engine cannot be reached (*out then holds {"error":{"message":...}}). */
long call_json(client *c, const char *method, const char *path, json_t *body, json_t **out);
/* One request with a body of any type (ctype NULL: JSON) or none; the answer
 * parsed in *out when out is given (as call_json) and its raw bytes appended
 * to raw when raw is given. */
long call_raw(client *c, const char *method, const char *path, const char *ctype, const char *body, size_t len,
              json_t **out, buf_t *raw);
/* "ratchet CMD: message (field: F)" on stderr. */
void print_error(const char *cmd, long status, json_t *ans);
/* Appends "?key=value" to q (a path, or empty) — "&key=value" once q has a "?" — the value
 * URL-encoded; nothing when value is NULL. */
void query_add(buf_t *q, const char *key, const char *value);
/* GET path and show the answer: as the API's JSON when as_json, else by
 * show(ans); an error answer is printed as print_error does. Returns 0 or
 * EXIT_ERROR. */
int get_and_show(client *c, const char *cmd, const char *path, bool as_json, void (*show)(json_t *ans));

#endif
