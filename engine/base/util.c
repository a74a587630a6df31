/* util.c — growable buffers, clocks, ids, timestamps, constant-time compare. */
#include "base/util.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistr.h>

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fputs("ratchet: out of memory\n", stderr);
        abort();
    }
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fputs("ratchet: out of memory\n", stderr);
        abort();
    }
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fputs("ratchet: out of memory\n", stderr);
        abort();
    }
    return q;
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void buf_init(buf_t *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
}

void buf_free(buf_t *b)
{
    free(b->data);
    buf_init(b);
}

void buf_reset(buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void buf_reserve(buf_t *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void buf_append(buf_t *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void buf_puts(buf_t *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        buf_append(b, small, (size_t)n);
        return;
    }
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *buf_steal(buf_t *b)
{
    if (!b->data)
        buf_reserve(b, 0), b->data[0] = '\0';
    char *p = b->data;
    buf_init(b);
    return p;
}

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Random bytes come from getrandom(2) through a small pool so that ids cost
 * one syscall per 4 KiB rather than one each. Ids are made on the loop thread
 * and on the writer thread, hence the lock. */
static pthread_mutex_t rand_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char rand_pool[4096];
static size_t rand_left;

void random_bytes(void *p, size_t n)
{
    unsigned char *out = p;
    pthread_mutex_lock(&rand_lock);
    while (n) {
        if (!rand_left) {
            size_t got = 0;
            while (got < sizeof rand_pool) {
                ssize_t r = getrandom(rand_pool + got, sizeof rand_pool - got, 0);
                if (r > 0)
                    got += (size_t)r;
            }
            rand_left = sizeof rand_pool;
        }
        size_t take = n < rand_left ? n : rand_left;
        memcpy(out, rand_pool + sizeof rand_pool - rand_left, take);
        rand_left -= take;
        out += take;
        n -= take;
    }
    pthread_mutex_unlock(&rand_lock);
}

static const char hexdig[] = "0123456789abcdef";

/* UUIDv7 (RFC 9562): 48-bit ms timestamp, then a 12-bit counter in rand_a
 * that keeps ids made within one millisecond in order, then 62 random bits. */
void id_uuid7(char out[37])
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static int64_t last_ms;
    static unsigned counter;
    unsigned char b[16];
    random_bytes(b + 8, 8);

    pthread_mutex_lock(&lock);
    int64_t ms = now_ms();
    if (ms <= last_ms) {
        ms = last_ms;
        if (++counter > 0xfff) {
            counter = 0;
            ms = ++last_ms;
        }
    } else {
        last_ms = ms;
        counter = 0;
    }
    unsigned seq = counter;
    pthread_mutex_unlock(&lock);

    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)((uint64_t)ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | ((seq >> 8) & 0x0f));
    b[7] = (unsigned char)(seq & 0xff);
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));

    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hexdig[b[i] >> 4];
        *o++ = hexdig[b[i] & 15];
    }
    *o = '\0';
}

void id_hex16(char out[17])
{
    unsigned char b[8];
    random_bytes(b, sizeof b);
    for (int i = 0; i < 8; i++) {
        out[2 * i] = hexdig[b[i] >> 4];
        out[2 * i + 1] = hexdig[b[i] & 15];
    }
    out[16] = '\0';
}

static bool digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

bool rfc3339_parse(const char *s, int64_t *out_ms)
{
    int Y, M, D, h, m, sec;
    if (strlen(s) < 20)
        return false;
    if (!digits(s, 4, &Y) || s[4] != '-' || !digits(s + 5, 2, &M) || s[7] != '-' ||
        !digits(s + 8, 2, &D) || (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
        !digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &m) || s[16] != ':' ||
        !digits(s + 17, 2, &sec))
        return false;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || h > 23 || m > 59 || sec > 60)
        return false;
    bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (M == 2 && D == 29 && !leap)
        return false;
    const char *p = s + 19;
    int frac_ms = 0;
    if (*p == '.') {
        p++;
        int nd = 0;
        while (*p >= '0' && *p <= '9') {
            if (nd < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
            nd++;
            p++;
        }
        if (nd == 0)
            return false;
        for (; nd < 3; nd++)
            frac_ms *= 10;
    }
    int offset_min = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (!digits(p + 1, 2, &oh) || p[3] != ':' || !digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return false;
        offset_min = (oh * 60 + om) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return false;
    }
    if (*p)
        return false;
    struct tm tm = {0};
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = m;
    tm.tm_sec = sec > 59 ? 59 : sec;
    time_t t = timegm(&tm);
    *out_ms = ((int64_t)t - (int64_t)offset_min * 60) * 1000 + frac_ms;
    return true;
}

void rfc3339_format(int64_t ms, char out[32])
{
    time_t t = (time_t)(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
    int frac = (int)(ms - (int64_t)t * 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", frac);
}

bool secret_equal(const char *given, size_t given_len, const char *secret, size_t secret_len)
{
    /* The loop runs over the secret's length whatever was given, so the time
     * reveals neither the position of the first difference nor the given length. */
    volatile unsigned char diff = (unsigned char)(given_len != secret_len);
    for (size_t i = 0; i < secret_len; i++) {
        unsigned char g = i < given_len ? (unsigned char)given[i] : 0;
        diff |= (unsigned char)(g ^ (unsigned char)secret[i]);
    }
    return diff == 0;
}

bool time_parse(const char *s, int64_t *ms)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!errno && *end == '\0' && end != s && v >= 0) {
        *ms = v;
        return true;
    }
    return rfc3339_parse(s, ms);
}

size_t num_text(double d, char out[32])
{
    if (isnan(d))
        return (size_t)snprintf(out, 32, "nan");
    if (isinf(d))
        return (size_t)snprintf(out, 32, d > 0 ? "inf" : "-inf");
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) { /* 17 significant digits always read back */
        n = snprintf(out, 32, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            break;
    }
    return (size_t)n;
}

size_t edit_distance(const char *a, const char *b)
{
    /* optimal string alignment: Levenshtein plus adjacent swaps, three rows */
    size_t la = strlen(a), lb = strlen(b);
    if (la > 256 || lb > 256)
        return la > lb ? la : lb;
    size_t rows[3][257], *pp = rows[0], *prev = rows[1], *cur = rows[2];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t v = prev[j] + 1;
            if (cur[j - 1] + 1 < v)
                v = cur[j - 1] + 1;
            if (prev[j - 1] + cost < v)
                v = prev[j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && pp[j - 2] + 1 < v)
                v = pp[j - 2] + 1;
            cur[j] = v;
        }
        size_t *t = pp;
        pp = prev;
        prev = cur;
        cur = t;
    }
    return prev[lb];
}

const char *closest_name(const char *word, const char *const *names, size_t n)
{
    size_t len = strlen(word), best_d = (size_t)-1;
    const char *best = NULL;
    /* one edit in a short word, two in a longer one; never most of the word */
    size_t limit = len <= 4 ? 1 : 2;
    for (size_t i = 0; n ? i < n : names[i] != NULL; i++) {
        size_t d = edit_distance(word, names[i]);
        if (d <= limit && d < len && d < strlen(names[i]) && d < best_d) {
            best_d = d;
            best = names[i];
        }
    }
    return best;
}

int write_address_file(const char *path, const char *addr)
{
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%s\n", addr);
    if (fclose(f) != 0)
        return -1;
    return rename(tmp, path);
}

const char *utf8_invalid_at(const char *s, size_t n)
{
    /* mostly ASCII: u8_check goes a byte at a time, so the ASCII prefix is
     * skipped eight bytes at a time first */
    size_t i = 0;
    for (uint64_t w; i + 8 <= n; i += 8) {
        memcpy(&w, s + i, 8);
        if (w & 0x8080808080808080ULL)
            break;
    }
    return (const char *)u8_check((const uint8_t *)s + i, n - i);
}

bool utf8_valid(const char *s, size_t n)
{
    return utf8_invalid_at(s, n) == NULL;
}

size_t utf8_clean(char *dst, size_t cap, const char *src, size_t n)
{
    if (!cap)
        return 0;
    const uint8_t *s = (const uint8_t *)src;
    if (n < cap && !u8_check(s, n) && !memchr(src, 0, n)) {
        memcpy(dst, src, n);
        dst[n] = 0;
        return n;
    }
    static const char repl[] = "\xEF\xBF\xBD";
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        ucs4_t uc;
        int len = u8_mbtouc(&uc, s + i, n - i);
        const char *piece = src + i;
        size_t plen = (size_t)len;
        /* NUL too: the copy is a C string, and a NUL would end it early */
        if ((uc == 0xFFFD && (len != 3 || memcmp(piece, repl, 3))) || uc == 0)
            piece = repl, plen = 3;
        if (o + plen >= cap)
            break;
        memcpy(dst + o, piece, plen);
        o += plen;
        i += (size_t)len;
    }
    dst[o] = 0;
    return o;
}
