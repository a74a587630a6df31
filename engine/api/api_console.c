/* api_console.c — the web console's static files (docs/console.md): read
 * once at start-up from the share dir's console/ folder (and Chart.js from
 * Debian's libjs-chart.js when no copy was installed beside them), each kept
 * with its gzip form and a content hash for its ETag, and served from memory
 * with its type, ETag/If-None-Match, gzip when the client takes it, and a
 * strict Content-Security-Policy. The pages are clients of the JSON API; no
 * page is templated here. */
#include "api/api_console.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <zlib.h>

#include "api/api_request.h"
#include "base/log.h"

/* Debian's libjs-chart.js, served as /console/chart.js when make install did
 * not put a copy beside the pages */
#define CHART_JS_SYSTEM "/usr/share/javascript/chart.js/chart.min.js"
#define CONSOLE_MAX_FILES 64
#define CONSOLE_MAX_FILE_BYTES (4u << 20)

/* Scripts and styles from the engine only; data from the API only; no
 * inline script, no frame, no form posting elsewhere. */
#define CONSOLE_HEADERS                                                                                              \
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "     \
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"                          \
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nCache-Control: no-cache\r\n"               \
    "Vary: Accept-Encoding\r\n"

typedef struct {
    char *name;             /* "index.html" */
    const char *type;       /* its Content-Type */
    char *body, *gz;        /* as is, and gzipped (NULL when gzip does not make it smaller) */
    size_t len, gzlen;
    char etag[24];          /* "\"" 16 hex digits of its SHA-256 "\"" */
} console_file;

struct console_assets {
    char dir[4096];
    console_file files[CONSOLE_MAX_FILES];
    size_t n;
};

static const char *type_of(const char *name)
{
    static const struct { const char *ext, *type; } types[] = {
        {".html", "text/html; charset=utf-8"}, {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},   {".svg", "image/svg+xml"},
        {".png", "image/png"},                 {".json", "application/json"},
        {".txt", "text/plain; charset=utf-8"},
    };
    const char *dot = strrchr(name, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(dot, types[i].ext))
            return types[i].type;
    return NULL;
}

static int read_whole(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    buf_t b = {0};
    char chunk[16384];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        buf_append(&b, chunk, n);
        if (b.len > CONSOLE_MAX_FILE_BYTES) {
            snprintf(err, errlen, "%s is larger than %u bytes", path, CONSOLE_MAX_FILE_BYTES);
            fclose(f);
            buf_free(&b);
            return -1;
        }
    }
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        snprintf(err, errlen, "cannot read %s", path);
        buf_free(&b);
        return -1;
    }
    buf_append(&b, "", 1); /* every body ends in a NUL the length does not count */
    *out = b.data;
    *len = b.len - 1;
    return 0;
}

/* data gzipped at the best level, or NULL when that is not smaller */
static char *gzip_bytes(const char *data, size_t len, size_t *outlen)
{
    z_stream z = {0};
    if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return NULL;
    size_t cap = deflateBound(&z, (uLong)len);
    char *out = xmalloc(cap);
    z.next_in = (Bytef *)data;
    z.avail_in = (uInt)len;
    z.next_out = (Bytef *)out;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    *outlen = z.total_out;
    deflateEnd(&z);
    if (rc != Z_STREAM_END || *outlen >= len) {
        free(out);
        return NULL;
    }
    return out;
}

static int add_file(console_assets *ca, const char *name, const char *path, char *err, size_t errlen)
{
    if (ca->n == CONSOLE_MAX_FILES) {
        snprintf(err, errlen, "%s has more than %d files", ca->dir, CONSOLE_MAX_FILES);
        return -1;
    }
    console_file *f = &ca->files[ca->n];
    memset(f, 0, sizeof *f);
    if (read_whole(path, &f->body, &f->len, err, errlen) != 0)
        return -1;
    f->name = xstrdup(name);
    f->type = type_of(name);
    f->gz = gzip_bytes(f->body, f->len, &f->gzlen);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    EVP_Digest(f->body, f->len, md, &mdlen, EVP_sha256(), NULL);
    char *p = f->etag;
    *p++ = '"';
    for (int i = 0; i < 8; i++)
        p += sprintf(p, "%02x", md[i]);
    *p++ = '"';
    *p = '\0';
    ca->n++;
    return 0;
}

static const console_file *find_file(const console_assets *ca, const char *name)
{
    for (size_t i = 0; ca && i < ca->n; i++)
        if (!strcmp(ca->files[i].name, name))
            return &ca->files[i];
    return NULL;
}

console_assets *console_load(const char *share_dir, char *err, size_t errlen)
{
    console_assets *ca = xcalloc(1, sizeof *ca);
    snprintf(ca->dir, sizeof ca->dir, "%s/console", share_dir);
    DIR *d = opendir(ca->dir);
    if (!d) {
        snprintf(err, errlen, "cannot open %s: %s", ca->dir, strerror(errno));
        free(ca);
        return NULL;
    }
    struct dirent *de;
    int rc = 0;
    while (rc == 0 && (de = readdir(d))) {
        char path[8192];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", ca->dir, de->d_name);
        if (de->d_name[0] == '.' || !type_of(de->d_name) || stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        rc = add_file(ca, de->d_name, path, err, errlen);
    }
    closedir(d);
    if (rc == 0 && !find_file(ca, "index.html")) {
        snprintf(err, errlen, "%s has no index.html", ca->dir);
        rc = -1;
    }
    if (rc == 0 && !find_file(ca, "chart.js"))
        rc = add_file(ca, "chart.js", CHART_JS_SYSTEM, err, errlen);
    if (rc != 0) {
        console_free(ca);
        return NULL;
    }
    return ca;
}

void console_free(console_assets *ca)
{
    if (!ca)
        return;
    for (size_t i = 0; i < ca->n; i++) {
        free(ca->files[i].name);
        free(ca->files[i].body);
        free(ca->files[i].gz);
    }
    free(ca);
}

size_t console_weight(const console_assets *ca, size_t *gzipped)
{
    size_t raw = 0, gz = 0;
    for (size_t i = 0; ca && i < ca->n; i++) {
        raw += ca->files[i].len;
        gz += ca->files[i].gz ? ca->files[i].gzlen : ca->files[i].len;
    }
    if (gzipped)
        *gzipped = gz;
    return raw;
}

/* Accept-Encoding names gzip (or *) without q=0 */
static bool takes_gzip(const char *ae)
{
    while (ae && *ae) {
        ae += strspn(ae, " \t,");
        size_t n = strcspn(ae, ",");
        size_t tok = strcspn(ae, " \t;,");
        if ((tok == 4 && !strncasecmp(ae, "gzip", 4)) || (tok == 1 && ae[0] == '*')) {
            const char *q = memchr(ae, ';', n);
            if (!q)
                return true;
            q++;
            q += strspn(q, " \t");
            if (strncasecmp(q, "q=", 2) != 0)
                return true;
            return strtod(q + 2, NULL) > 0;
        }
        ae += n;
    }
    return false;
}

/* If-None-Match holds this ETag (or *) */
static bool not_modified(const char *inm, const char *etag)
{
    size_t el = strlen(etag);
    while (inm && *inm) {
        inm += strspn(inm, " \t,");
        if (!strncmp(inm, "W/", 2))
            inm += 2;
        size_t n = strcspn(inm, " \t,");
        if ((n == el && !strncmp(inm, etag, el)) || (n == 1 && *inm == '*'))
            return true;
        inm += n;
    }
    return false;
}

void api_console_file(const api_call *c)
{
    http_request *req = c->req;
    const console_assets *ca = c->a->console;
    const char *name = c->route->arg ? c->route->arg : c->param[0];
    if (!ca) {
        http_respond_error(req, 404, "console_not_installed",
                           "the console's files were not found at start-up (see the engine's log); "
                           "make install puts them under PREFIX/share/ratchet/console");
        return;
    }
    const console_file *f = find_file(ca, name);
    if (!f) {
        http_respond_error(req, 404, "not_found", "the console has no file '%s'", name);
        return;
    }
    char hdr[1024];
    int hn = snprintf(hdr, sizeof hdr, CONSOLE_HEADERS "ETag: %s\r\n", f->etag);
    if (not_modified(http_header_get(req, "if-none-match"), f->etag)) {
        http_respond(req, 304, f->type, hdr, NULL, 0);
        return;
    }
    if (f->gz && takes_gzip(http_header_get(req, "accept-encoding"))) {
        snprintf(hdr + hn, sizeof hdr - (size_t)hn, "Content-Encoding: gzip\r\n");
        http_respond(req, 200, f->type, hdr, f->gz, f->gzlen);
        return;
    }
    http_respond(req, 200, f->type, hdr, f->body, f->len);
}

void api_session(const api_call *c)
{
    static const char *const known[] = {NULL};
    if (!api_known_params(c->req, known))
        return;
    bool admin = api_token_opens(c->a, c->req, API_SCOPE_ADMIN);
    json_t *v = json_pack("{s:s, s:b}", "scope", admin ? "admin" : "viewer", "actions", admin);
    api_respond_json(c->req, 200, v);
    json_decref(v);
}

const char *console_dir(const console_assets *ca)
{
    return ca ? ca->dir : NULL;
}

int console_file_body(const console_assets *ca, const char *name, const char **body, size_t *len)
{
    const console_file *f = find_file(ca, name);
    if (!f)
        return -1;
    *body = f->body;
    *len = f->len;
    return 0;
}
