/* api_console.h — the web console's static files, read once at start-up
 * and served from memory with type, ETag, gzip and a Content-Security-Policy;
 * also what `ratchet eval --html` inlines into its self-contained page. */
#ifndef RATCHET_API_CONSOLE_H
#define RATCHET_API_CONSOLE_H

#include <stddef.h>

#include "api/api.h"

/* The files of SHARE_DIR/console (html, js, css, svg, png, json), with
 * chart.js from Debian's libjs-chart.js when none is there. NULL with a
 * message in err when the folder, its index.html or Chart.js is missing. */
console_assets *console_load(const char *share_dir, char *err, size_t errlen);
void console_free(console_assets *ca);
/* The folder the files were read from. */
const char *console_dir(const console_assets *ca);
/* The bytes of every file, as is; *gzipped: as served to a client taking gzip. */
size_t console_weight(const console_assets *ca, size_t *gzipped);
/* One file's bytes (NUL-terminated): 0, or -1 when there is no such file. */
int console_file_body(const console_assets *ca, const char *name, const char **body, size_t *len);

/* GET /console/ and GET /console/{file} (the route's arg names the file, or
 * the path's segment does). */
void api_console_file(const api_call *c);

/* GET /v1/session: which scope the caller's token opens, so the console shows
 * action buttons to an admin only ({"scope": "admin"|"viewer", "actions": bool}). */
void api_session(const api_call *c);

#endif
