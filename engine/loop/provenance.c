/* provenance.c — trace text, normalised, as rolling-hash windows and token
 * counts (see provenance.h). */
#include "loop/provenance.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unicase.h>
#include <unictype.h>
#include <uninorm.h>
#include <unistr.h>

/* normalised trace text taken at most (2 MiB: 16 MiB of window hashes) */
#define MAX_BYTES (2u << 20)
#define MOD ((UINT64_C(1) << 61) - 1)

struct provenance {
    size_t window;
    uint64_t base;       /* random per engine: no input is made to collide */
    uint64_t *hashes;    /* every window of trace text; sorted by seal */
    size_t nhashes, cap;
    json_t *tokens;      /* token -> number of traces holding it */
    size_t traces, bytes;
    bool full;
};

static uint64_t mulmod(uint64_t a, uint64_t b)
{
    unsigned __int128 p = (unsigned __int128)a * b; /* a, b < 2^61: p < 2^122 */
    uint64_t r = (uint64_t)(p & MOD) + (uint64_t)(p >> 61); /* <= 2 MOD */
    if (r >= MOD)
        r -= MOD;
    return r >= MOD ? r - MOD : r;
}

provenance *provenance_new(size_t window)
{
    provenance *pv = xcalloc(1, sizeof *pv);
    pv->window = window ? window : PROVENANCE_WINDOW;
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, 0) != sizeof r)
        r = (uint64_t)(uintptr_t)pv ^ UINT64_C(0x9e3779b97f4a7c15);
    pv->base = 256 + r % (MOD - 512);
    pv->tokens = json_object();
    return pv;
}

void provenance_free(provenance *pv)
{
    if (!pv)
        return;
    free(pv->hashes);
    json_decref(pv->tokens);
    free(pv);
}

void provenance_normalise(const char *s, size_t n, buf_t *out)
{
    size_t flen = 0;
    uint8_t *f = u8_casefold((const uint8_t *)s, n, NULL, UNINORM_NFKC, NULL, &flen);
    const uint8_t *p = f ? f : (const uint8_t *)s;
    size_t len = f ? flen : n;
    bool space = false;
    size_t start = out->len;
    for (size_t i = 0; i < len;) {
        ucs4_t uc;
        int k = u8_mbtouc(&uc, p + i, len - i);
        if (k <= 0)
            k = 1;
        if (uc != 0xfffd && uc_is_alnum(uc)) {
            if (space && out->len > start)
                buf_append(out, " ", 1);
            space = false;
            buf_append(out, p + i, (size_t)k);
        } else {
            space = true;
        }
        i += (size_t)k;
    }
    free(f);
}

/* Calls fn for the hash of every window of t. */
static void each_window(const provenance *pv, const char *t, size_t n, void (*fn)(void *, uint64_t, size_t),
                        void *ud)
{
    size_t w = pv->window;
    if (n < w)
        return;
    uint64_t h = 0, top = 1; /* top = base^(w-1) */
    for (size_t i = 0; i + 1 < w; i++)
        top = mulmod(top, pv->base);
    for (size_t i = 0; i < n; i++) {
        if (i >= w) {
            uint64_t out = mulmod((unsigned char)t[i - w] + 1, top);
            h = h >= out ? h - out : h + MOD - out;
        }
        h = mulmod(h, pv->base) + (unsigned char)t[i] + 1;
        if (h >= MOD)
            h -= MOD;
        if (i + 1 >= w)
            fn(ud, h, i + 1 - w);
    }
}

static void keep_hash(void *ud, uint64_t h, size_t at)
{
    (void)at;
    provenance *pv = ud;
    if (pv->nhashes == pv->cap) {
        pv->cap = pv->cap ? 2 * pv->cap : 4096;
        pv->hashes = xrealloc(pv->hashes, pv->cap * sizeof *pv->hashes);
    }
    pv->hashes[pv->nhashes++] = h;
}

/* The words of normalised text worth counting: 3 bytes or more. */
static void each_token(const char *t, size_t n, void (*fn)(void *, const char *), void *ud)
{
    char tok[128];
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && t[j] != ' ')
            j++;
        size_t len = j - i;
        if (len >= 3 && len < sizeof tok) {
            memcpy(tok, t + i, len);
            tok[len] = '\0';
            fn(ud, tok);
        }
        i = j + 1;
    }
}

static void mark_token(void *ud, const char *tok)
{
    json_object_set_new(ud, tok, json_true());
}

/* Adds one string of a trace: its windows, and its tokens to seen. */
static void add_string(provenance *pv, const char *s, json_t *seen)
{
    if (pv->full || !s || !*s)
        return;
    buf_t b;
    buf_init(&b);
    provenance_normalise(s, strlen(s), &b);
    if (pv->bytes + b.len > MAX_BYTES) {
        pv->full = true;
        buf_free(&b);
        return;
    }
    pv->bytes += b.len;
    each_window(pv, b.data ? b.data : "", b.len, keep_hash, pv);
    each_token(b.data ? b.data : "", b.len, mark_token, seen);
    buf_free(&b);
}

static void add_json(provenance *pv, const json_t *v, json_t *seen)
{
    size_t i;
    const char *k;
    json_t *x;
    if (json_is_string(v))
        add_string(pv, json_string_value(v), seen);
    else if (json_is_array(v))
        json_array_foreach(v, i, x) add_json(pv, x, seen);
    else if (json_is_object(v))
        json_object_foreach((json_t *)v, k, x) add_json(pv, x, seen);
}

static void count_tokens(provenance *pv, json_t *seen)
{
    const char *tok;
    json_t *x;
    json_object_foreach(seen, tok, x) {
        json_t *c = json_object_get(pv->tokens, tok);
        json_object_set_new(pv->tokens, tok, json_integer(c ? json_integer_value(c) + 1 : 1));
    }
    pv->traces++;
}

bool provenance_add_trace(provenance *pv, const json_t *variables, const json_t *messages)
{
    json_t *seen = json_object();
    add_json(pv, variables, seen);
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        const char *role = json_string_value(json_object_get(m, "role"));
        if (role && (!strcmp(role, "user") || !strcmp(role, "tool")))
            add_json(pv, json_object_get(m, "content"), seen);
    }
    count_tokens(pv, seen);
    json_decref(seen);
    return !pv->full;
}

bool provenance_add_text(provenance *pv, const char *text)
{
    json_t *seen = json_object();
    add_string(pv, text, seen);
    count_tokens(pv, seen);
    json_decref(seen);
    return !pv->full;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void provenance_seal(provenance *pv)
{
    if (pv->nhashes)
        qsort(pv->hashes, pv->nhashes, sizeof *pv->hashes, cmp_u64);
}

size_t provenance_traces(const provenance *pv) { return pv->traces; }
size_t provenance_bytes(const provenance *pv) { return pv->bytes; }

/* ---- checking a candidate ---- */

typedef struct {
    uint64_t *h;
    size_t n, cap;
} hashes;

static void collect(void *ud, uint64_t h, size_t at)
{
    (void)at;
    hashes *hs = ud;
    if (hs->n == hs->cap) {
        hs->cap = hs->cap ? 2 * hs->cap : 256;
        hs->h = xrealloc(hs->h, hs->cap * sizeof *hs->h);
    }
    hs->h[hs->n++] = h;
}

static bool has_hash(const uint64_t *v, size_t n, uint64_t h)
{
    return n && bsearch(&h, v, n, sizeof *v, cmp_u64) != NULL;
}

typedef struct {
    const provenance *pv;
    hashes cur;
    bool found;
    size_t at;
} copy_scan;

static void probe(void *ud, uint64_t h, size_t at)
{
    copy_scan *cs = ud;
    if (cs->found || !has_hash(cs->pv->hashes, cs->pv->nhashes, h) || has_hash(cs->cur.h, cs->cur.n, h))
        return;
    cs->found = true;
    cs->at = at;
}

bool provenance_copied(const provenance *pv, const char *candidate, const char *current, char *found, size_t flen)
{
    buf_t c, k;
    buf_init(&c);
    buf_init(&k);
    provenance_normalise(candidate, strlen(candidate), &c);
    provenance_normalise(current, strlen(current), &k);
    copy_scan cs = {.pv = pv};
    each_window(pv, k.data ? k.data : "", k.len, collect, &cs.cur);
    if (cs.cur.n)
        qsort(cs.cur.h, cs.cur.n, sizeof *cs.cur.h, cmp_u64);
    each_window(pv, c.data ? c.data : "", c.len, probe, &cs);
    if (cs.found && flen) {
        /* the window, widened to whole words (a space at either end is an
         * end already) */
        size_t a = cs.at, b = cs.at + pv->window;
        if (c.data[a] == ' ')
            a++;
        else
            while (a > 0 && c.data[a - 1] != ' ')
                a--;
        if (c.data[b - 1] == ' ')
            b--;
        else
            while (b < c.len && c.data[b] != ' ')
                b++;
        utf8_clean(found, flen, c.data + a, b - a);
    }
    free(cs.cur.h);
    buf_free(&c);
    buf_free(&k);
    return cs.found;
}

typedef struct {
    const provenance *pv;
    json_t *current, *out, *seen;
} token_scan;

static void new_token(void *ud, const char *tok)
{
    token_scan *ts = ud;
    if (json_object_get(ts->current, tok) || json_object_get(ts->seen, tok))
        return;
    json_object_set_new(ts->seen, tok, json_true());
    json_t *n = json_object_get(ts->pv->tokens, tok);
    if (n)
        json_array_append_new(ts->out, json_pack("{s:s, s:I}", "token", tok, "traces", json_integer_value(n)));
}

static int by_traces(const void *a, const void *b)
{
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "traces"));
    json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "traces"));
    return x < y ? -1 : x > y;
}

json_t *provenance_new_tokens(const provenance *pv, const char *candidate, const char *current, size_t max)
{
    buf_t c, k;
    buf_init(&c);
    buf_init(&k);
    provenance_normalise(candidate, strlen(candidate), &c);
    provenance_normalise(current, strlen(current), &k);
    token_scan ts = {.pv = pv, .current = json_object(), .out = json_array(), .seen = json_object()};
    each_token(k.data ? k.data : "", k.len, mark_token, ts.current);
    each_token(c.data ? c.data : "", c.len, new_token, &ts);
    /* rarest first, then cut */
    size_t n = json_array_size(ts.out);
    json_t **v = xcalloc(n ? n : 1, sizeof *v);
    for (size_t i = 0; i < n; i++)
        v[i] = json_incref(json_array_get(ts.out, i));
    qsort(v, n, sizeof *v, by_traces);
    json_t *out = json_array();
    for (size_t i = 0; i < n; i++) {
        if (i < max)
            json_array_append(out, v[i]);
        json_decref(v[i]);
    }
    free(v);
    json_decref(ts.out);
    json_decref(ts.current);
    json_decref(ts.seen);
    buf_free(&c);
    buf_free(&k);
    return out;
}

size_t provenance_token_traces(const provenance *pv, const char *token)
{
    buf_t b;
    buf_init(&b);
    provenance_normalise(token, strlen(token), &b);
    json_t *n = b.data ? json_object_get(pv->tokens, b.data) : NULL;
    buf_free(&b);
    return n ? (size_t)json_integer_value(n) : 0;
}
