/* jtree.c — jansson trees through yajl (see jtree.h). yajl parses and
 * generates; this file only moves values between yajl and jansson. */
#include "base/jtree.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistr.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>


#define MAX_DEPTH 2048 /* jansson's own parser limit */

/* ---- parsing ---- */

typedef struct {
    json_t **stack; /* open containers */
    int depth, cap;
    json_t *root;
    buf_t key;      /* a pending object key yajl decoded (it reuses its buffer for the value) */
    const char *kp; /* the pending key: in key, or in the input */
    size_t kn;
    const char *error;
    /* the input: a string or key yajl hands over from inside it (one
     * without escapes) stays there during the parse; when the input is
     * known to be valid UTF-8 (jtree_parse_utf8) such a string is valid too,
     * and holds no NUL (yajl refuses raw control characters) */
    const char *in, *in_end;
    bool valid;
} parse_ctx;

static inline bool in_text(const parse_ctx *p, const unsigned char *s)
{
    return (const char *)s >= p->in && (const char *)s < p->in_end;
}

static int add(parse_ctx *p, json_t *v)
{
    if (!v) {
        p->error = p->error ? p->error : "out of memory";
        return 0;
    }
    if (p->depth == 0) {
        p->root = v;
        return 1;
    }
    json_t *top = p->stack[p->depth - 1];
    int rc = json_is_array(top) ? json_array_append_new(top, v)
                                : json_object_setn_new_nocheck(top, p->kp, p->kn, v);
    return rc == 0;
}

static int cb_null(void *ctx) { return add(ctx, json_null()); }
static int cb_boolean(void *ctx, int b) { return add(ctx, json_boolean(b)); }

static int cb_number(void *ctx, const char *s, size_t len)
{
    parse_ctx *p = ctx;
    char small[64], *num = len < sizeof small ? small : strndup(s, len);
    if (!num)
        return 0;
    if (num == small) {
        memcpy(small, s, len);
        small[len] = '\0';
    }
    json_t *v = NULL;
    errno = 0;
    if (!strpbrk(num, ".eE")) {
        long long i = strtoll(num, NULL, 10);
        if (errno == ERANGE)
            p->error = "too big integer";
        else
            v = json_integer(i);
    } else {
        double d = strtod(num, NULL);
        if (errno == ERANGE && (d == HUGE_VAL || d == -HUGE_VAL))
            p->error = "real number overflow";
        else
            v = json_real(d);
    }
    if (num != small)
        free(num);
    return v ? add(p, v) : 0;
}

static int cb_string(void *ctx, const unsigned char *s, size_t len)
{
    parse_ctx *p = ctx;
    if (p->valid && in_text(p, s))
        return add(p, json_stringn_nocheck((const char *)s, len));
    if (memchr(s, '\0', len)) {
        p->error = "NUL byte in string not supported";
        return 0;
    }
    if (u8_check(s, len)) { /* strict (RFC 3629), as jansson is: yajl lets overlong forms through */
        p->error = "invalid UTF-8 in string";
        return 0;
    }
    return add(p, json_stringn_nocheck((const char *)s, len));
}

static int open_container(parse_ctx *p, json_t *c)
{
    if (!c || p->depth >= MAX_DEPTH) {
        json_decref(c);
        p->error = c ? "maximum parsing depth reached" : "out of memory";
        return 0;
    }
    json_incref(c); /* one reference for the stack, one for the parent */
    if (!add(p, c)) {
        json_decref(c);
        return 0;
    }
    if (p->depth == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 16;
        p->stack = xrealloc(p->stack, (size_t)p->cap * sizeof *p->stack);
    }
    p->stack[p->depth++] = c;
    return 1;
}

static int close_container(void *ctx)
{
    parse_ctx *p = ctx;
    json_decref(p->stack[--p->depth]);
    return 1;
}

static int cb_start_map(void *ctx) { return open_container(ctx, json_object()); }
static int cb_start_array(void *ctx) { return open_container(ctx, json_array()); }

static int cb_map_key(void *ctx, const unsigned char *s, size_t len)
{
    parse_ctx *p = ctx;
    bool inside = in_text(p, s);
    if (!(inside && p->valid)) {
        if (memchr(s, '\0', len)) {
            p->error = "NUL byte in object key not supported";
            return 0;
        }
        if (u8_check(s, len)) {
            p->error = "invalid UTF-8 in object key";
            return 0;
        }
    }
    if (inside) { /* the input outlives the parse: no copy */
        p->kp = (const char *)s;
        p->kn = len;
        return 1;
    }
    buf_reset(&p->key);
    buf_append(&p->key, s, len);
    p->kp = p->key.data;
    p->kn = p->key.len;
    return 1;
}

static const yajl_callbacks callbacks = {
    cb_null, cb_boolean, NULL, NULL, cb_number, cb_string,
    cb_start_map, cb_map_key, close_container, cb_start_array, close_container,
};

static json_t *parse(const char *text, size_t len, bool valid_utf8, char *err, size_t errlen)
{
    parse_ctx p = {.in = text, .in_end = text + len, .valid = valid_utf8};
    buf_init(&p.key);
    yajl_handle h = yajl_alloc(&callbacks, NULL, &p);
    yajl_config(h, yajl_dont_validate_strings, 1); /* u8_check does it, strictly */
    yajl_status st = yajl_parse(h, (const unsigned char *)text, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    if (st != yajl_status_ok || !p.root) {
        if (p.error) {
            snprintf(err, errlen, "%s", p.error);
        } else {
            jtree_yajl_error(h, st, err, errlen);
        }
        while (p.depth > 0)
            json_decref(p.stack[--p.depth]);
        json_decref(p.root);
        p.root = NULL;
    }
    yajl_free(h);
    free(p.stack);
    buf_free(&p.key);
    return p.root;
}

json_t *jtree_parse(const char *text, size_t len, char *err, size_t errlen)
{
    return parse(text, len, false, err, errlen);
}

json_t *jtree_parse_utf8(const char *text, size_t len, char *err, size_t errlen)
{
    return parse(text, len, true, err, errlen);
}

/* ---- writing ---- */

/* jansson's real format: %.17g, ".0" when it would read back as an integer,
 * the exponent without '+' or leading zeros. */
size_t jtree_real_text(double d, char out[40])
{
    if (d == 0 || d == 1) { /* scores, mostly: no printf */
        const char *t = signbit(d) ? "-0.0" : d ? "1.0" : "0.0";
        size_t n = strlen(t);
        memcpy(out, t, n + 1);
        return n;
    }
    int n = isfinite(d) ? snprintf(out, 40, "%.17g", d) : -1;
    if (n < 0 || n >= 40)
        return 0;
    if (!strpbrk(out, ".e")) {
        memcpy(out + n, ".0", 3);
        n += 2;
    }
    char *e = strchr(out, 'e');
    if (e) {
        char *from = e + 1, *to = e + 1;
        if (*from == '-')
            *to++ = *from++;
        else if (*from == '+')
            from++;
        while (*from == '0' && from[1])
            from++;
        memmove(to, from, strlen(from) + 1);
        n = (int)strlen(out);
    }
    return (size_t)n;
}

/* A real as the shortest text that reads back as the same double, kept a
 * real ("3.0", "0.8", "1e+300"); 0 for NaN or infinity. */
static size_t real_short(double d, char out[40])
{
    if (!isfinite(d))
        return 0;
    size_t n = num_text(d, out);
    if (!strpbrk(out, ".e")) {
        memcpy(out + n, ".0", 3);
        n += 2;
    }
    return n;
}

static yajl_gen_status gen(yajl_gen g, const json_t *v, bool shortest)
{
    yajl_gen_status st = yajl_gen_status_ok;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        size_t klen;
        json_t *x;
        st = yajl_gen_map_open(g);
        json_object_keylen_foreach((json_t *)v, k, klen, x) {
            if (st == yajl_gen_status_ok)
                st = yajl_gen_string(g, (const unsigned char *)k, klen);
            if (st == yajl_gen_status_ok)
                st = gen(g, x, shortest);
        }
        return st == yajl_gen_status_ok ? yajl_gen_map_close(g) : st;
    }
    case JSON_ARRAY: {
        st = yajl_gen_array_open(g);
        for (size_t i = 0; st == yajl_gen_status_ok && i < json_array_size(v); i++)
            st = gen(g, json_array_get(v, i), shortest);
        return st == yajl_gen_status_ok ? yajl_gen_array_close(g) : st;
    }
    case JSON_STRING:
        return yajl_gen_string(g, (const unsigned char *)json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        return yajl_gen_integer(g, (long long)json_integer_value(v));
    case JSON_REAL: {
        char t[40];
        size_t n = shortest ? real_short(json_real_value(v), t) : jtree_real_text(json_real_value(v), t);
        return n ? yajl_gen_number(g, t, n) : yajl_gen_invalid_number;
    }
    case JSON_TRUE:
    case JSON_FALSE:
        return yajl_gen_bool(g, json_is_true(v));
    case JSON_NULL:
        return yajl_gen_null(g);
    }
    return yajl_gen_invalid_number;
}

static void dump_fallback(buf_t *b, const json_t *v)
{
    char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    buf_puts(b, t ? t : "null");
    free(t);
}

void jtree_dump_buf(buf_t *b, const json_t *v)
{
    if (!v) {
        buf_puts(b, "null");
        return;
    }
    yajl_gen g = yajl_gen_alloc(NULL);
    if (gen(g, v, false) == yajl_gen_status_ok) {
        const unsigned char *out;
        size_t len;
        yajl_gen_get_buf(g, &out, &len);
        buf_append(b, out, len);
    } else {
        dump_fallback(b, v); /* nested past yajl's 128 levels: jansson writes it */
    }
    yajl_gen_free(g);
}

char *jtree_dump(const json_t *v)
{
    buf_t b;
    buf_init(&b);
    jtree_dump_buf(&b, v);
    return buf_steal(&b);
}

/* Re-indents compact JSON text by two spaces per level, as json_dumps'
 * JSON_INDENT(2) does ("key": value, {} and [] kept empty). */
static void indent_into(buf_t *b, const char *s, size_t len)
{
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            buf_append(b, &c, 1);
            if (c == '\\' && i + 1 < len)
                buf_append(b, &s[++i], 1);
            else if (c == '"')
                in_str = false;
            continue;
        }
        switch (c) {
        case '"':
            in_str = true;
            buf_append(b, &c, 1);
            break;
        case '{':
        case '[':
            if (i + 1 < len && (s[i + 1] == '}' || s[i + 1] == ']')) {
                buf_append(b, s + i, 2);
                i++;
                break;
            }
            buf_append(b, &c, 1);
            depth++;
            buf_printf(b, "\n%*s", 2 * depth, "");
            break;
        case '}':
        case ']':
            depth--;
            buf_printf(b, "\n%*s%c", 2 * depth, "", c);
            break;
        case ',':
            buf_printf(b, ",\n%*s", 2 * depth, "");
            break;
        case ':':
            buf_puts(b, ": ");
            break;
        default:
            buf_append(b, &c, 1);
        }
    }
}

char *jtree_dump_text(const json_t *v, bool pretty)
{
    buf_t b;
    buf_init(&b);
    yajl_gen g = yajl_gen_alloc(NULL);
    if (v && gen(g, v, true) == yajl_gen_status_ok) {
        const unsigned char *out;
        size_t len;
        yajl_gen_get_buf(g, &out, &len);
        if (pretty)
            indent_into(&b, (const char *)out, len);
        else
            buf_append(&b, out, len);
    } else {
        char *t = v ? json_dumps(v, JSON_ENCODE_ANY | (pretty ? JSON_INDENT(2) : JSON_COMPACT)) : NULL;
        buf_puts(&b, t ? t : "null"); /* past yajl's 128 levels */
        free(t);
    }
    yajl_gen_free(g);
    if (!b.data)
        buf_puts(&b, "");
    return buf_steal(&b);
}

char *json_text(const json_t *v, size_t flags)
{
    char *t = v ? json_dumps(v, flags | JSON_ENCODE_ANY) : NULL;
    return t ? t : xstrdup("null");
}

void jtree_yajl_error(yajl_handle h, yajl_status st, char *err, size_t errlen)
{
    if (st == yajl_status_ok) {
        snprintf(err, errlen, "no value");
        return;
    }
    unsigned char *msg = yajl_get_error(h, 0, NULL, 0);
    char *nl = strchr((char *)msg, '\n');
    if (nl)
        *nl = '\0';
    snprintf(err, errlen, "%s", (const char *)msg);
    yajl_free_error(h, msg);
}
