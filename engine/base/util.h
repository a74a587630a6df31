/* util.h — small shared helpers: growable buffers, clocks, random ids,
 * RFC 3339 timestamps and constant-time comparison. */
#ifndef RATCHET_UTIL_H
#define RATCHET_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} buf_t;

void buf_init(buf_t *b);
void buf_free(buf_t *b);
void buf_reset(buf_t *b);
void buf_reserve(buf_t *b, size_t extra);
void buf_append(buf_t *b, const void *p, size_t n);
void buf_puts(buf_t *b, const char *s);
void buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Takes the data out of the buffer; the caller frees it. NUL-terminated. */
char *buf_steal(buf_t *b);

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Wall clock in milliseconds since the epoch; monotonic clock in ns. */
int64_t now_ms(void);
uint64_t mono_ns(void);

/* Fills p with n random bytes from the kernel (pooled). */
void random_bytes(void *p, size_t n);
/* A UUIDv7 string (36 chars + NUL): time-ordered, monotonic within a process. */
void id_uuid7(char out[37]);
/* A 16-hex-char random id, for request ids. */
void id_hex16(char out[17]);

/* Parses an RFC 3339 date-time ("2026-11-24T08:00:00.123Z", offsets allowed)
 * into ms since the epoch. Returns false when the text is not one. */
bool rfc3339_parse(const char *s, int64_t *out_ms);
/* A time given by a user: RFC 3339, or integer milliseconds since the epoch. */
bool time_parse(const char *s, int64_t *ms);
/* Formats ms since the epoch as "YYYY-MM-DDTHH:MM:SS.mmmZ" (25 bytes with NUL). */
void rfc3339_format(int64_t ms, char out[32]);

/* Compares a client-supplied secret with the configured one in time that does
 * not depend on where they differ. */
bool secret_equal(const char *given, size_t given_len, const char *secret, size_t secret_len);

/* Copies n bytes of text into dst (cap bytes, NUL-terminated) as valid
 * UTF-8: each invalid sequence, and each NUL byte, becomes U+FFFD, and the
 * copy is cut at a character boundary when it does not fit. Returns the
 * bytes written. */
size_t utf8_clean(char *dst, size_t cap, const char *src, size_t n);
/* True when the n bytes are valid UTF-8 (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF). */
bool utf8_valid(const char *s, size_t n);
/* Where s stops being valid UTF-8 (RFC 3629, u8_check's rules), or NULL. */
const char *utf8_invalid_at(const char *s, size_t n);

/* The shortest decimal text that reads back as exactly d ("0.8", not
 * "0.80000000000000004"; "3" for 3.0; "1e+300"): the way numbers appear in
 * messages, never rounded. NaN and infinities as "nan", "inf", "-inf".
 * Returns the length. */
size_t num_text(double d, char out[32]);

/* The edit distance of a and b (insertions, deletions, substitutions and
 * swaps of two neighbours each count 1), for "did you mean" suggestions. */
size_t edit_distance(const char *a, const char *b);
/* The name of names (n of them, or NULL-terminated when n is 0) closest to
 * word, when close enough to be a likely typo of it; else NULL. */
const char *closest_name(const char *word, const char *const *names, size_t n);

/* Writes "addr\n" to path through a rename, so a reader never sees half. */
int write_address_file(const char *path, const char *addr);

#endif
