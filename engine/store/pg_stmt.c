/* pg_stmt.c — the PostgreSQL backend's statement helper: SQL with ?N placeholders run through
 * PQexecParams on a blocking connection (writer and thread-pool threads, never the loop), its
 * rows read by column as the SQLite backend reads its own; on the thread-pool threads of reads,
 * sent without blocking and waited for with poll() up to the read's deadline. */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"
#include "store/pg_private.h"

#define OID_INT8 20
#define OID_TEXT 25
#define OID_FLOAT8 701

/* ?N becomes $N outside quotes; the SQL of both backends uses ?N only. */
static char *rewrite_params(const char *sql)
{
    size_t n = strlen(sql);
    char *out = xmalloc(n + 1);
    char quote = 0;
    for (size_t i = 0; i <= n; i++) {
        char c = sql[i];
        if (quote) {
            if (c == quote)
                quote = 0;
        } else if (c == '\'' || c == '"') {
            quote = c;
        } else if (c == '?' && sql[i + 1] >= '0' && sql[i + 1] <= '9') {
            c = '$';
        }
        out[i] = c;
    }
    return out;
}

/* The deadline of the read this thread runs (pg_read_acquire sets it, pg_read_release clears
 * it): 0 on the writer and coordinator threads, whose statements block as before. */
static _Thread_local int64_t deadline_ms;
static _Thread_local int deadline_timeout_ms;

void pg_deadline_set(int timeout_ms)
{
    deadline_timeout_ms = timeout_ms;
    deadline_ms = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
}

bool pg_deadline_on(void)
{
    return deadline_ms != 0;
}

void pg_deadline_error(char *err, size_t errlen)
{
    snprintf(err, errlen, STORE_READ_TIMEOUT " (store.read_timeout_ms = %d)", deadline_timeout_ms);
}

int pg_wait_socket(PGconn *c, short events)
{
    int64_t left = deadline_ms - now_ms();
    if (left <= 0)
        return 0;
    struct pollfd p = {.fd = PQsocket(c), .events = events};
    if (p.fd < 0)
        return -1;
    int n;
    do
        n = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
    while (n < 0 && errno == EINTR && (left = deadline_ms - now_ms()) > 0);
    return n > 0 ? 1 : n == 0 || errno == EINTR ? 0 : -1;
}

/* PQexecParams (params >= 0) or PQexec under the thread's deadline: sent without blocking, the
 * socket waited on with poll() until the deadline. NULL with err when it passed (the connection
 * is then mid-query: pg_read_release closes it) or the connection failed. With several
 * statements (PQexec), the first error or else the last result, as PQexec gives. */
static PGresult *exec_deadline(PGconn *c, const char *sql, int n, const Oid *types, const char *const *values,
                               char *err, size_t errlen)
{
    if (!deadline_ms)
        return n >= 0 ? PQexecParams(c, sql, n, types, values, NULL, NULL, 0) : PQexec(c, sql);
    if (deadline_ms <= now_ms()) {
        pg_deadline_error(err, errlen);
        return NULL;
    }
    if (PQsetnonblocking(c, 1) != 0 ||
        !(n >= 0 ? PQsendQueryParams(c, sql, n, types, values, NULL, NULL, 0) : PQsendQuery(c, sql)))
        goto failed;
    int f;
    while ((f = PQflush(c)) == 1) {
        int w = pg_wait_socket(c, POLLOUT | POLLIN);
        if (w == 0)
            goto timed_out;
        if (w < 0 || !PQconsumeInput(c))
            goto failed;
    }
    if (f < 0)
        goto failed;
    PGresult *out = NULL;
    for (;;) {
        while (PQisBusy(c)) {
            int w = pg_wait_socket(c, POLLIN);
            if (w == 0) {
                PQclear(out);
                goto timed_out;
            }
            if (w < 0 || !PQconsumeInput(c)) {
                PQclear(out);
                goto failed;
            }
        }
        PGresult *r = PQgetResult(c);
        if (!r)
            break;
        if (out && PQresultStatus(out) != PGRES_TUPLES_OK && PQresultStatus(out) != PGRES_COMMAND_OK) {
            PQclear(r); /* the first error stays the answer */
            continue;
        }
        PQclear(out);
        out = r;
    }
    if (!out)
        goto failed;
    return out;
timed_out:
    pg_deadline_error(err, errlen);
    return NULL;
failed:
    snprintf(err, errlen, "%s", PQerrorMessage(c));
    err[strcspn(err, "\n")] = 0;
    if (!err[0])
        snprintf(err, errlen, "no connection to PostgreSQL");
    return NULL;
}

pgq *pgq_new(PGconn *conn, const char *sql)
{
    pgq *q = xcalloc(1, sizeof *q);
    q->conn = conn;
    q->sql = rewrite_params(sql);
    q->row = -1;
    return q;
}

void pgq_free(pgq *q)
{
    if (!q)
        return;
    for (int i = 0; i < q->nparams; i++)
        free(q->values[i]);
    PQclear(q->res);
    free(q->sql);
    free(q);
}

static void bind_value(pgq *q, int i, Oid type, char *value)
{
    if (i < 1 || i > PGQ_MAX_PARAMS) {
        free(value);
        return;
    }
    for (; q->nparams < i; q->nparams++) {
        q->values[q->nparams] = NULL;
        q->types[q->nparams] = 0;
    }
    free(q->values[i - 1]);
    q->values[i - 1] = value;
    q->types[i - 1] = type;
}

void pgq_textn(pgq *q, int i, const char *s, size_t len)
{
    if (!s) {
        bind_value(q, i, OID_TEXT, NULL);
        return;
    }
    char *v = xmalloc(len + 1);
    memcpy(v, s, len);
    v[len] = 0;
    bind_value(q, i, OID_TEXT, v);
}

void pgq_text(pgq *q, int i, const char *s)
{
    pgq_textn(q, i, s, s ? strlen(s) : 0);
}

void pgq_int(pgq *q, int i, int64_t v)
{
    char b[24];
    snprintf(b, sizeof b, "%lld", (long long)v);
    bind_value(q, i, OID_INT8, xstrdup(b));
}

void pgq_double(pgq *q, int i, double v)
{
    char b[40];
    snprintf(b, sizeof b, "%.17g", v);
    bind_value(q, i, OID_FLOAT8, xstrdup(b));
}

void pgq_null(pgq *q, int i)
{
    bind_value(q, i, 0, NULL);
}

int pgq_step(pgq *q)
{
    if (!q->res) {
        q->res = exec_deadline(q->conn, q->sql, q->nparams, q->types, (const char *const *)q->values, q->err,
                               sizeof q->err);
        q->row = -1;
        if (!q->res)
            return PGQ_ERROR;
        ExecStatusType st = PQresultStatus(q->res);
        if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
            const char *m = PQresultErrorMessage(q->res);
            snprintf(q->err, sizeof q->err, "%s", m && *m ? m : PQerrorMessage(q->conn));
            q->err[strcspn(q->err, "\n")] = 0;
            return PGQ_ERROR;
        }
    }
    if (PQresultStatus(q->res) != PGRES_TUPLES_OK)
        return PGQ_DONE;
    if (q->row + 1 < PQntuples(q->res)) {
        q->row++;
        return PGQ_ROW;
    }
    return PGQ_DONE;
}

void pgq_reset(pgq *q)
{
    PQclear(q->res);
    q->res = NULL;
    q->row = -1;
}

int64_t pgq_changes(const pgq *q)
{
    const char *n = q->res ? PQcmdTuples(q->res) : "";
    return *n ? strtoll(n, NULL, 10) : 0;
}

bool pgq_isnull(const pgq *q, int col)
{
    return PQgetisnull(q->res, q->row, col);
}

const char *pgq_col(const pgq *q, int col)
{
    return PQgetisnull(q->res, q->row, col) ? NULL : PQgetvalue(q->res, q->row, col);
}

int pgq_len(const pgq *q, int col)
{
    return PQgetlength(q->res, q->row, col);
}

int64_t pgq_col_int(const pgq *q, int col)
{
    const char *v = pgq_col(q, col);
    if (!v)
        return 0;
    if (v[0] == 't' || v[0] == 'f') /* a boolean */
        return v[0] == 't';
    return strtoll(v, NULL, 10);
}

double pgq_col_double(const pgq *q, int col)
{
    const char *v = pgq_col(q, col);
    return v ? strtod(v, NULL) : 0;
}

bool pgq_col_bool(const pgq *q, int col)
{
    return pgq_col_int(q, col) != 0;
}

json_t *pgq_col_text(const pgq *q, int col)
{
    const char *v = pgq_col(q, col);
    return v ? json_string(v) : json_null();
}

json_t *pgq_col_json(const pgq *q, int col)
{
    const char *t = pgq_col(q, col);
    if (!t)
        return json_null();
    json_t *v = json_loads(t, JSON_DECODE_ANY, NULL);
    return v ? v : json_string(t);
}

json_t *pgq_col_time(const pgq *q, int col)
{
    if (pgq_isnull(q, col))
        return json_null();
    char t[32];
    rfc3339_format(pgq_col_int(q, col), t);
    return json_string(t);
}

int pg_exec(PGconn *c, const char *sql, char *err, size_t errlen)
{
    PGresult *r = exec_deadline(c, sql, -1, NULL, NULL, err, errlen);
    if (!r)
        return -1;
    ExecStatusType st = PQresultStatus(r);
    int rc = 0;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *m = PQresultErrorMessage(r);
        snprintf(err, errlen, "%s", m && *m ? m : PQerrorMessage(c));
        err[strcspn(err, "\n")] = 0;
        rc = -1;
    }
    PQclear(r);
    return rc;
}
