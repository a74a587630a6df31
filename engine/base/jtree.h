/* jtree.h — jansson trees read and written through yajl. jansson's own
 * parser and dumper are the engine's slowest JSON code (on a model's reply,
 * json_loadb takes 4.8 µs where yajl building the same tree takes 1.9 µs;
 * json_dumps 2.4 µs against 1.2 µs for a request), so the hot paths of a
 * run use these. They accept and write exactly what jansson does: the same
 * types (a number with '.', 'e' or 'E' is a real), the same refusals (NUL
 * in a string or key, an integer past 64 bits, a real that overflows,
 * invalid UTF-8, trailing text), and byte for byte json_dumps(JSON_COMPACT). */
#ifndef RATCHET_JTREE_H
#define RATCHET_JTREE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <yajl/yajl_parse.h>

#include "base/util.h"

/* Parses one JSON value of any type. Returns it (new reference), or NULL
 * with a message in err. */
json_t *jtree_parse(const char *text, size_t len, char *err, size_t errlen);
/* The same for text already known to be valid UTF-8 (a jansson string's
 * value): the strings and keys taken as they are from it (those without
 * escapes) are not checked for UTF-8 and NUL again; decoded escapes still
 * are. The same result as jtree_parse on such text. */
json_t *jtree_parse_utf8(const char *text, size_t len, char *err, size_t errlen);
/* Appends v as compact JSON (json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY)). */
void jtree_dump_buf(buf_t *b, const json_t *v);
/* The same as a new string (free it). */
char *jtree_dump(const json_t *v);
/* JSON for people and API answers: as jtree_dump, but each real written as
 * the shortest text that reads back as the same double ("0.8", not jansson's
 * "0.80000000000000004"), never rounded; pretty: indented by two spaces, no
 * final newline. Not for cache keys (those keep jansson's bytes). */
char *jtree_dump_text(const json_t *v, bool pretty);
/* json_dumps(v, flags | JSON_ENCODE_ANY) that never returns NULL: "null"
 * for a NULL v (a json_pack that failed) or a value that cannot be written,
 * so no caller can pass NULL on to strlen or a buffer. Free the result. */
char *json_text(const json_t *v, size_t flags);
/* Writes d as jansson writes a real ("1.0", "0.25", "1e+300" as "1e300");
 * returns its length (0 for NaN or infinity, which JSON has no text for). */
size_t jtree_real_text(double d, char out[40]);

/* yajl's message for a failed parse, on one line ("no value" when the
 * parse succeeded without one). */
void jtree_yajl_error(yajl_handle h, yajl_status st, char *err, size_t errlen);

#endif
