/* config.c — reads ratchet.conf, a Lua file, in a sandbox.
 *
 * The file runs with its own environment: a proxy whose __newindex checks
 * each assignment against the table of settings below (unknown key, wrong
 * type, out-of-range value: an error naming the key and the line) and whose
 * __index offers only a few safe helpers and the settings already made, so a
 * typo on the right-hand side is an error too. No io, os, require or load. */
#include "config.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "util.h"

#if LUA_VERSION_NUM != 504
#error "ratchet needs Lua 5.4"
#endif

enum setting_type { T_STRING, T_SECRET, T_INT, T_BOOL, T_LEVEL, T_LOG_FORMAT, T_LISTEN, T_LIMITS };

typedef struct {
    const char *name;
    enum setting_type type;
    size_t offset;
    long min, max;
} setting;

#define OFF(field) offsetof(config, field)
#define LOFF(field) offsetof(config_limits, field)

static const setting settings[] = {
    {"listen", T_LISTEN, OFF(listen), 0, 0},
    {"data_dir", T_STRING, OFF(data_dir), 0, 0},
    {"ingest_token", T_SECRET, OFF(ingest_token), 0, 0},
    {"admin_token", T_SECRET, OFF(admin_token), 0, 0},
    {"log_level", T_LEVEL, OFF(log_level), 0, 0},
    {"log_format", T_LOG_FORMAT, OFF(log_format), 0, 0},
    {"access_log", T_BOOL, OFF(access_log), 0, 0},
    {"limits", T_LIMITS, OFF(limits), 0, 0},
    {NULL, 0, 0, 0, 0},
};

static const setting limit_settings[] = {
    {"max_connections", T_INT, LOFF(max_connections), 1, 1000000},
    {"max_header_bytes", T_INT, LOFF(max_header_bytes), 1024, 1 << 20},
    {"max_body_bytes", T_INT, LOFF(max_body_bytes), 1024, 1 << 30},
    {"max_batch_items", T_INT, LOFF(max_batch_items), 1, 1000000},
    {"header_timeout_ms", T_INT, LOFF(header_timeout_ms), 10, 3600000},
    {"body_timeout_ms", T_INT, LOFF(body_timeout_ms), 10, 3600000},
    {"idle_timeout_ms", T_INT, LOFF(idle_timeout_ms), 10, 86400000},
    {"shutdown_timeout_ms", T_INT, LOFF(shutdown_timeout_ms), 10, 600000},
    {"max_pending_writes", T_INT, LOFF(max_pending_writes), 100, 100000000},
    {NULL, 0, 0, 0, 0},
};

/* The config file may call these and nothing else. */
static const char *const allowed_globals[] = {
    "string", "table", "math", "tostring", "tonumber", "type", "pairs", "ipairs",
    "select", "error", "assert", "next", NULL,
};

void config_defaults(config *c)
{
    memset(c, 0, sizeof *c);
    c->listen = xstrdup("127.0.0.1:7700");
    const char *state = getenv("STATE_DIRECTORY"); /* set by systemd's StateDirectory= */
    c->data_dir = xstrdup(state && *state ? state : "/var/lib/ratchet");
    c->log_level = xstrdup("info");
    c->log_format = xstrdup("text");
    c->access_log = true;
    c->limits.max_connections = 1024;
    c->limits.max_header_bytes = 16 * 1024;
    c->limits.max_body_bytes = 8 * 1024 * 1024;
    c->limits.max_batch_items = 10000;
    c->limits.header_timeout_ms = 10000;
    c->limits.body_timeout_ms = 30000;
    c->limits.idle_timeout_ms = 60000;
    c->limits.shutdown_timeout_ms = 5000;
    c->limits.max_pending_writes = 200000;
}

void config_free(config *c)
{
    free(c->path);
    free(c->listen);
    free(c->data_dir);
    free(c->ingest_token);
    free(c->admin_token);
    free(c->log_level);
    free(c->log_format);
    memset(c, 0, sizeof *c);
}

int config_parse_listen(const char *listen, char *host, size_t hostlen, int *port)
{
    const char *colon;
    const char *hstart = listen;
    size_t hlen;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':')
            return -1;
        hstart = listen + 1;
        hlen = (size_t)(close - hstart);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon)
            return -1;
        hlen = (size_t)(colon - listen);
    }
    if (hlen == 0 || hlen >= hostlen)
        return -1;
    memcpy(host, hstart, hlen);
    host[hlen] = '\0';
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p < 0 || p > 65535)
        return -1;
    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    if (uv_ip4_addr(host, (int)p, &a4) != 0 && uv_ip6_addr(host, (int)p, &a6) != 0)
        return -1;
    *port = (int)p;
    return 0;
}

/* Raises "file:line: message" at the line of the Lua code that called the C
 * function raising it (level 1): the assignment or helper call being checked. */
static int config_error(lua_State *L, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    luaL_where(L, 1);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_concat(L, 2);
    return lua_error(L);
}

static const setting *find_setting(const setting *table, const char *name)
{
    for (const setting *s = table; s->name; s++)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

static void store_string(char **slot, const char *value)
{
    free(*slot);
    *slot = xstrdup(value);
}

/* Checks the value at stack index idx for setting s (named full) and writes it
 * into base. Raises on any mismatch. */
static void apply_setting(lua_State *L, void *base, const setting *s, const char *full, int idx)
{
    int t = lua_type(L, idx);
    switch (s->type) {
    case T_STRING:
    case T_SECRET:
    case T_LEVEL:
    case T_LOG_FORMAT:
    case T_LISTEN: {
        if (s->type == T_SECRET && t == LUA_TNIL) {
            char **slot = (char **)((char *)base + s->offset);
            free(*slot);
            *slot = NULL;
            return;
        }
        if (t != LUA_TSTRING)
            config_error(L, "'%s' must be a string (got %s)", full, lua_typename(L, t));
        size_t len;
        const char *v = lua_tolstring(L, idx, &len);
        if (len == 0 || strlen(v) != len)
            config_error(L, "'%s' must be a non-empty string without NUL bytes", full);
        if (s->type == T_LEVEL && strcmp(v, "debug") && strcmp(v, "info") && strcmp(v, "warn") &&
            strcmp(v, "error"))
            config_error(L, "'%s' must be one of debug, info, warn, error (got '%s')", full, v);
        if (s->type == T_LOG_FORMAT && strcmp(v, "text") && strcmp(v, "json"))
            config_error(L, "'%s' must be \"text\" or \"json\" (got '%s')", full, v);
        if (s->type == T_LISTEN) {
            char host[256];
            int port;
            if (config_parse_listen(v, host, sizeof host, &port) != 0)
                config_error(L, "'%s' must be an IP address and port like \"127.0.0.1:7700\" or \"[::1]:7700\" (got '%s')", full, v);
        }
        if (s->type == T_SECRET && len < 16)
            config_error(L, "'%s' must be at least 16 characters long", full);
        store_string((char **)((char *)base + s->offset), v);
        return;
    }
    case T_INT: {
        if (!lua_isinteger(L, idx))
            config_error(L, "'%s' must be an integer (got %s)", full,
                         t == LUA_TNUMBER ? "a fractional number" : lua_typename(L, t));
        lua_Integer v = lua_tointeger(L, idx);
        if (v < s->min || v > s->max)
            config_error(L, "'%s' must be between %d and %d (got %I)", full, (int)s->min, (int)s->max, v);
        *(int *)((char *)base + s->offset) = (int)v;
        return;
    }
    case T_BOOL:
        if (t != LUA_TBOOLEAN)
            config_error(L, "'%s' must be true or false (got %s)", full, lua_typename(L, t));
        *(bool *)((char *)base + s->offset) = lua_toboolean(L, idx);
        return;
    case T_LIMITS: {
        if (t != LUA_TTABLE)
            config_error(L, "'%s' must be a table (got %s)", full, lua_typename(L, t));
        config_limits *lim = (config_limits *)((char *)base + s->offset);
        lua_pushnil(L);
        while (lua_next(L, idx) != 0) {
            if (lua_type(L, -2) != LUA_TSTRING)
                config_error(L, "'%s' has a key that is not a name", full);
            const char *k = lua_tostring(L, -2);
            const setting *sub = find_setting(limit_settings, k);
            if (!sub)
                config_error(L, "unknown key '%s.%s'", full, k);
            char name[128];
            snprintf(name, sizeof name, "%s.%s", full, k);
            apply_setting(L, lim, sub, name, lua_gettop(L));
            lua_pop(L, 1);
        }
        return;
    }
    }
}

/* __newindex(env, key, value): validate, apply, remember for later reads. */
static int env_newindex(lua_State *L)
{
    config *c = lua_touserdata(L, lua_upvalueindex(1));
    if (lua_type(L, 2) != LUA_TSTRING)
        return config_error(L, "settings are named by strings");
    const char *k = lua_tostring(L, 2);
    const setting *s = find_setting(settings, k);
    if (!s)
        return config_error(L, "unknown key '%s'", k);
    apply_setting(L, c, s, k, 3);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, lua_upvalueindex(2)); /* shadow[k] = v */
    return 0;
}

/* __index(env, key): settings made so far, then the allowed helpers. */
static int env_index(lua_State *L)
{
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) /* shadow */
        return 1;
    lua_pop(L, 1);
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL) /* helpers */
        return 1;
    const char *k = lua_tostring(L, 2);
    if (k && find_setting(settings, k))
        return 1; /* a known setting not made yet reads as nil */
    return config_error(L, "unknown name '%s'", k ? k : "?");
}

/* env(NAME) -> the environment variable's value, or nil. */
static int helper_env(lua_State *L)
{
    const char *v = getenv(luaL_checkstring(L, 1));
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

static int push_file_contents(lua_State *L, const char *path, const char *what)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return config_error(L, "%s: cannot read '%s': %s", what, path, strerror(errno));
    buf_t b;
    buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && b.len < (1 << 20))
        buf_append(&b, chunk, n);
    fclose(f);
    while (b.len && (b.data[b.len - 1] == '\n' || b.data[b.len - 1] == '\r' || b.data[b.len - 1] == ' '))
        b.len--;
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    buf_free(&b);
    return 1;
}

/* file(PATH) -> contents with trailing newlines removed; relative paths are
 * relative to the config file's folder. */
static int helper_file(lua_State *L)
{
    const char *p = luaL_checkstring(L, 1);
    if (p[0] == '/')
        return push_file_contents(L, p, "file()");
    const char *dir = lua_tostring(L, lua_upvalueindex(1));
    lua_pushfstring(L, "%s/%s", dir, p);
    return push_file_contents(L, lua_tostring(L, -1), "file()");
}

/* credential(NAME) -> a systemd credential ($CREDENTIALS_DIRECTORY/NAME). */
static int helper_credential(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    if (strchr(name, '/'))
        return config_error(L, "credential(): '%s' is a path, not a credential name", name);
    const char *dir = getenv("CREDENTIALS_DIRECTORY");
    if (!dir)
        return config_error(L, "credential('%s'): $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)", name);
    lua_pushfstring(L, "%s/%s", dir, name);
    return push_file_contents(L, lua_tostring(L, -1), "credential()");
}

static void instruction_limit(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    luaL_error(L, "configuration took too long to run (over 100 million instructions)");
}

static int load_protected(lua_State *L)
{
    config *c = lua_touserdata(L, 1);
    const char *path = lua_tostring(L, 2);

    static const luaL_Reg libs[] = {
        {LUA_GNAME, luaopen_base}, {LUA_STRLIBNAME, luaopen_string},
        {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math}, {NULL, NULL},
    };
    for (const luaL_Reg *l = libs; l->func; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }

    /* helpers = the allowed globals plus env/file/credential */
    lua_newtable(L);
    int helpers = lua_gettop(L);
    for (const char *const *g = allowed_globals; *g; g++) {
        lua_getglobal(L, *g);
        lua_setfield(L, helpers, *g);
    }
    lua_pushcfunction(L, helper_env);
    lua_setfield(L, helpers, "env");
    const char *slash = strrchr(path, '/');
    if (slash)
        lua_pushlstring(L, path, (size_t)(slash - path));
    else
        lua_pushliteral(L, ".");
    lua_pushcclosure(L, helper_file, 1);
    lua_setfield(L, helpers, "file");
    lua_pushcfunction(L, helper_credential);
    lua_setfield(L, helpers, "credential");

    lua_newtable(L); /* shadow of the settings made */
    int shadow = lua_gettop(L);

    lua_newtable(L); /* the file's _ENV: always empty, all through metamethods */
    int env = lua_gettop(L);
    lua_newtable(L);
    lua_pushvalue(L, shadow);
    lua_pushvalue(L, helpers);
    lua_pushcclosure(L, env_index, 2);
    lua_setfield(L, -2, "__index");
    lua_pushlightuserdata(L, c);
    lua_pushvalue(L, shadow);
    lua_pushcclosure(L, env_newindex, 2);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, env);

    if (luaL_loadfilex(L, path, "t") != LUA_OK)
        return lua_error(L);
    lua_pushvalue(L, env);
    lua_setupvalue(L, -2, 1); /* the chunk's _ENV */
    lua_sethook(L, instruction_limit, LUA_MASKCOUNT, 100000000);
    lua_call(L, 0, 0);
    return 0;
}

int config_load(config *c, const char *path, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    lua_pushcfunction(L, load_protected);
    lua_pushlightuserdata(L, c);
    lua_pushstring(L, path);
    int rc = lua_pcall(L, 2, 0, 0);
    if (rc != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        snprintf(err, errlen, "%s", msg ? msg : "error in configuration");
        lua_close(L);
        return -1;
    }
    lua_close(L);
    free(c->path);
    c->path = xstrdup(path);
    return 0;
}
