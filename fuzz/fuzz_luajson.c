/* fuzz_luajson.c — libFuzzer target: JSON for scripts (luajson.c), the
 * decoder scripts reach through ratchet.json.decode and the engine uses for
 * every case it hands an evaluator. A text that decodes must encode again
 * (or refuse with a message: encoding stops at 128 levels, decoding at
 * 1000, or a string that is not UTF-8), and its encoding must decode to the
 * same JSON value (a fixed point; jansson compares, key order aside).
 * The first run found encode writing unbalanced text past 128 levels. */
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "script/luajson.h"

static lua_State *L;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L) {
        L = luaL_newstate();
        lua_pushlightuserdata(L, NULL); /* stands for JSON null, as cjson.null does */
    }
    int top = lua_gettop(L);
    char err[300];
    if (luajson_decode(L, (const char *)data, size, 1, err, sizeof err) == 0) {
        if (luajson_encode(L, -1, 1, err, sizeof err) != 0) {
            /* yajl_gen's depth limit, or a string that is not UTF-8 (decode
             * hands scripts strings as they are, encode refuses them): both
             * errors said as such */
            if (strstr(err, "nested deeper than 128") || strstr(err, "not valid UTF-8")) {
                lua_settop(L, top);
                return 0;
            }
            fprintf(stderr, "decoded but cannot encode: %s\n", err);
            abort();
        }
        size_t n1;
        const char *t1 = lua_tolstring(L, -1, &n1);
        if (luajson_decode(L, t1, n1, 1, err, sizeof err) != 0) {
            fprintf(stderr, "its own encoding does not decode: %s: %.*s\n", err, (int)n1, t1);
            abort();
        }
        if (luajson_encode(L, -1, 1, err, sizeof err) != 0)
            abort();
        size_t n2;
        const char *t2 = lua_tolstring(L, -1, &n2);
        /* the same JSON value (key order follows the Lua table, which may differ) */
        json_t *j1 = json_loadb(t1, n1, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL),
               *j2 = json_loadb(t2, n2, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (!j1 || !j2 || !json_equal(j1, j2)) {
            fprintf(stderr, "not a fixed point:\n%.*s\n%.*s\n", (int)n1, t1, (int)n2, t2);
            abort();
        }
        json_decref(j1);
        json_decref(j2);
    }
    lua_settop(L, top);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
