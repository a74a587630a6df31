/* ingest.c — request body → validated traces and feedback. The rules here
 * are the ones docs/traces.md and docs/trace.schema.json describe; keep the
 * three in step.
 *
 * This is the hottest path of the engine, so it parses with yajl (several
 * times faster than a DOM library with hashed objects) into yajl's tree for
 * the field checks. The tree code recurses and stops at a NUL, so a text that
 * could hold a hostile depth or a NUL (scan_not_needed says) first goes
 * through a streaming pass that checks syntax, NUL characters and nesting;
 * that pass also words the error of any text the tree parser refuses. UTF-8
 * is checked apart, strictly. Items are stored as the client sent them when
 * the body holds their text verbatim; array items are re-encoded with yajl's
 * generator. */
#include "api/ingest.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>
#include <yajl/yajl_tree.h>

#include "base/util.h"
#include "base/jtree.h"

#define ID_MAX 128
#define NAME_MAX_LEN 128
#define TEXT_MAX (64 * 1024)
#define MAX_INLINE_FEEDBACK 100
/* Hard stop of the checking pass; items deeper than INGEST_MAX_DEPTH are
 * rejected one by one, bodies deeper than this are refused whole. */
#define SCAN_MAX_DEPTH 1000
#define STR_(x) #x
#define STR(x) STR_(x)

/* ---- the checking pass ---- */

typedef struct {
    int depth, max_depth;
    size_t values;       /* complete top-level values seen */
    const char *abort_reason;
} scan_state;

static int scan_open(void *ctx)
{
    scan_state *st = ctx;
    if (++st->depth > SCAN_MAX_DEPTH) {
        st->abort_reason = "nested deeper than " STR(SCAN_MAX_DEPTH) " levels";
        return 0;
    }
    if (st->depth > st->max_depth)
        st->max_depth = st->depth;
    return 1;
}

static int scan_close(void *ctx)
{
    scan_state *st = ctx;
    if (--st->depth == 0)
        st->values++;
    return 1;
}

static int scan_scalar(scan_state *st)
{
    if (st->depth == 0)
        st->values++;
    return 1;
}

static int scan_null(void *ctx) { return scan_scalar(ctx); }
static int scan_bool(void *ctx, int b) { (void)b; return scan_scalar(ctx); }
static int scan_number(void *ctx, const char *s, size_t n) { (void)s; (void)n; return scan_scalar(ctx); }

static int scan_string(void *ctx, const unsigned char *s, size_t n)
{
    scan_state *st = ctx;
    if (memchr(s, '\0', n)) {
        st->abort_reason = "a string holds a NUL character (\\u0000)";
        return 0;
    }
    return scan_scalar(st);
}

static int scan_key(void *ctx, const unsigned char *s, size_t n)
{
    scan_state *st = ctx;
    if (memchr(s, '\0', n)) {
        st->abort_reason = "a key holds a NUL character (\\u0000)";
        return 0;
    }
    return 1;
}

static const yajl_callbacks scan_callbacks = {
    scan_null, scan_bool, NULL, NULL, scan_number, scan_string, scan_open, scan_key, scan_close, scan_open, scan_close,
};

typedef struct {
    bool ok;
    size_t values;
    int max_depth;
    char error[200]; /* with line and column when !ok */
} scan_result;

/* Checks text (NUL-terminated at len). multiple: several top-level values allowed. */
static void scan_json(const char *text, size_t len, bool multiple, scan_result *out)
{
    scan_state st = {0};
    yajl_handle h = yajl_alloc(&scan_callbacks, NULL, &st);
    if (multiple)
        yajl_config(h, yajl_allow_multiple_values, 1);
    yajl_status rc = yajl_parse(h, (const unsigned char *)text, len);
    if (rc == yajl_status_ok)
        rc = yajl_complete_parse(h);
    out->ok = rc == yajl_status_ok;
    out->values = st.values;
    out->max_depth = st.max_depth;
    out->error[0] = '\0';
    if (!out->ok) {
        size_t at = yajl_get_bytes_consumed(h);
        if (at > len)
            at = len;
        int line = 1, col = 1;
        for (size_t i = 0; i < at; i++) {
            if (text[i] == '\n')
                line++, col = 1;
            else
                col++;
        }
        char reason[120];
        if (st.abort_reason) {
            snprintf(reason, sizeof reason, "%s", st.abort_reason);
        } else {
            unsigned char *e = yajl_get_error(h, 0, (const unsigned char *)text, len);
            snprintf(reason, sizeof reason, "%s", (const char *)e);
            yajl_free_error(h, e);
            if (strstr(reason, "UTF8"))
                snprintf(reason, sizeof reason, "not valid UTF-8");
        }
        snprintf(out->error, sizeof out->error, "%s at line %d column %d", reason, line, col);
    }
    yajl_free(h);
}

/* yajl's own UTF-8 check lets overlong forms (C0 80) and code points past
 * U+10FFFF through; libunistring's u8_check is strict (RFC 3629). JSON
 * outside strings is ASCII, so checking the item's whole text checks every
 * string in it. Returns true when valid; else writes where it is not. */
static bool utf8_check(const char *text, size_t len, char *err, size_t errlen)
{
    const char *bad = utf8_invalid_at(text, len);
    if (!bad)
        return true;
    int line = 1, col = 1;
    for (const char *p = text; p < (const char *)bad; p++) {
        if (*p == '\n')
            line++, col = 1;
        else
            col++;
    }
    snprintf(err, errlen, "not valid UTF-8 at line %d column %d", line, col);
    return false;
}

/* ---- tree helpers ---- */

/* Keys are short and mostly differ in their first byte: look at it before
 * calling strcmp (which was a sixth of the validation time). */
static inline bool same_key(const char *a, const char *b)
{
    return a[0] == b[0] && strcmp(a, b) == 0;
}

static yajl_val obj_get(yajl_val o, const char *key)
{
    if (!YAJL_IS_OBJECT(o))
        return NULL;
    for (size_t i = 0; i < o->u.object.len; i++)
        if (same_key(o->u.object.keys[i], key))
            return o->u.object.values[i];
    return NULL;
}

static const char *type_name(yajl_val j)
{
    switch (j->type) {
    case yajl_t_object: return "object";
    case yajl_t_array: return "array";
    case yajl_t_string: return "string";
    case yajl_t_number: return YAJL_IS_INTEGER(j) ? "integer" : "number";
    case yajl_t_true:
    case yajl_t_false: return "boolean";
    default: return "null";
    }
}

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first key that appears twice in o, or NULL. */
static const char *duplicate_key(yajl_val o)
{
    size_t n = o->u.object.len;
    const char **k = (const char **)o->u.object.keys;
    if (n < 2)
        return NULL;
    if (n <= 16) {
        for (size_t i = 1; i < n; i++)
            for (size_t j = 0; j < i; j++)
                if (same_key(k[i], k[j]))
                    return k[i];
        return NULL;
    }
    const char **sorted = xmalloc(n * sizeof *sorted);
    memcpy(sorted, k, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_keys);
    const char *dup = NULL;
    for (size_t i = 1; i < n && !dup; i++)
        if (strcmp(sorted[i], sorted[i - 1]) == 0)
            dup = sorted[i];
    free(sorted);
    return dup;
}

/* True when jansson, which reads stored traces back, takes the number's
 * text: an integer (no '.', 'e' or 'E') must fit in 64 bits, any other
 * number must not overflow a double (underflow to 0 is fine). */
static bool number_readable(const char *r)
{
    if (!strpbrk(r, ".eE")) {
        errno = 0;
        (void)strtoll(r, NULL, 10);
        return errno != ERANGE;
    }
    return isfinite(strtod(r, NULL));
}

/* Depth of v, the first duplicated key anywhere in it, and whether it holds
 * a number the reader cannot (depth is bounded by the checking pass, so the
 * recursion is too). */
static int walk_check(yajl_val v, const char **dup, bool *bad_number)
{
    int d = 0;
    if (YAJL_IS_OBJECT(v)) {
        if (!*dup)
            *dup = duplicate_key(v);
        for (size_t i = 0; i < v->u.object.len; i++) {
            int cd = walk_check(v->u.object.values[i], dup, bad_number);
            if (cd > d)
                d = cd;
        }
        return d + 1;
    }
    if (YAJL_IS_ARRAY(v)) {
        for (size_t i = 0; i < v->u.array.len; i++) {
            int cd = walk_check(v->u.array.values[i], dup, bad_number);
            if (cd > d)
                d = cd;
        }
        return d + 1;
    }
    if (YAJL_IS_NUMBER(v) && !*bad_number && !number_readable(v->u.number.r))
        *bad_number = true;
    return 0;
}

/* ---- values the reader cannot hold ---- */

static unsigned hex4(const char *p)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v = v * 16 + (unsigned)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

/* Offset of the first \u escape in a JSON text (already parsed, so every
 * backslash is inside a string and starts an escape) that is a UTF-16
 * surrogate without its other half, or -1. yajl turns such an escape into
 * '?' or into bytes that are not UTF-8, and jansson refuses it: either way
 * the trace would not read back as sent. */
static long lone_surrogate_at(const char *text, size_t len, size_t from)
{
    const char *p = text + from, *end = text + len;
    while (p < end && (p = memchr(p, '\\', (size_t)(end - p))) != NULL) {
        if (end - p < 6 || p[1] != 'u') {
            p += 2; /* \n, \\, \" ...: skip the escaped character */
            continue;
        }
        unsigned cp = hex4(p + 2);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - p >= 12 && p[6] == '\\' && p[7] == 'u') {
                unsigned lo = hex4(p + 8);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    p += 12;
                    continue;
                }
            }
            return (long)(p - text);
        }
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return (long)(p - text);
        p += 6;
    }
    return -1;
}

/* Rare path: a text holds an unreadable value; this pass finds each one's
 * JSON path. yajl's streaming parser reports numbers in their own text and
 * says, at each string, how far it has read, so a bad escape is placed in
 * the string that holds it. Paths are "$" + ".key" / "[i]"; for an array
 * body the top-level index is the item's (reported apart). */
#define FIND_MAX_DEPTH (SCAN_MAX_DEPTH + 2)
typedef struct {
    yajl_handle h;
    const char *text;
    size_t len;
    long next_bad;        /* offset of the next lone surrogate escape, or -1 */
    bool array_body;
    int depth;
    struct {
        bool array;
        long index;
        const char *key;
        size_t keylen;
    } frames[FIND_MAX_DEPTH];
    void (*report)(void *ud, size_t item, const char *path, const char *message);
    void *ud;
} finder;

static void finder_path(const finder *f, int upto, size_t *item, buf_t *path)
{
    *item = 0;
    buf_puts(path, "$");
    for (int i = 0; i < upto; i++) {
        if (f->frames[i].array) {
            if (i == 0 && f->array_body) {
                *item = (size_t)f->frames[0].index;
                buf_printf(path, "[%ld]", f->frames[i].index);
                continue;
            }
            buf_printf(path, "[%ld]", f->frames[i].index);
        } else {
            buf_puts(path, ".");
            buf_append(path, f->frames[i].key, f->frames[i].keylen);
        }
    }
}

static void finder_report(finder *f, int upto, const char *message)
{
    size_t item;
    buf_t path;
    buf_init(&path);
    finder_path(f, upto, &item, &path);
    f->report(f->ud, item, path.data, message);
    buf_free(&path);
}

/* a value starts: count it in its array */
static void finder_value(finder *f)
{
    if (f->depth > 0 && f->frames[f->depth - 1].array)
        f->frames[f->depth - 1].index++;
}

/* did the token just read hold the next bad escape? */
static bool finder_token_bad(finder *f)
{
    size_t upto = yajl_get_bytes_consumed(f->h); /* just past the token the callback reports */
    if (f->next_bad < 0 || (size_t)f->next_bad >= upto)
        return false;
    while (f->next_bad >= 0 && (size_t)f->next_bad < upto)
        f->next_bad = lone_surrogate_at(f->text, f->len, (size_t)f->next_bad + 6);
    return true;
}

static int find_open(void *ctx, bool array)
{
    finder *f = ctx;
    finder_value(f);
    if (f->depth >= FIND_MAX_DEPTH)
        return 0;
    f->frames[f->depth].array = array;
    f->frames[f->depth].index = -1;
    f->frames[f->depth].key = "";
    f->frames[f->depth].keylen = 0;
    f->depth++;
    return 1;
}
static int find_map(void *ctx) { return find_open(ctx, false); }
static int find_array(void *ctx) { return find_open(ctx, true); }
static int find_close(void *ctx) { ((finder *)ctx)->depth--; return 1; }
static int find_null(void *ctx) { finder_value(ctx); return 1; }
static int find_bool(void *ctx, int b) { (void)b; finder_value(ctx); return 1; }

static int find_number(void *ctx, const char *s, size_t n)
{
    finder *f = ctx;
    finder_value(f);
    char *num = xstrndup(s, n);
    if (!number_readable(num))
        finder_report(f, f->depth, strpbrk(num, ".eE")
                                       ? "is a number too large for a double (JSON readers cannot hold it)"
                                       : "is an integer past 64 bits (JSON readers cannot hold it exactly; send it "
                                         "as a string)");
    free(num);
    return 1;
}

static int find_string(void *ctx, const unsigned char *s, size_t n)
{
    (void)s, (void)n;
    finder *f = ctx;
    finder_value(f);
    if (finder_token_bad(f))
        finder_report(f, f->depth, "holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair); send "
                                   "the character itself or a valid pair");
    return 1;
}

static int find_key(void *ctx, const unsigned char *s, size_t n)
{
    finder *f = ctx;
    if (finder_token_bad(f)) /* the object is named: the key itself is the fault */
        finder_report(f, f->depth - 1, "has a key with a lone UTF-16 surrogate escape (\\ud800-\\udfff without its "
                                       "pair)");
    f->frames[f->depth - 1].key = (const char *)s;
    f->frames[f->depth - 1].keylen = n;
    return 1;
}

static const yajl_callbacks find_callbacks = {
    find_null, find_bool, NULL, NULL, find_number, find_string, find_map, find_key, find_close, find_array,
    find_close,
};

/* Reports every unreadable value of text (valid JSON, already checked). */
static void find_unreadable(const char *text, size_t len, bool array_body,
                            void (*report)(void *ud, size_t item, const char *path, const char *message), void *ud)
{
    finder *f = xcalloc(1, sizeof *f);
    f->text = text;
    f->len = len;
    f->array_body = array_body;
    f->next_bad = lone_surrogate_at(text, len, 0);
    f->report = report;
    f->ud = ud;
    f->h = yajl_alloc(&find_callbacks, NULL, f);
    yajl_config(f->h, yajl_dont_validate_strings, 1); /* u8_check did */
    yajl_parse(f->h, (const unsigned char *)text, len);
    yajl_complete_parse(f->h);
    yajl_free(f->h);
    free(f);
}

static void gen_value(yajl_gen g, yajl_val v)
{
    switch (v->type) {
    case yajl_t_string:
        yajl_gen_string(g, (const unsigned char *)v->u.string, strlen(v->u.string));
        break;
    case yajl_t_number:
        yajl_gen_number(g, v->u.number.r, strlen(v->u.number.r)); /* the number's own text */
        break;
    case yajl_t_object:
        yajl_gen_map_open(g);
        for (size_t i = 0; i < v->u.object.len; i++) {
            yajl_gen_string(g, (const unsigned char *)v->u.object.keys[i], strlen(v->u.object.keys[i]));
            gen_value(g, v->u.object.values[i]);
        }
        yajl_gen_map_close(g);
        break;
    case yajl_t_array:
        yajl_gen_array_open(g);
        for (size_t i = 0; i < v->u.array.len; i++)
            gen_value(g, v->u.array.values[i]);
        yajl_gen_array_close(g);
        break;
    case yajl_t_true: yajl_gen_bool(g, 1); break;
    case yajl_t_false: yajl_gen_bool(g, 0); break;
    default: yajl_gen_null(g); break;
    }
}

static void gen_cstring(yajl_gen g, const char *s)
{
    yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

static char *gen_finish(yajl_gen g, size_t *len)
{
    const unsigned char *out;
    size_t n;
    yajl_gen_get_buf(g, &out, &n);
    char *s = xstrndup((const char *)out, n);
    *len = n;
    yajl_gen_free(g);
    return s;
}

/* ---- validation ---- */

typedef struct {
    ingest_item *item;
    const char *base; /* "$" or "$[3]" */
} vctx;

static void add_error(vctx *v, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void add_error(vctx *v, const char *path, const char *fmt, ...)
{
    if (v->item->nerrors >= INGEST_MAX_ERRORS)
        return;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ingest_error *e = &v->item->errors[v->item->nerrors++];
    buf_t p;
    buf_init(&p);
    buf_puts(&p, v->base);
    buf_puts(&p, path);
    e->path = buf_steal(&p);
    e->message = xstrdup(msg);
}

static bool id_chars_ok(const char *s, const char *extra)
{
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr(extra, c)))
            return false;
    }
    return true;
}

bool ingest_tag_ok(const char *tag)
{
    return tag && tag[0] && strlen(tag) <= INGEST_TAG_MAX_LEN && id_chars_ok(tag, "-_.:/=");
}

/* A string field with a length range; returns the string or NULL (error added). */
static const char *check_string(vctx *v, yajl_val obj, const char *key, const char *path, bool required,
                                size_t maxlen)
{
    yajl_val j = obj_get(obj, key);
    if (!j) {
        if (required)
            add_error(v, path, "is required");
        return NULL;
    }
    if (!YAJL_IS_STRING(j)) {
        add_error(v, path, "must be a string (got %s)", type_name(j));
        return NULL;
    }
    size_t len = strlen(j->u.string);
    if (len == 0) {
        add_error(v, path, "must not be empty");
        return NULL;
    }
    if (len > maxlen) {
        add_error(v, path, "is too long (%zu bytes, at most %zu)", len, maxlen);
        return NULL;
    }
    return j->u.string;
}

static const char *check_id(vctx *v, yajl_val obj, const char *key, const char *path, bool required)
{
    const char *s = check_string(v, obj, key, path, required, ID_MAX);
    if (s && !id_chars_ok(s, "-_.:")) {
        add_error(v, path, "may contain only letters, digits and - _ . :");
        return NULL;
    }
    return s;
}

static void check_keys(vctx *v, yajl_val obj, const char *path, const char *const *allowed)
{
    for (size_t i = 0; i < obj->u.object.len; i++) {
        const char *k = obj->u.object.keys[i];
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = same_key(*a, k);
        if (!ok) {
            char p[300];
            snprintf(p, sizeof p, "%s.%s", path, k);
            add_error(v, p, "is not a known field (put extra data under metadata)");
        }
    }
}

static bool check_type(vctx *v, yajl_val j, yajl_type want, const char *path, const char *want_name)
{
    if (j->type != want) {
        add_error(v, path, "must be %s (got %s)", want_name, type_name(j));
        return false;
    }
    return true;
}

static void check_nonneg_number(vctx *v, yajl_val obj, const char *key, const char *path, bool integer)
{
    yajl_val j = obj_get(obj, key);
    if (!j)
        return;
    if (integer ? !YAJL_IS_INTEGER(j) : !YAJL_IS_NUMBER(j)) {
        add_error(v, path, "must be %s (got %s)", integer ? "an integer" : "a number", type_name(j));
        return;
    }
    double d = YAJL_IS_INTEGER(j) ? (double)j->u.number.i : j->u.number.d;
    if (!(d >= 0) || isinf(d))
        add_error(v, path, "must be zero or more");
}

/* a number validated by check_nonneg_number, as a double */
static double number_of(yajl_val j)
{
    return YAJL_IS_INTEGER(j) ? (double)j->u.number.i : j->u.number.d;
}

/* timestamp: RFC 3339 string or integer ms since the epoch; default now. */
static int64_t check_timestamp(vctx *v, yajl_val obj, const char *path, int64_t now)
{
    yajl_val j = obj_get(obj, "timestamp");
    int64_t ms = now;
    if (!j)
        return ms;
    if (YAJL_IS_INTEGER(j)) {
        ms = j->u.number.i;
    } else if (YAJL_IS_STRING(j)) {
        if (!rfc3339_parse(j->u.string, &ms)) {
            add_error(v, path, "must be an RFC 3339 date-time like 2026-11-24T08:00:00Z");
            return now;
        }
    } else {
        add_error(v, path, "must be an RFC 3339 string or integer milliseconds (got %s)", type_name(j));
        return now;
    }
    /* from 1970 to 2200: catches seconds passed as ms and the like */
    if (ms < 0 || ms > 7258118400000LL) {
        add_error(v, path, "is out of range (1970 to 2200)");
        return now;
    }
    return ms;
}

/* ---- feedback ---- */

static const char *const feedback_keys[] = {"id", "trace_id", "thumbs", "score", "label", "comment", "who",
                                            "timestamp", "metadata", NULL};
/* keys the normalised feedback object sets itself */
static const char *const feedback_own_keys[] = {"id", "trace_id", "source", "timestamp", NULL};

/* Validates one feedback object. For inline feedback trace_id may be absent
 * (it is the trace's). Fills f on success; returns false when errors were added. */
static bool validate_feedback(vctx *v, yajl_val obj, const char *path, const char *inline_trace_id, int inline_index,
                              const char *source, int64_t now, store_feedback *f)
{
    int before = v->item->nerrors;
    char p[320];
    if (!check_type(v, obj, yajl_t_object, path, "an object"))
        return false;
    check_keys(v, obj, path, feedback_keys);

    snprintf(p, sizeof p, "%s.id", path);
    const char *id = check_id(v, obj, "id", p, false);
    snprintf(p, sizeof p, "%s.trace_id", path);
    const char *trace_id = check_id(v, obj, "trace_id", p, inline_trace_id == NULL);
    if (inline_trace_id && trace_id && strcmp(trace_id, inline_trace_id) != 0)
        add_error(v, p, "must be the enclosing trace's id or absent");

    int thumbs = 0;
    yajl_val j = obj_get(obj, "thumbs");
    snprintf(p, sizeof p, "%s.thumbs", path);
    if (j) {
        const char *t = YAJL_IS_STRING(j) ? j->u.string : "";
        if (strcmp(t, "up") == 0)
            thumbs = 1;
        else if (strcmp(t, "down") == 0)
            thumbs = -1;
        else
            add_error(v, p, "must be \"up\" or \"down\"");
    }
    bool low_score = false;
    j = obj_get(obj, "score");
    snprintf(p, sizeof p, "%s.score", path);
    if (j) {
        double d = YAJL_IS_INTEGER(j) ? (double)j->u.number.i : YAJL_IS_NUMBER(j) ? j->u.number.d : -1;
        if (!(d >= 0 && d <= 1))
            add_error(v, p, "must be a number from 0 to 1");
        low_score = d < 0.5;
    }
    snprintf(p, sizeof p, "%s.label", path);
    check_string(v, obj, "label", p, false, 256);
    snprintf(p, sizeof p, "%s.comment", path);
    check_string(v, obj, "comment", p, false, TEXT_MAX);
    snprintf(p, sizeof p, "%s.who", path);
    check_string(v, obj, "who", p, false, 256);
    snprintf(p, sizeof p, "%s.metadata", path);
    if ((j = obj_get(obj, "metadata")))
        check_type(v, j, yajl_t_object, p, "an object");
    snprintf(p, sizeof p, "%s.timestamp", path);
    int64_t ts = check_timestamp(v, obj, p, now);
    if (!obj_get(obj, "thumbs") && !obj_get(obj, "score") && !obj_get(obj, "label") && !obj_get(obj, "comment"))
        add_error(v, path, "needs at least one of thumbs, score, label, comment");
    if (v->item->nerrors > before)
        return false;

    const char *tid = inline_trace_id ? inline_trace_id : trace_id;
    char idbuf[ID_MAX + 40];
    if (!id) {
        if (inline_trace_id) {
            snprintf(idbuf, sizeof idbuf, "%s:fb:%d", inline_trace_id, inline_index);
        } else {
            char u[37];
            id_uuid7(u);
            snprintf(idbuf, sizeof idbuf, "%s", u);
        }
        id = idbuf;
    }
    /* normalised: our keys first, then the client's others */
    char when[32];
    rfc3339_format(ts, when);
    yajl_gen g = yajl_gen_alloc(NULL);
    yajl_gen_map_open(g);
    gen_cstring(g, "id"), gen_cstring(g, id);
    gen_cstring(g, "trace_id"), gen_cstring(g, tid);
    gen_cstring(g, "source"), gen_cstring(g, source);
    gen_cstring(g, "timestamp"), gen_cstring(g, when);
    for (size_t i = 0; i < obj->u.object.len; i++) {
        const char *k = obj->u.object.keys[i];
        bool own = false;
        for (const char *const *o = feedback_own_keys; *o && !own; o++)
            own = same_key(*o, k);
        if (own)
            continue;
        gen_cstring(g, k);
        gen_value(g, obj->u.object.values[i]);
    }
    yajl_gen_map_close(g);
    f->json = gen_finish(g, &f->json_len);
    f->id = xstrdup(id);
    f->trace_id = xstrdup(tid);
    f->source = source;
    f->thumbs = thumbs;
    f->negative = thumbs < 0 || low_score;
    f->ts_ms = ts;
    return true;
}

/* ---- traces ---- */

static const char *const trace_keys[] = {"id", "prompt", "input", "output", "error", "tool_calls", "model",
                                         "latency_ms", "usage", "timestamp", "metadata", "retry_of",
                                         "feedback", "tags", NULL};
static const char *const prompt_keys[] = {"name", "version", NULL};
static const char *const input_keys[] = {"variables", "messages", NULL};
static const char *const usage_keys[] = {"input_tokens", "output_tokens", "cost_usd", NULL};
static const char *const tool_call_keys[] = {"id", "name", "arguments", NULL};

static void validate_messages(vctx *v, yajl_val msgs)
{
    if (!check_type(v, msgs, yajl_t_array, ".input.messages", "an array"))
        return;
    for (size_t i = 0; i < msgs->u.array.len; i++) {
        yajl_val m = msgs->u.array.values[i];
        char p[96];
        snprintf(p, sizeof p, ".input.messages[%zu]", i);
        if (!check_type(v, m, yajl_t_object, p, "an object"))
            continue;
        char rp[120];
        snprintf(rp, sizeof rp, "%s.role", p);
        const char *role = check_string(v, m, "role", rp, true, 32);
        if (role && strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") &&
            strcmp(role, "tool") && strcmp(role, "developer"))
            add_error(v, rp, "must be one of system, developer, user, assistant, tool");
        yajl_val content = obj_get(m, "content");
        snprintf(rp, sizeof rp, "%s.content", p);
        if (content && !YAJL_IS_STRING(content) && !YAJL_IS_ARRAY(content) && !YAJL_IS_NULL(content))
            add_error(v, rp, "must be a string, an array of parts or null (got %s)", type_name(content));
    }
}

static void validate_tool_calls(vctx *v, yajl_val calls)
{
    if (!check_type(v, calls, yajl_t_array, ".tool_calls", "an array"))
        return;
    for (size_t i = 0; i < calls->u.array.len; i++) {
        yajl_val c = calls->u.array.values[i];
        char p[64], fp[96];
        snprintf(p, sizeof p, ".tool_calls[%zu]", i);
        if (!check_type(v, c, yajl_t_object, p, "an object"))
            continue;
        check_keys(v, c, p, tool_call_keys);
        snprintf(fp, sizeof fp, "%s.id", p);
        check_string(v, c, "id", fp, false, 256);
        snprintf(fp, sizeof fp, "%s.name", p);
        check_string(v, c, "name", fp, true, 256);
        yajl_val args = obj_get(c, "arguments");
        snprintf(fp, sizeof fp, "%s.arguments", p);
        if (args && !YAJL_IS_OBJECT(args) && !YAJL_IS_STRING(args))
            add_error(v, fp, "must be an object or a JSON string (got %s)", type_name(args));
    }
}

static void validate_tags(vctx *v, yajl_val tags)
{
    if (!check_type(v, tags, yajl_t_array, ".tags", "an array of strings"))
        return;
    if (tags->u.array.len > INGEST_MAX_TAGS) {
        add_error(v, ".tags", "has %zu tags, at most %d", tags->u.array.len, INGEST_MAX_TAGS);
        return;
    }
    for (size_t i = 0; i < tags->u.array.len; i++) {
        yajl_val g = tags->u.array.values[i];
        char p[48];
        snprintf(p, sizeof p, ".tags[%zu]", i);
        if (!YAJL_IS_STRING(g))
            add_error(v, p, "must be a string (got %s)", type_name(g));
        else if (!ingest_tag_ok(g->u.string))
            add_error(v, p, "must be 1 to %d bytes of letters, digits and - _ . : / =", INGEST_TAG_MAX_LEN);
        else
            for (size_t k = 0; k < i; k++)
                if (YAJL_IS_STRING(tags->u.array.values[k]) && !strcmp(tags->u.array.values[k]->u.string, g->u.string)) {
                    add_error(v, p, "repeats the tag '%s' of .tags[%zu]", g->u.string, k);
                    break;
                }
    }
}

/* raw: the item's own text when the body holds it verbatim (a single object,
 * an NDJSON line); it is stored as sent, which saves re-encoding. Array items
 * are re-encoded. Either way the id and timestamp columns are canonical and
 * the read paths put them into the JSON they return. */
static bool validate_trace(vctx *v, yajl_val t, const char *raw, size_t raw_len, int64_t now, store_trace *out,
                           store_feedback **fb, size_t *nfb)
{
    if (!check_type(v, t, yajl_t_object, "", "an object"))
        return false;
    check_keys(v, t, "", trace_keys);
    const char *id = check_id(v, t, "id", ".id", false);
    yajl_val prompt = obj_get(t, "prompt");
    const char *pname = NULL;
    int64_t version = 0;
    if (!prompt) {
        add_error(v, ".prompt", "is required");
    } else if (check_type(v, prompt, yajl_t_object, ".prompt", "an object")) {
        check_keys(v, prompt, ".prompt", prompt_keys);
        pname = check_string(v, prompt, "name", ".prompt.name", true, NAME_MAX_LEN);
        if (pname && !id_chars_ok(pname, "-_.:/"))
            add_error(v, ".prompt.name", "may contain only letters, digits and - _ . : /"), pname = NULL;
        yajl_val ver = obj_get(prompt, "version");
        if (ver) {
            if (!YAJL_IS_INTEGER(ver) || ver->u.number.i < 1 || ver->u.number.i > 2147483647)
                add_error(v, ".prompt.version", "must be a positive integer");
            else
                version = ver->u.number.i;
        }
    }
    yajl_val input = obj_get(t, "input");
    if (input && check_type(v, input, yajl_t_object, ".input", "an object")) {
        check_keys(v, input, ".input", input_keys);
        yajl_val vars = obj_get(input, "variables");
        yajl_val msgs = obj_get(input, "messages");
        if (!vars && !msgs)
            add_error(v, ".input", "needs variables, messages or both");
        if (vars)
            check_type(v, vars, yajl_t_object, ".input.variables", "an object");
        if (msgs)
            validate_messages(v, msgs);
    }
    yajl_val output = obj_get(t, "output");
    const char *error = check_string(v, t, "error", ".error", false, TEXT_MAX);
    if (!output && !error)
        add_error(v, ".output", "is required (or give error for a failed call)");
    else if (output && YAJL_IS_NULL(output) && !error)
        add_error(v, ".output", "must not be null (or give error for a failed call)");
    yajl_val calls = obj_get(t, "tool_calls");
    if (calls)
        validate_tool_calls(v, calls);
    check_string(v, t, "model", ".model", false, 256);
    check_nonneg_number(v, t, "latency_ms", ".latency_ms", false);
    yajl_val usage = obj_get(t, "usage");
    if (usage && check_type(v, usage, yajl_t_object, ".usage", "an object")) {
        check_keys(v, usage, ".usage", usage_keys);
        check_nonneg_number(v, usage, "input_tokens", ".usage.input_tokens", true);
        check_nonneg_number(v, usage, "output_tokens", ".usage.output_tokens", true);
        check_nonneg_number(v, usage, "cost_usd", ".usage.cost_usd", false);
    }
    int64_t ts = check_timestamp(v, t, ".timestamp", now);
    yajl_val meta = obj_get(t, "metadata");
    if (meta)
        check_type(v, meta, yajl_t_object, ".metadata", "an object");
    const char *retry_of = check_id(v, t, "retry_of", ".retry_of", false);
    if (retry_of && id && strcmp(retry_of, id) == 0)
        add_error(v, ".retry_of", "must name an earlier trace, not this one");

    yajl_val tags = obj_get(t, "tags");
    if (tags)
        validate_tags(v, tags);

    yajl_val feedback = obj_get(t, "feedback");
    if (feedback && YAJL_IS_ARRAY(feedback) && feedback->u.array.len > MAX_INLINE_FEEDBACK)
        add_error(v, ".feedback", "has more than %d items", MAX_INLINE_FEEDBACK);
    if (feedback && !YAJL_IS_ARRAY(feedback) && !YAJL_IS_OBJECT(feedback))
        add_error(v, ".feedback", "must be an object or an array of objects (got %s)", type_name(feedback));
    if (v->item->nerrors)
        return false;

    char idbuf[40];
    if (!id) {
        id_uuid7(idbuf);
        id = idbuf;
    }
    /* inline feedback becomes feedback rows; reads leave it out of the trace */
    if (feedback) {
        size_t n = YAJL_IS_ARRAY(feedback) ? feedback->u.array.len : 1;
        *fb = xcalloc(n, sizeof **fb);
        for (size_t i = 0; i < n; i++) {
            yajl_val f = YAJL_IS_ARRAY(feedback) ? feedback->u.array.values[i] : feedback;
            char p[64];
            if (YAJL_IS_ARRAY(feedback))
                snprintf(p, sizeof p, ".feedback[%zu]", i);
            else
                snprintf(p, sizeof p, ".feedback");
            if (validate_feedback(v, f, p, id, (int)i, "inline", ts, &(*fb)[*nfb]))
                (*nfb)++;
        }
        if (v->item->nerrors)
            return false;
    }

    out->id = xstrdup(id);
    out->prompt = xstrdup(pname);
    out->version = version;
    out->ts_ms = ts;
    out->retry_of = retry_of ? xstrdup(retry_of) : NULL;
    yajl_val lat = obj_get(t, "latency_ms"), cost = usage ? obj_get(usage, "cost_usd") : NULL,
             in_tok = usage ? obj_get(usage, "input_tokens") : NULL, out_tok = usage ? obj_get(usage, "output_tokens") : NULL;
    if ((out->has_latency = lat != NULL))
        out->latency_ms = number_of(lat);
    if ((out->has_cost = cost != NULL))
        out->cost_usd = number_of(cost);
    if ((out->has_tokens = in_tok && out_tok))
        out->tokens = number_of(in_tok) + number_of(out_tok);
    if (tags && tags->u.array.len) {
        out->ntags = tags->u.array.len;
        out->tags = xcalloc(out->ntags, sizeof *out->tags);
        for (size_t i = 0; i < out->ntags; i++)
            out->tags[i] = xstrdup(tags->u.array.values[i]->u.string);
    }
    if (raw) {
        out->json = xstrndup(raw, raw_len);
        out->json_len = raw_len;
    } else {
        yajl_gen g = yajl_gen_alloc(NULL);
        gen_value(g, t);
        out->json = gen_finish(g, &out->json_len);
    }
    v->item->id = xstrdup(id);
    return true;
}

/* ---- batches ---- */

typedef struct {
    yajl_val value;    /* NULL when the item did not parse */
    const char *text;  /* the item's text in the body, or NULL (array items) */
    size_t text_len;
    int line;
    char parse_error[220];
} raw_item;

static void free_feedback_items(store_feedback *fb, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(fb[i].id);
        free(fb[i].trace_id);
        free(fb[i].json);
    }
    free(fb);
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* How many c there are in p[0..n), counting no further than stop + 1. */
static size_t count_byte(const char *p, size_t n, char c, size_t stop)
{
    size_t k = 0;
    for (const char *end = p + n; k <= stop && (p = memchr(p, c, (size_t)(end - p))) != NULL; p++)
        k++;
    return k;
}

/* True when the checking pass cannot find anything yajl's tree parser would
 * let through: the text has no NUL byte (the tree parser stops at one), no
 * more '{' and '[' than SCAN_MAX_DEPTH (so no deeper nesting) and no \u0000
 * escape (so no NUL inside a string). Then the tree is parsed straight away,
 * and the checking pass runs only to explain a text the tree parser refused. */
static bool scan_not_needed(const char *p, size_t n)
{
    if (strlen(p) != n) /* p[n] is NUL: any earlier one is in the text */
        return false;
    size_t opens = count_byte(p, n, '{', SCAN_MAX_DEPTH);
    return opens + count_byte(p, n, '[', SCAN_MAX_DEPTH) <= SCAN_MAX_DEPTH && !memmem(p, n, "\\u0000", 6);
}

/* yajl's tree parser takes comments (it turns them on itself), and a
 * string left open after the value (`{...}"`: its lexer waits for the rest
 * and finds none), so a text it parsed may still not be JSON; stored as
 * sent, it would not read back. Returns the offset of the first byte that
 * is neither the one value nor white space after it, or -1 when clean.
 * Strings are skipped with memchr: a trace is mostly string bytes. */
static long json_text_unclean_at(const char *p, size_t n)
{
    const char *s = p, *end = p + n;
    int depth = 0;
    bool started = false;
    while (s < end) {
        char c = *s;
        if (c == '"') {
            for (s++;;) { /* to the closing quote */
                const char *q = memchr(s, '"', (size_t)(end - s));
                if (!q)
                    return (long)(s - p); /* open to the end */
                const char *b = q;
                while (b > s && b[-1] == '\\')
                    b--;
                s = q + 1;
                if (((q - b) & 1) == 0)
                    break; /* not escaped */
            }
            started = true;
        } else if (c == '/') {
            return (long)(s - p); /* a comment */
        } else if (c == '{' || c == '[') {
            depth++, started = true, s++;
        } else if (c == '}' || c == ']') {
            depth--, s++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            s++;
        } else if ((unsigned char)c < 0x20) {
            return (long)(s - p); /* yajl takes \v and \f as white space; JSON does not */
        } else {
            started = true, s++;
        }
        if (started && depth == 0) { /* the value is complete: only white space may follow */
            while (s < end && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n'))
                s++;
            return s == end ? -1 : (long)(s - p);
        }
    }
    return -1;
}

/* Parses one NDJSON line in place (it is NUL-terminated for the parser and
 * restored after). */
static void parse_line(char *p, size_t n, raw_item *r)
{
    char saved = p[n];
    p[n] = '\0';
    scan_result sc;
    char uerr[120];
    if (!utf8_check(p, n, uerr, sizeof uerr)) {
        snprintf(r->parse_error, sizeof r->parse_error, "%s", uerr);
    } else if (scan_not_needed(p, n) && (r->value = yajl_tree_parse(p, NULL, 0)) != NULL) {
        /* parsed in one pass */
    } else if (scan_json(p, n, false, &sc), !sc.ok) {
        snprintf(r->parse_error, sizeof r->parse_error, "not valid JSON: %s", sc.error);
    } else {
        char err[160];
        r->value = yajl_tree_parse(p, err, sizeof err);
        if (!r->value)
            snprintf(r->parse_error, sizeof r->parse_error, "not valid JSON");
    }
    long bad;
    if (r->value && YAJL_IS_OBJECT(r->value) && (bad = json_text_unclean_at(p, n)) >= 0) {
        yajl_tree_free(r->value);
        r->value = NULL;
        snprintf(r->parse_error, sizeof r->parse_error, "not valid JSON: %s at byte %ld",
                 p[bad] == '/' ? "a comment" : (unsigned char)p[bad] < 0x20 ? "a control character outside a string"
                                                                            : "text after the object",
                 bad + 1);
    }
    p[n] = saved;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r'))
        n--;
    r->text = p;
    r->text_len = n;
}

/* find_unreadable's reports for one item's own text: errors of its vctx
 * (the path is already "$..." and base is "$") */
static void report_unreadable(void *ud, size_t item, const char *path, const char *message)
{
    (void)item;
    vctx *v = ud;
    add_error(v, path + 1, "%s", message);
}

typedef struct {
    struct {
        size_t item;
        char *path; /* "$[i]..." */
        const char *message;
    } *items;
    size_t n;
} unreadable_list;

static void collect_unreadable(void *ud, size_t item, const char *path, const char *message)
{
    unreadable_list *l = ud;
    if (l->n >= 10000) /* bounded: one per item would already be plenty */
        return;
    l->items = xrealloc(l->items, (l->n + 1) * sizeof *l->items);
    l->items[l->n].item = item;
    l->items[l->n].path = xstrdup(path);
    l->items[l->n].message = message;
    l->n++;
}

/* The one validator of both entry points: checks each parsed item (depth,
 * duplicate keys, values the reader cannot hold, then the trace or feedback
 * rules) and fills out's items and store rows. body/len: the whole text of
 * an array body (its unreadable values are found in one pass over it), else
 * NULL and each item's own text is searched. */
/* Where validate_items takes item i from: the text path's parsed items, or
 * the tree path's views, built one at a time in memory reused for each. */
typedef struct {
    raw_item *(*get)(void *ud, size_t i);
    void *ud;
} item_source;

static raw_item *from_array(void *ud, size_t i)
{
    return &((raw_item *)ud)[i];
}

static void validate_items(ingest_kind kind, item_source src, size_t nraw, bool array_form, const char *body,
                           size_t len, int64_t now, ingest_batch *out)
{
    out->nitems = nraw;
    out->items = xcalloc(nraw, sizeof *out->items);
    if (kind == INGEST_TRACES)
        out->write.traces = xcalloc(nraw, sizeof *out->write.traces);
    else
        out->write.feedback = xcalloc(nraw, sizeof *out->write.feedback);
    /* inline feedback of traces, appended after the loop */
    store_feedback *inline_fb = NULL;
    size_t ninline = 0, inline_cap = 0;
    /* unreadable values in an array body, found in one pass over it */
    unreadable_list unreadable = {0};
    bool body_bad_escape = array_form && lone_surrogate_at(body, len, 0) >= 0, body_searched = false;

    for (size_t i = 0; i < nraw; i++) {
        ingest_item *it = &out->items[i];
        raw_item *r = src.get(src.ud, i);
        it->write_index = -1;
        it->line = r->line;
        char base[32];
        if (array_form)
            snprintf(base, sizeof base, "$[%zu]", i);
        else
            snprintf(base, sizeof base, "$");
        vctx v = {it, base};
        if (!r->value) {
            add_error(&v, "", "%s", r->parse_error);
            continue;
        }
        const char *dup = NULL;
        bool bad_number = false;
        if (walk_check(r->value, &dup, &bad_number) > INGEST_MAX_DEPTH) {
            add_error(&v, "", "is nested deeper than %d levels", INGEST_MAX_DEPTH);
            continue;
        }
        if (dup) {
            add_error(&v, "", "has the key '%.100s' twice in one object", dup);
            continue;
        }
        /* what the store's reader (jansson) would refuse is refused here,
         * so nothing acknowledged fails to read back */
        if (array_form && (bad_number || body_bad_escape) && !body_searched) {
            find_unreadable(body, len, true, collect_unreadable, &unreadable);
            body_searched = true;
        }
        if (array_form) {
            for (size_t k = 0; k < unreadable.n; k++)
                if (unreadable.items[k].item == i)
                    add_error(&v, unreadable.items[k].path + strcspn(unreadable.items[k].path, "]") + 1, "%s",
                              unreadable.items[k].message);
        } else if (bad_number || lone_surrogate_at(r->text, r->text_len, 0) >= 0) {
            find_unreadable(r->text, r->text_len, false, report_unreadable, &v);
        }
        if (it->nerrors)
            continue;
        if (kind == INGEST_TRACES) {
            store_feedback *fb = NULL;
            size_t nfb = 0;
            store_trace *t = &out->write.traces[out->write.ntraces];
            if (validate_trace(&v, r->value, r->text, r->text_len, now, t, &fb, &nfb)) {
                it->write_index = (int)out->write.ntraces++;
                if (nfb) {
                    if (ninline + nfb > inline_cap) {
                        inline_cap = (ninline + nfb) * 2;
                        inline_fb = xrealloc(inline_fb, inline_cap * sizeof *inline_fb);
                    }
                    memcpy(inline_fb + ninline, fb, nfb * sizeof *fb);
                    ninline += nfb;
                }
                free(fb);
            } else {
                free_feedback_items(fb, nfb);
            }
        } else {
            store_feedback *f = &out->write.feedback[out->write.nfeedback];
            if (validate_feedback(&v, r->value, "", NULL, 0, "explicit", now, f)) {
                it->write_index = (int)out->write.nfeedback++;
                it->id = xstrdup(f->id);
            }
        }
    }
    for (size_t k = 0; k < unreadable.n; k++)
        free(unreadable.items[k].path);
    free(unreadable.items);
    out->array_form = array_form;
    if (ninline) {
        out->write.feedback = xrealloc(out->write.feedback, (out->write.nfeedback + ninline) * sizeof *inline_fb);
        memcpy(out->write.feedback + out->write.nfeedback, inline_fb, ninline * sizeof *inline_fb);
        out->write.nfeedback += ninline;
    }
    free(inline_fb);
}

int ingest_parse(ingest_kind kind, char *body, size_t len, bool ndjson, size_t max_items, int64_t now,
                 ingest_batch *out, const char **err_code, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->kind = kind;
    raw_item *raw = NULL;
    size_t nraw = 0;
    bool array_form = false;
    yajl_val array = NULL;
    char *end = body + len;
    /* the parsers need NUL-terminated text; the request buffer always is */
    char *first = (char *)skip_ws(body, end);

    if (!ndjson && first < end && *first == '{') {
        /* most bodies are one object: parse it as one; only a body that does
         * not parse as one goes through the scan below, which tells NDJSON
         * (several values) from broken JSON */
        raw_item one;
        memset(&one, 0, sizeof one);
        parse_line(first, (size_t)(end - first), &one);
        if (one.value) {
            nraw = 1;
            raw = xmalloc(sizeof *raw);
            raw[0] = one;
        }
    } else if (!ndjson && first < end && *first == '[') {
        char e[160];
        if (utf8_check(body, len, e, sizeof e) && scan_not_needed(body, len))
            array = yajl_tree_parse(body, NULL, 0); /* NULL: the scan below explains why */
    }
    if (!ndjson && !raw && !array) {
        scan_result sc;
        scan_json(body, len, true, &sc);
        if (first < end && *first == '{' && sc.values >= 1 && (sc.values > 1 || !sc.ok)) {
            ndjson = true; /* several JSON values: one per line */
        } else if (!sc.ok) {
            *err_code = "malformed_json";
            snprintf(err, errlen, "the body is not valid JSON: %s", sc.error);
            return 400;
        } else if (first == end || (*first != '{' && *first != '[')) {
            *err_code = "malformed_json";
            snprintf(err, errlen, "the body must be a JSON object, a JSON array of objects, or NDJSON");
            return 400;
        } else if (*first == '[') {
            char e[160];
            if (!utf8_check(body, len, e, sizeof e)) {
                *err_code = "malformed_json";
                snprintf(err, errlen, "the body is %s", e);
                return 400;
            }
            array = yajl_tree_parse(body, e, sizeof e);
            if (!array) {
                *err_code = "malformed_json";
                snprintf(err, errlen, "the body is not valid JSON");
                return 400;
            }
        } else {
            nraw = 1;
            raw = xcalloc(1, sizeof *raw);
            parse_line(first, (size_t)(end - first), &raw[0]);
        }
    }
    if (array) {
        array_form = true;
        nraw = array->u.array.len;
        if (nraw > max_items) {
            yajl_tree_free(array);
            *err_code = "too_many_items";
            snprintf(err, errlen, "the batch has %zu items; at most %zu are allowed per request", nraw, max_items);
            return 413;
        }
        raw = xcalloc(nraw ? nraw : 1, sizeof *raw);
        for (size_t i = 0; i < nraw; i++)
            raw[i].value = array->u.array.values[i]; /* owned by array */
    }
    if (ndjson) {
        size_t cap = 0;
        int line = 0;
        char *p = body;
        while (p < end) {
            char *nl = memchr(p, '\n', (size_t)(end - p));
            char *le = nl ? nl : end;
            line++;
            char *q = (char *)skip_ws(p, le);
            if (q < le) {
                if (nraw == max_items) {
                    for (size_t i = 0; i < nraw; i++)
                        yajl_tree_free(raw[i].value);
                    free(raw);
                    *err_code = "too_many_items";
                    snprintf(err, errlen, "the batch has more than %zu items; at most %zu are allowed per request",
                             max_items, max_items);
                    return 413;
                }
                if (nraw == cap) {
                    cap = cap ? cap * 2 : 64;
                    raw = xrealloc(raw, cap * sizeof *raw);
                }
                raw_item *r = &raw[nraw++];
                memset(r, 0, sizeof *r);
                r->line = line;
                parse_line(q, (size_t)(le - q), r);
            }
            p = le + 1;
        }
    }
    if (nraw == 0) {
        free(raw);
        yajl_tree_free(array);
        *err_code = "empty_batch";
        snprintf(err, errlen, "the body holds no items");
        return 400;
    }

    validate_items(kind, (item_source){from_array, raw}, nraw, array_form, array_form ? body : NULL, len, now, out);
    if (array)
        yajl_tree_free(array);
    else
        for (size_t i = 0; i < nraw; i++)
            yajl_tree_free(raw[i].value);
    free(raw);
    return 0;
}

/* ---- trees (ingest_tree) ---- */

/* A read-only yajl view of a jansson tree, for the one validator: nodes,
 * arrays and number texts in an arena, strings and keys pointing into the
 * jansson tree (which outlives the view). */
typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;
    max_align_t data[];
} arena_chunk;

typedef struct {
    arena_chunk *head;
    const char *bad; /* the first reason the tree cannot be stored as JSON text */
    bool gen_failed; /* the text's writer failed (view_of) */
} arena;

static void *arena_alloc(arena *a, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    if (!a->head || a->head->cap - a->head->used < n) {
        size_t cap = n > 16384 ? n : 16384;
        arena_chunk *c = xmalloc(sizeof *c + cap);
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

static void arena_free(arena *a)
{
    for (arena_chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    a->head = NULL;
}

/* v as decimal text into r (at least 21 bytes); returns its length. */
static size_t int_text(json_int_t v, char *r)
{
    char t[24];
    size_t n = 0, len;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do
        t[n++] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    len = n + (v < 0);
    if (v < 0)
        *r++ = '-';
    while (n)
        *r++ = t[--n];
    *r = '\0';
    return len;
}

/* The view of j, and its stored text written by g in the same walk: each
 * number's text is made once, for both (yajl_gen_integer would printf it,
 * and the view's real text would be made again by a separate dump). The
 * text is byte for byte jtree_dump's. g stops being fed after an error;
 * a->gen_failed then tells the caller to write the text apart. */
static yajl_val view_of(arena *a, yajl_gen g, json_t *j, int depth)
{
    yajl_val v = arena_alloc(a, sizeof *v);
    memset(v, 0, sizeof *v);
    if (depth > INGEST_MAX_DEPTH + 1) { /* deeper is rejected by walk_check; no need to look further */
        v->type = yajl_t_null;
        if (!a->bad)
            a->bad = "is nested deeper than " STR(INGEST_MAX_DEPTH) " levels";
        return v;
    }
#define GEN(call) (void)(a->gen_failed || a->bad || (a->gen_failed = (call) != yajl_gen_status_ok))
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(j), i = 0;
        v->type = yajl_t_object;
        v->u.object.keys = arena_alloc(a, (n ? n : 1) * sizeof *v->u.object.keys);
        v->u.object.values = arena_alloc(a, (n ? n : 1) * sizeof *v->u.object.values);
        const char *key;
        size_t klen;
        json_t *val;
        GEN(yajl_gen_map_open(g));
        json_object_keylen_foreach(j, key, klen, val) {
            v->u.object.keys[i] = key;
            GEN(yajl_gen_string(g, (const unsigned char *)key, klen));
            v->u.object.values[i++] = view_of(a, g, val, depth + 1);
        }
        v->u.object.len = i;
        GEN(yajl_gen_map_close(g));
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        v->type = yajl_t_array;
        v->u.array.values = arena_alloc(a, (n ? n : 1) * sizeof *v->u.array.values);
        GEN(yajl_gen_array_open(g));
        for (size_t i = 0; i < n; i++)
            v->u.array.values[i] = view_of(a, g, json_array_get(j, i), depth + 1);
        v->u.array.len = n;
        GEN(yajl_gen_array_close(g));
        break;
    }
    case JSON_STRING:
        v->type = yajl_t_string;
        v->u.string = (char *)json_string_value(j);
        if (strlen(v->u.string) != json_string_length(j) && !a->bad)
            a->bad = "a string holds a NUL character (\\u0000)";
        GEN(yajl_gen_string(g, (const unsigned char *)v->u.string, json_string_length(j)));
        break;
    case JSON_INTEGER: {
        char *r = arena_alloc(a, 24);
        size_t n = int_text(json_integer_value(j), r); /* not snprintf: it runs for every number of every trace */
        v->type = yajl_t_number;
        v->u.number.i = json_integer_value(j);
        v->u.number.d = (double)v->u.number.i;
        v->u.number.r = r;
        v->u.number.flags = YAJL_NUMBER_INT_VALID | YAJL_NUMBER_DOUBLE_VALID;
        GEN(yajl_gen_number(g, r, n));
        break;
    }
    case JSON_REAL: {
        char *r = arena_alloc(a, 40);
        size_t n = jtree_real_text(json_real_value(j), r);
        if (!n) {
            snprintf(r, 40, "0");
            if (!a->bad)
                a->bad = "a number is not finite";
        }
        v->type = yajl_t_number;
        v->u.number.d = json_real_value(j);
        v->u.number.r = r;
        v->u.number.flags = YAJL_NUMBER_DOUBLE_VALID;
        GEN(yajl_gen_number(g, r, n));
        break;
    }
    case JSON_TRUE: v->type = yajl_t_true; GEN(yajl_gen_bool(g, 1)); break;
    case JSON_FALSE: v->type = yajl_t_false; GEN(yajl_gen_bool(g, 0)); break;
    default: v->type = yajl_t_null; GEN(yajl_gen_null(g)); break;
    }
#undef GEN
    return v;
}

/* The tree path's items, one at a time: the view and the text of item i
 * reuse the memory of item i - 1 (a batch's views all at once made the
 * engine fault in megabytes of fresh pages per request). */
typedef struct {
    const json_t *items;
    arena a;
    buf_t text;
    yajl_gen gen; /* writes into text */
    raw_item r;
} tree_source;

static void arena_reset(arena *a)
{
    /* keep the newest chunk, the one most likely to hold an item */
    if (!a->head)
        return;
    arena_chunk *keep = a->head;
    a->head = keep->next;
    arena_free(a);
    keep->next = NULL;
    keep->used = 0;
    a->head = keep;
}

static void print_to_buf(void *ctx, const char *s, size_t n)
{
    buf_append(ctx, s, n);
}

static raw_item *from_tree(void *ud, size_t i)
{
    tree_source *ts = ud;
    json_t *item = json_array_get(ts->items, i);
    memset(&ts->r, 0, sizeof ts->r);
    arena_reset(&ts->a);
    ts->a.bad = NULL;
    ts->a.gen_failed = false;
    if (!ts->gen) {
        ts->gen = yajl_gen_alloc(NULL);
        yajl_gen_config(ts->gen, yajl_gen_print_callback, print_to_buf, &ts->text);
    }
    yajl_gen_reset(ts->gen, NULL);
    ts->text.len = 0;
    /* the view and the stored text, written once, in one walk */
    ts->r.value = view_of(&ts->a, ts->gen, item, 0);
    if (ts->a.bad) {
        snprintf(ts->r.parse_error, sizeof ts->r.parse_error, "%s", ts->a.bad);
        ts->r.value = NULL;
        return &ts->r;
    }
    if (ts->a.gen_failed) { /* not expected (the view stops well above yajl's depth): jansson's writer, as jtree_dump */
        ts->text.len = 0;
        jtree_dump_buf(&ts->text, item);
    }
    buf_append(&ts->text, "", 1);
    ts->r.text = ts->text.data;
    ts->r.text_len = ts->text.len - 1;
    return &ts->r;
}

int ingest_tree(ingest_kind kind, const json_t *items, size_t max_items, int64_t now, ingest_batch *out,
                const char **err_code, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->kind = kind;
    size_t n = json_array_size(items);
    if (n == 0) {
        *err_code = "empty_batch";
        snprintf(err, errlen, "the body holds no items");
        return 400;
    }
    if (n > max_items) {
        *err_code = "too_many_items";
        snprintf(err, errlen, "the batch has %zu items; at most %zu are allowed per request", n, max_items);
        return 413;
    }
    tree_source ts = {.items = items};
    validate_items(kind, (item_source){from_tree, &ts}, n, false, NULL, 0, now, out);
    arena_free(&ts.a);
    buf_free(&ts.text);
    if (ts.gen)
        yajl_gen_free(ts.gen);
    return 0;
}

size_t ingest_tree_prepare_only(const json_t *items)
{
    tree_source ts = {.items = items};
    size_t bytes = 0;
    for (size_t i = 0; i < json_array_size(items); i++) {
        raw_item *r = from_tree(&ts, i);
        bytes += r->text ? r->text_len : 0;
    }
    arena_free(&ts.a);
    buf_free(&ts.text);
    if (ts.gen)
        yajl_gen_free(ts.gen);
    return bytes;
}

static const char *result_name(unsigned char r)
{
    switch (r) {
    case STORE_ACCEPTED: return "accepted";
    case STORE_DUPLICATE: return "duplicate";
    case STORE_NOT_FOUND: return "rejected";
    default: return "failed";
    }
}

/* Appends s as a JSON string (jansson does the escaping). */
static void buf_json_string(buf_t *b, const char *s)
{
    /* error paths name keys as the client sent them, which may not be UTF-8
     * (a lone surrogate escape decodes to bytes that are not) */
    char clean[1024];
    if (!utf8_valid(s, strlen(s))) {
        utf8_clean(clean, sizeof clean, s, strlen(s));
        s = clean;
    }
    json_t *j = json_string(s);
    char tmp[512];
    size_t n = json_dumpb(j, tmp, sizeof tmp, JSON_ENCODE_ANY);
    if (n <= sizeof tmp) {
        buf_append(b, tmp, n);
    } else {
        char *big = json_text(j, JSON_ENCODE_ANY);
        buf_puts(b, big);
        free(big);
    }
    json_decref(j);
}

/* Built by hand into one buffer: this runs for every ingest request, and ids
 * need no escaping (their characters are checked at ingest). */
char *ingest_results_json(const ingest_batch *b, int *status, const char *request_id)
{
    size_t accepted = 0, duplicate = 0, rejected = 0;
    buf_t items;
    buf_init(&items);
    for (size_t i = 0; i < b->nitems; i++) {
        const ingest_item *it = &b->items[i];
        buf_printf(&items, "%s{\"index\":%zu", i ? "," : "", i);
        if (it->line)
            buf_printf(&items, ",\"line\":%d", it->line);
        if (it->id)
            buf_printf(&items, ",\"id\":\"%s\"", it->id);
        if (it->write_index < 0) {
            rejected++;
            buf_puts(&items, ",\"status\":\"rejected\",\"errors\":[");
            for (int e = 0; e < it->nerrors; e++) {
                buf_puts(&items, e ? ",{\"path\":" : "{\"path\":");
                buf_json_string(&items, it->errors[e].path);
                buf_puts(&items, ",\"message\":");
                buf_json_string(&items, it->errors[e].message);
                buf_puts(&items, "}");
            }
            buf_puts(&items, "]}");
            continue;
        }
        unsigned char r = b->kind == INGEST_TRACES ? b->write.trace_results[it->write_index]
                                                   : b->write.feedback_results[it->write_index];
        buf_printf(&items, ",\"status\":\"%s\"", result_name(r));
        if (r == STORE_ACCEPTED)
            accepted++;
        else if (r == STORE_DUPLICATE)
            duplicate++;
        else
            rejected++;
        if (r == STORE_NOT_FOUND) {
            if (b->array_form)
                buf_printf(&items, ",\"errors\":[{\"path\":\"$[%zu].trace_id\"", i);
            else
                buf_puts(&items, ",\"errors\":[{\"path\":\"$.trace_id\"");
            buf_puts(&items, ",\"message\":\"no trace has this id\"}]");
        }
        buf_puts(&items, "}");
    }
    buf_t out;
    buf_init(&out);
    buf_printf(&out, "{\"accepted\":%zu,\"duplicate\":%zu,\"rejected\":%zu,\"items\":[", accepted, duplicate,
               rejected);
    if (items.len)
        buf_append(&out, items.data, items.len);
    buf_puts(&out, "]");
    const char *code = NULL, *msg = NULL;
    if (b->write.status) {
        *status = 503;
        code = "store_unavailable";
        msg = "the store could not commit; nothing of this request was stored";
    } else if (accepted + duplicate == 0) {
        *status = 422;
        code = "invalid_items";
        msg = "every item was rejected; see items[].errors";
    } else {
        *status = 200;
    }
    if (code)
        buf_printf(&out, ",\"error\":{\"code\":\"%s\",\"message\":\"%s\",\"request_id\":\"%s\"}", code, msg,
                   request_id);
    buf_puts(&out, "}");
    buf_free(&items);
    return buf_steal(&out);
}

void ingest_batch_free(ingest_batch *b)
{
    for (size_t i = 0; i < b->nitems; i++) {
        free(b->items[i].id);
        for (int e = 0; e < b->items[i].nerrors; e++) {
            free(b->items[i].errors[e].path);
            free(b->items[i].errors[e].message);
        }
    }
    free(b->items);
    store_write_clear(&b->write);
    memset(b, 0, sizeof *b);
}
