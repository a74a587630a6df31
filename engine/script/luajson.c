/* luajson.c — JSON for scripts: yajl parses and generates, this file only
 * moves values between yajl and Lua. Unlike lua-cjson 2.1.0 (Debian 12), it
 * keeps arrays apart from objects: a decoded array carries the shared
 * metatable ratchet.json.array, so [] and {} survive a round trip and JSON
 * Schema's "type" can tell them apart. JSON null is lua-cjson's null
 * (a light userdata), so both libraries agree on it. */
#include "script/luajson.h"

#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistr.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

#include "base/util.h"
#include "base/jtree.h"

#define MAX_DEPTH 1000
/* yajl_gen's own limit (YAJL_MAX_DEPTH, fixed when yajl is built): past it
 * yajl_gen_*_open fail, and the text would come out unbalanced */
#define YAJL_DEPTH 128
#define STR_(x) #x
#define STR(x) STR_(x)

static const char array_mt_key[] = "ratchet.json.array";

void luajson_push_array_mt(lua_State *L)
{
    if (luaL_getmetatable(L, array_mt_key) == LUA_TNIL) {
        lua_pop(L, 1);
        luaL_newmetatable(L, array_mt_key);
        lua_pushliteral(L, "json array");
        lua_setfield(L, -2, "__name");
        lua_pushliteral(L, "json array"); /* scripts cannot alter the shared table */
        lua_setfield(L, -2, "__metatable");
    }
}

/* Decoding builds the value on the Lua stack straight from yajl's
 * callbacks: each open container sits on the stack, with (for objects) the
 * pending key above it. */
typedef struct {
    lua_State *L;
    int null_idx;
    int depth;
    bool too_deep;
    bool too_big;
    lua_Integer count[MAX_DEPTH + 2]; /* items so far per open array; -1 for objects */
} dec;

/* Adds the value on top of the stack to the open container, if any. */
static int add_value(dec *d)
{
    lua_State *L = d->L;
    if (d->depth == 0)
        return 1;
    if (d->count[d->depth] >= 0)
        lua_rawseti(L, -2, ++d->count[d->depth]);
    else
        lua_rawset(L, -3); /* container, key, value */
    return 1;
}

static int cb_null(void *ctx)
{
    dec *d = ctx;
    lua_pushvalue(d->L, d->null_idx);
    return add_value(d);
}

static int cb_boolean(void *ctx, int b)
{
    dec *d = ctx;
    lua_pushboolean(d->L, b);
    return add_value(d);
}

static int cb_number(void *ctx, const char *s, size_t len)
{
    dec *d = ctx;
    char num[64];
    if (len >= sizeof num) { /* a long literal: only a float can hold it */
        char *big = strndup(s, len);
        double v = big ? strtod(big, NULL) : HUGE_VAL;
        free(big);
        if (!isfinite(v)) {
            d->too_big = true; /* it would come back as infinity, which no JSON holds */
            return 0;
        }
        lua_pushnumber(d->L, v);
        return add_value(d);
    }
    memcpy(num, s, len);
    num[len] = '\0';
    if (!strpbrk(num, ".eE")) {
        errno = 0;
        long long v = strtoll(num, NULL, 10);
        if (errno == 0) {
            lua_pushinteger(d->L, (lua_Integer)v);
            return add_value(d);
        }
    }
    double v = strtod(num, NULL);
    if (!isfinite(v)) {
        d->too_big = true;
        return 0;
    }
    lua_pushnumber(d->L, v);
    return add_value(d);
}

static int cb_string(void *ctx, const unsigned char *s, size_t len)
{
    dec *d = ctx;
    lua_pushlstring(d->L, (const char *)s, len);
    return add_value(d);
}

static int open_container(dec *d, bool array)
{
    if (d->depth >= MAX_DEPTH || !lua_checkstack(d->L, 6)) {
        d->too_deep = true;
        return 0;
    }
    /* room for a few items from the start: most JSON containers are small,
     * and growing a table from nothing rehashes it at 1, 2 and 4 items */
    if (array)
        lua_createtable(d->L, 4, 0);
    else
        lua_createtable(d->L, 0, 4);
    d->count[++d->depth] = array ? 0 : -1;
    return 1;
}

static int close_container(dec *d)
{
    d->depth--;
    return add_value(d);
}

static int cb_start_map(void *ctx) { return open_container(ctx, false); }
static int cb_end_map(void *ctx) { return close_container(ctx); }

static int cb_map_key(void *ctx, const unsigned char *s, size_t len)
{
    dec *d = ctx;
    lua_pushlstring(d->L, (const char *)s, len);
    return 1;
}

static int cb_start_array(void *ctx) { return open_container(ctx, true); }

static int cb_end_array(void *ctx)
{
    dec *d = ctx;
    luajson_push_array_mt(d->L);
    lua_setmetatable(d->L, -2);
    return close_container(d);
}

static const yajl_callbacks callbacks = {
    cb_null, cb_boolean, NULL, NULL, cb_number, cb_string,
    cb_start_map, cb_map_key, cb_end_map, cb_start_array, cb_end_array,
};

int luajson_decode(lua_State *L, const char *text, size_t len, int null_idx, char *err, size_t errlen)
{
    dec *d = malloc(sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    d->L = L;
    d->null_idx = lua_absindex(L, null_idx);
    d->depth = 0;
    d->too_deep = false;
    d->too_big = false;
    int top = lua_gettop(L);
    yajl_handle h = yajl_alloc(&callbacks, NULL, d);
    /* like lua-cjson, strings are passed on as they are: scripts see
     * invalid UTF-8 and judge it, rather than the whole value being lost */
    yajl_config(h, yajl_dont_validate_strings, 1);
    yajl_status st = yajl_parse(h, (const unsigned char *)text, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    int rc = 0;
    if (st != yajl_status_ok || lua_gettop(L) != top + 1) {
        if (d->too_deep) {
            snprintf(err, errlen, "nested deeper than %d levels", MAX_DEPTH);
        } else if (d->too_big) {
            snprintf(err, errlen, "a number is too large for a double");
        } else {
            jtree_yajl_error(h, st, err, errlen);
        }
        lua_settop(L, top);
        rc = -1;
    }
    yajl_free(h);
    free(d);
    return rc;
}

static bool push_tree(lua_State *L, const json_t *v, int null_idx, int depth)
{
    if ((json_is_object(v) || json_is_array(v)) && (depth > MAX_DEPTH || !lua_checkstack(L, 4)))
        return false; /* the same limit as decoding: containers nested deeper than MAX_DEPTH */
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        size_t klen;
        json_t *x;
        lua_createtable(L, 0, (int)json_object_size(v));
        json_object_keylen_foreach((json_t *)v, k, klen, x) {
            lua_pushlstring(L, k, klen);
            if (!push_tree(L, x, null_idx, depth + 1))
                return false;
            lua_rawset(L, -3);
        }
        return true;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        lua_createtable(L, n < INT_MAX ? (int)n : 0, 0);
        for (size_t i = 0; i < n; i++) {
            if (!push_tree(L, json_array_get(v, i), null_idx, depth + 1))
                return false;
            lua_rawseti(L, -2, (lua_Integer)i + 1);
        }
        luajson_push_array_mt(L);
        lua_setmetatable(L, -2);
        return true;
    }
    case JSON_STRING:
        lua_pushlstring(L, json_string_value(v), json_string_length(v));
        return true;
    case JSON_INTEGER:
        lua_pushinteger(L, (lua_Integer)json_integer_value(v));
        return true;
    case JSON_REAL:
        lua_pushnumber(L, json_real_value(v));
        return true;
    case JSON_TRUE:
    case JSON_FALSE:
        lua_pushboolean(L, json_is_true(v));
        return true;
    case JSON_NULL:
        lua_pushvalue(L, null_idx);
        return true;
    }
    return false;
}

int luajson_push_tree(lua_State *L, const json_t *v, int null_idx, char *err, size_t errlen)
{
    int top = lua_gettop(L);
    if (!v || !push_tree(L, v, lua_absindex(L, null_idx), 1)) {
        lua_settop(L, top);
        snprintf(err, errlen, v ? "nested deeper than %d levels" : "no value", MAX_DEPTH);
        return -1;
    }
    return 0;
}

/* ---- encoding ---- */

typedef struct {
    yajl_gen g;
    const char *error;
    char buf[160];
} enc;

static bool is_array(lua_State *L, int idx, lua_Integer *n)
{
    *n = (lua_Integer)lua_rawlen(L, idx);
    if (lua_getmetatable(L, idx)) {
        luajson_push_array_mt(L);
        bool arr = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
        if (arr)
            return true;
    }
    if (*n == 0)
        return false;
    lua_Integer count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > *n) {
            lua_pop(L, 1);
            return false;
        }
        count++;
    }
    return count == *n;
}

static bool encode_value(lua_State *L, enc *e, int idx, int depth, int null_idx)
{
    idx = lua_absindex(L, idx);
    if (depth > MAX_DEPTH || !lua_checkstack(L, 4)) {
        e->error = "nested deeper than 1000 levels (or a table contains itself)";
        return false;
    }
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        yajl_gen_null(e->g);
        return true;
    case LUA_TBOOLEAN:
        yajl_gen_bool(e->g, lua_toboolean(L, idx));
        return true;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            yajl_gen_integer(e->g, (long long)lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d)) {
                e->error = "cannot encode NaN or infinity";
                return false;
            }
            char num[40];
            int n = (int)num_text(d, num); /* the shortest text that reads back as d: 0.1, not 0.10000000000000001 */
            if (!strpbrk(num, ".eE") && n < 36) /* keep it a float: 2.0, not 2 */
                n += snprintf(num + n, sizeof num - (size_t)n, ".0");
            yajl_gen_number(e->g, num, (size_t)n);
        }
        return true;
    case LUA_TSTRING: {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        /* strictly (RFC 3629): yajl's own check lets UTF-16 surrogates and
         * overlong forms through, which jansson readers then refuse (found by
         * fuzz_luajson: a decoded lone \ud800 encoded back as it was) */
        if (u8_check((const uint8_t *)s, len) || yajl_gen_string(e->g, (const unsigned char *)s, len) != yajl_gen_status_ok) {
            e->error = "a string is not valid UTF-8";
            return false;
        }
        return true;
    }
    case LUA_TLIGHTUSERDATA:
        if (lua_rawequal(L, idx, null_idx)) {
            yajl_gen_null(e->g);
            return true;
        }
        break;
    case LUA_TTABLE: {
        lua_Integer n;
        if (is_array(L, idx, &n)) {
            if (yajl_gen_array_open(e->g) != yajl_gen_status_ok) {
                e->error = "nested deeper than " STR(YAJL_DEPTH) " levels (the most JSON encoding takes)";
                return false;
            }
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(L, idx, i);
                bool ok = encode_value(L, e, -1, depth + 1, null_idx);
                lua_pop(L, 1);
                if (!ok)
                    return false;
            }
            yajl_gen_array_close(e->g);
            return true;
        }
        if (yajl_gen_map_open(e->g) != yajl_gen_status_ok) {
            e->error = "nested deeper than " STR(YAJL_DEPTH) " levels (the most JSON encoding takes)";
            return false;
        }
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            const char *k;
            size_t klen;
            char kbuf[32];
            if (lua_type(L, -2) == LUA_TSTRING) {
                k = lua_tolstring(L, -2, &klen);
            } else if (lua_isinteger(L, -2)) {
                klen = (size_t)snprintf(kbuf, sizeof kbuf, "%lld", (long long)lua_tointeger(L, -2));
                k = kbuf;
            } else {
                lua_pop(L, 2);
                e->error = "object keys must be strings or integers";
                return false;
            }
            if (u8_check((const uint8_t *)k, klen) ||
                yajl_gen_string(e->g, (const unsigned char *)k, klen) != yajl_gen_status_ok) {
                lua_pop(L, 2);
                e->error = "a key is not valid UTF-8";
                return false;
            }
            bool ok = encode_value(L, e, -1, depth + 1, null_idx);
            lua_pop(L, 1);
            if (!ok) {
                lua_pop(L, 1);
                return false;
            }
        }
        yajl_gen_map_close(e->g);
        return true;
    }
    default:
        break;
    }
    snprintf(e->buf, sizeof e->buf, "cannot encode a %s as JSON", luaL_typename(L, idx));
    e->error = e->buf;
    return false;
}

int luajson_encode(lua_State *L, int idx, int null_idx, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    null_idx = lua_absindex(L, null_idx);
    enc e = {.g = yajl_gen_alloc(NULL)};
    yajl_gen_config(e.g, yajl_gen_validate_utf8, 1);
    int top = lua_gettop(L);
    bool ok = encode_value(L, &e, idx, 0, null_idx);
    lua_settop(L, top);
    if (ok) {
        const unsigned char *out;
        size_t len;
        yajl_gen_get_buf(e.g, &out, &len);
        lua_pushlstring(L, (const char *)out, len);
    } else {
        snprintf(err, errlen, "%s", e.error);
    }
    yajl_gen_free(e.g);
    return ok ? 0 : -1;
}
