/* luajson.h — JSON text <-> Lua values through yajl, keeping arrays and
 * objects apart (arrays carry the metatable ratchet.json.array). */
#ifndef RATCHET_LUAJSON_H
#define RATCHET_LUAJSON_H

#include <jansson.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <yajl/yajl_parse.h>

/* Pushes the value of text (len bytes) with JSON null as the
 * value at null_idx. Returns 0, or -1 (nothing pushed) with err. */
int luajson_decode(lua_State *L, const char *text, size_t len, int null_idx, char *err, size_t errlen);
/* Pushes v as luajson_decode pushes its text (the same types, limits and
 * metatables), without the text: for values the engine holds parsed.
 * Returns 0, or -1 (nothing pushed) with err. */
int luajson_push_tree(lua_State *L, const json_t *v, int null_idx, char *err, size_t errlen);
/* Pushes the JSON text of the value at idx. Returns 0, or -1 (nothing
 * pushed) with err. */
int luajson_encode(lua_State *L, int idx, int null_idx, char *err, size_t errlen);
/* Pushes the metatable decoded arrays carry (created on first use). */
void luajson_push_array_mt(lua_State *L);

#endif
