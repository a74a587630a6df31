/* ingest.c — request body → validated traces and feedback. The rules here
 * are the ones docs/traces.md and docs/trace.schema.json describe; keep the
 * three in step. */
#include "ingest.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define ID_MAX 128
#define NAME_MAX_LEN 128
#define TEXT_MAX (64 * 1024)
#define MAX_INLINE_FEEDBACK 100

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

static const char *type_name(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: return "object";
    case JSON_ARRAY: return "array";
    case JSON_STRING: return "string";
    case JSON_INTEGER: return "integer";
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    default: return "null";
    }
}

static int depth_of(const json_t *j)
{
    int d = 0;
    if (json_is_object(j)) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) {
            int cd = depth_of(v);
            if (cd > d)
                d = cd;
        }
        return d + 1;
    }
    if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach(j, i, v) {
            int cd = depth_of(v);
            if (cd > d)
                d = cd;
        }
        return d + 1;
    }
    return 0;
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

/* A string field with a length range; returns the string or NULL (error added). */
static const char *check_string(vctx *v, json_t *obj, const char *key, const char *path, bool required,
                                size_t maxlen)
{
    json_t *j = json_object_get(obj, key);
    if (!j) {
        if (required)
            add_error(v, path, "is required");
        return NULL;
    }
    if (!json_is_string(j)) {
        add_error(v, path, "must be a string (got %s)", type_name(j));
        return NULL;
    }
    size_t len = json_string_length(j);
    if (len == 0) {
        add_error(v, path, "must not be empty");
        return NULL;
    }
    if (len > maxlen) {
        add_error(v, path, "is too long (%zu bytes, at most %zu)", len, maxlen);
        return NULL;
    }
    return json_string_value(j);
}

static const char *check_id(vctx *v, json_t *obj, const char *key, const char *path, bool required)
{
    const char *s = check_string(v, obj, key, path, required, ID_MAX);
    if (s && !id_chars_ok(s, "-_.:")) {
        add_error(v, path, "may contain only letters, digits and - _ . :");
        return NULL;
    }
    return s;
}

static void check_keys(vctx *v, json_t *obj, const char *path, const char *const *allowed)
{
    const char *k;
    json_t *val;
    json_object_foreach(obj, k, val) {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, k) == 0)
                ok = true;
        if (!ok) {
            char p[300];
            snprintf(p, sizeof p, "%s.%s", path, k);
            add_error(v, p, "is not a known field (put extra data under metadata)");
        }
    }
}

static bool check_type(vctx *v, json_t *j, json_type want, const char *path, const char *want_name)
{
    if (json_typeof(j) != want) {
        add_error(v, path, "must be %s (got %s)", want_name, type_name(j));
        return false;
    }
    return true;
}

static void check_nonneg_number(vctx *v, json_t *obj, const char *key, const char *path, bool integer)
{
    json_t *j = json_object_get(obj, key);
    if (!j)
        return;
    if (integer ? !json_is_integer(j) : !json_is_number(j)) {
        add_error(v, path, "must be %s (got %s)", integer ? "an integer" : "a number", type_name(j));
        return;
    }
    double d = json_number_value(j);
    if (!(d >= 0) || isinf(d))
        add_error(v, path, "must be zero or more");
}

/* timestamp: RFC 3339 string or integer ms since the epoch; default now. */
static int64_t check_timestamp(vctx *v, json_t *obj, const char *path, int64_t now)
{
    json_t *j = json_object_get(obj, "timestamp");
    int64_t ms = now;
    if (!j)
        return ms;
    if (json_is_integer(j)) {
        ms = json_integer_value(j);
    } else if (json_is_string(j)) {
        if (!rfc3339_parse(json_string_value(j), &ms)) {
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

static void set_timestamp(json_t *obj, int64_t ms)
{
    char when[32];
    rfc3339_format(ms, when);
    json_object_set_new(obj, "timestamp", json_string(when));
}

static char *dump(json_t *j, size_t *len)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    *len = strlen(s);
    return s;
}

/* ---- feedback ---- */

static const char *const feedback_keys[] = {"id", "trace_id", "thumbs", "score", "label", "comment", "who",
                                            "timestamp", "metadata", NULL};

/* Validates one feedback object. For inline feedback trace_id may be absent
 * (it is the trace's). Fills f on success; returns false when errors were added. */
static bool validate_feedback(vctx *v, json_t *obj, const char *path, const char *inline_trace_id, int inline_index,
                              const char *source, int64_t now, store_feedback *f)
{
    int before = v->item->nerrors;
    char p[320];
    if (!check_type(v, obj, JSON_OBJECT, path[0] ? path : "", "an object"))
        return false;
    check_keys(v, obj, path, feedback_keys);

    snprintf(p, sizeof p, "%s.id", path);
    const char *id = check_id(v, obj, "id", p, false);
    snprintf(p, sizeof p, "%s.trace_id", path);
    const char *trace_id = check_id(v, obj, "trace_id", p, inline_trace_id == NULL);
    if (inline_trace_id && trace_id && strcmp(trace_id, inline_trace_id) != 0)
        add_error(v, p, "must be the enclosing trace's id or absent");

    int thumbs = 0;
    json_t *j = json_object_get(obj, "thumbs");
    snprintf(p, sizeof p, "%s.thumbs", path);
    if (j) {
        const char *t = json_is_string(j) ? json_string_value(j) : "";
        if (strcmp(t, "up") == 0)
            thumbs = 1;
        else if (strcmp(t, "down") == 0)
            thumbs = -1;
        else
            add_error(v, p, "must be \"up\" or \"down\"");
    }
    j = json_object_get(obj, "score");
    snprintf(p, sizeof p, "%s.score", path);
    if (j && (!json_is_number(j) || !(json_number_value(j) >= 0 && json_number_value(j) <= 1)))
        add_error(v, p, "must be a number from 0 to 1");
    snprintf(p, sizeof p, "%s.label", path);
    check_string(v, obj, "label", p, false, 256);
    snprintf(p, sizeof p, "%s.comment", path);
    check_string(v, obj, "comment", p, false, TEXT_MAX);
    snprintf(p, sizeof p, "%s.who", path);
    check_string(v, obj, "who", p, false, 256);
    snprintf(p, sizeof p, "%s.metadata", path);
    if ((j = json_object_get(obj, "metadata")))
        check_type(v, j, JSON_OBJECT, p, "an object");
    snprintf(p, sizeof p, "%s.timestamp", path);
    int64_t ts = check_timestamp(v, obj, p, now);
    if (!json_object_get(obj, "thumbs") && !json_object_get(obj, "score") && !json_object_get(obj, "label") &&
        !json_object_get(obj, "comment"))
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
    json_t *norm = json_deep_copy(obj);
    json_object_set_new(norm, "id", json_string(id));
    json_object_set_new(norm, "trace_id", json_string(tid));
    json_object_set_new(norm, "source", json_string(source));
    set_timestamp(norm, ts);
    f->id = xstrdup(id);
    f->trace_id = xstrdup(tid);
    f->source = source;
    f->thumbs = thumbs;
    f->ts_ms = ts;
    f->json = dump(norm, &f->json_len);
    json_decref(norm);
    return true;
}

/* ---- traces ---- */

static const char *const trace_keys[] = {"id", "prompt", "input", "output", "error", "tool_calls", "model",
                                         "latency_ms", "usage", "timestamp", "metadata", "retry_of",
                                         "feedback", NULL};
static const char *const prompt_keys[] = {"name", "version", NULL};
static const char *const input_keys[] = {"variables", "messages", NULL};
static const char *const usage_keys[] = {"input_tokens", "output_tokens", "cost_usd", NULL};
static const char *const tool_call_keys[] = {"id", "name", "arguments", NULL};

static void validate_messages(vctx *v, json_t *msgs)
{
    if (!check_type(v, msgs, JSON_ARRAY, ".input.messages", "an array"))
        return;
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        char p[96];
        snprintf(p, sizeof p, ".input.messages[%zu]", i);
        if (!check_type(v, m, JSON_OBJECT, p, "an object"))
            continue;
        char rp[120];
        snprintf(rp, sizeof rp, "%s.role", p);
        const char *role = check_string(v, m, "role", rp, true, 32);
        if (role && strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant") &&
            strcmp(role, "tool") && strcmp(role, "developer"))
            add_error(v, rp, "must be one of system, developer, user, assistant, tool");
        json_t *content = json_object_get(m, "content");
        snprintf(rp, sizeof rp, "%s.content", p);
        if (content && !json_is_string(content) && !json_is_array(content) && !json_is_null(content))
            add_error(v, rp, "must be a string, an array of parts or null (got %s)", type_name(content));
    }
}

static void validate_tool_calls(vctx *v, json_t *calls)
{
    if (!check_type(v, calls, JSON_ARRAY, ".tool_calls", "an array"))
        return;
    size_t i;
    json_t *c;
    json_array_foreach(calls, i, c) {
        char p[64], fp[96];
        snprintf(p, sizeof p, ".tool_calls[%zu]", i);
        if (!check_type(v, c, JSON_OBJECT, p, "an object"))
            continue;
        check_keys(v, c, p, tool_call_keys);
        snprintf(fp, sizeof fp, "%s.id", p);
        check_string(v, c, "id", fp, false, 256);
        snprintf(fp, sizeof fp, "%s.name", p);
        check_string(v, c, "name", fp, true, 256);
        json_t *args = json_object_get(c, "arguments");
        snprintf(fp, sizeof fp, "%s.arguments", p);
        if (args && !json_is_object(args) && !json_is_string(args))
            add_error(v, fp, "must be an object or a JSON string (got %s)", type_name(args));
    }
}

/* raw: the item's own text when the body holds it verbatim (a single object,
 * an NDJSON line); it is stored as sent, which saves re-encoding. Array items
 * are re-encoded. Either way the id and timestamp columns are canonical and
 * the read paths put them into the JSON they return. */
static bool validate_trace(vctx *v, json_t *t, const char *raw, size_t raw_len, int64_t now, store_trace *out,
                           store_feedback **fb, size_t *nfb)
{
    if (!check_type(v, t, JSON_OBJECT, "", "an object"))
        return false;
    check_keys(v, t, "", trace_keys);
    const char *id = check_id(v, t, "id", ".id", false);
    json_t *prompt = json_object_get(t, "prompt");
    const char *pname = NULL;
    int64_t version = 0;
    if (!prompt) {
        add_error(v, ".prompt", "is required");
    } else if (check_type(v, prompt, JSON_OBJECT, ".prompt", "an object")) {
        check_keys(v, prompt, ".prompt", prompt_keys);
        pname = check_string(v, prompt, "name", ".prompt.name", true, NAME_MAX_LEN);
        if (pname && !id_chars_ok(pname, "-_.:/"))
            add_error(v, ".prompt.name", "may contain only letters, digits and - _ . : /"), pname = NULL;
        json_t *ver = json_object_get(prompt, "version");
        if (ver) {
            if (!json_is_integer(ver) || json_integer_value(ver) < 1 || json_integer_value(ver) > 2147483647)
                add_error(v, ".prompt.version", "must be a positive integer");
            else
                version = json_integer_value(ver);
        }
    }
    json_t *input = json_object_get(t, "input");
    if (input && check_type(v, input, JSON_OBJECT, ".input", "an object")) {
        check_keys(v, input, ".input", input_keys);
        json_t *vars = json_object_get(input, "variables");
        json_t *msgs = json_object_get(input, "messages");
        if (!vars && !msgs)
            add_error(v, ".input", "needs variables, messages or both");
        if (vars)
            check_type(v, vars, JSON_OBJECT, ".input.variables", "an object");
        if (msgs)
            validate_messages(v, msgs);
    }
    json_t *output = json_object_get(t, "output");
    const char *error = check_string(v, t, "error", ".error", false, TEXT_MAX);
    if (!output && !error)
        add_error(v, ".output", "is required (or give error for a failed call)");
    else if (output && json_is_null(output) && !error)
        add_error(v, ".output", "must not be null (or give error for a failed call)");
    json_t *calls = json_object_get(t, "tool_calls");
    if (calls)
        validate_tool_calls(v, calls);
    check_string(v, t, "model", ".model", false, 256);
    check_nonneg_number(v, t, "latency_ms", ".latency_ms", false);
    json_t *usage = json_object_get(t, "usage");
    if (usage && check_type(v, usage, JSON_OBJECT, ".usage", "an object")) {
        check_keys(v, usage, ".usage", usage_keys);
        check_nonneg_number(v, usage, "input_tokens", ".usage.input_tokens", true);
        check_nonneg_number(v, usage, "output_tokens", ".usage.output_tokens", true);
        check_nonneg_number(v, usage, "cost_usd", ".usage.cost_usd", false);
    }
    int64_t ts = check_timestamp(v, t, ".timestamp", now);
    json_t *meta = json_object_get(t, "metadata");
    if (meta)
        check_type(v, meta, JSON_OBJECT, ".metadata", "an object");
    const char *retry_of = check_id(v, t, "retry_of", ".retry_of", false);
    if (retry_of && id && strcmp(retry_of, id) == 0)
        add_error(v, ".retry_of", "must name an earlier trace, not this one");

    json_t *feedback = json_object_get(t, "feedback");
    if (feedback && json_is_array(feedback) && json_array_size(feedback) > MAX_INLINE_FEEDBACK)
        add_error(v, ".feedback", "has more than %d items", MAX_INLINE_FEEDBACK);
    if (feedback && !json_is_array(feedback) && !json_is_object(feedback))
        add_error(v, ".feedback", "must be an object or an array of objects (got %s)", type_name(feedback));
    if (v->item->nerrors)
        return false;

    char idbuf[40];
    if (!id) {
        id_uuid7(idbuf);
        id = idbuf;
    }
    /* inline feedback becomes feedback rows; it is not kept in the trace body */
    if (feedback) {
        size_t n = json_is_array(feedback) ? json_array_size(feedback) : 1;
        *fb = xcalloc(n, sizeof **fb);
        for (size_t i = 0; i < n; i++) {
            json_t *f = json_is_array(feedback) ? json_array_get(feedback, i) : feedback;
            char p[64];
            if (json_is_array(feedback))
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
    if (raw) {
        out->json = xstrndup(raw, raw_len);
        out->json_len = raw_len;
    } else {
        json_t *norm = json_copy(t); /* shallow: only top-level keys change */
        json_object_del(norm, "feedback");
        json_object_set_new(norm, "id", json_string(id));
        set_timestamp(norm, ts);
        out->json = dump(norm, &out->json_len);
        json_decref(norm);
    }
    v->item->id = xstrdup(id);
    return true;
}

/* ---- batches ---- */

typedef struct {
    json_t *value; /* NULL when the line did not parse */
    const char *text; /* the item's text in the body, or NULL (array items) */
    size_t text_len;
    int line;
    char parse_error[200];
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

int ingest_parse(ingest_kind kind, const char *body, size_t len, bool ndjson, size_t max_items, int64_t now,
                 ingest_batch *out, const char **err_code, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->kind = kind;
    raw_item *raw = NULL;
    size_t nraw = 0;
    bool array_form = false;
    json_error_t jerr;
    const size_t flags = JSON_REJECT_DUPLICATES;

    if (!ndjson) {
        json_t *all = json_loadb(body, len, flags, &jerr);
        if (!all && json_error_code(&jerr) == json_error_end_of_input_expected) {
            ndjson = true; /* several JSON values, one per line */
        } else if (!all) {
            *err_code = "malformed_json";
            snprintf(err, errlen, "the body is not valid %s: %s at line %d column %d",
                     json_error_code(&jerr) == json_error_invalid_utf8 ? "UTF-8" : "JSON", jerr.text, jerr.line,
                     jerr.column);
            return 400;
        } else if (json_is_array(all)) {
            array_form = true;
            nraw = json_array_size(all);
            if (nraw > max_items) {
                json_decref(all);
                *err_code = "too_many_items";
                snprintf(err, errlen, "the batch has %zu items; at most %zu are allowed per request", nraw, max_items);
                return 413;
            }
            raw = xcalloc(nraw, sizeof *raw);
            for (size_t i = 0; i < nraw; i++)
                raw[i].value = json_incref(json_array_get(all, i));
            json_decref(all);
        } else {
            nraw = 1;
            raw = xcalloc(1, sizeof *raw);
            raw[0].value = all;
            raw[0].text = body;
            raw[0].text_len = len;
        }
    }
    if (ndjson) {
        size_t cap = 0;
        int line = 0;
        const char *p = body, *end = body + len;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *le = nl ? nl : end;
            line++;
            const char *q = p;
            while (q < le && (*q == ' ' || *q == '\t' || *q == '\r'))
                q++;
            if (q < le) {
                if (nraw == max_items) {
                    for (size_t i = 0; i < nraw; i++)
                        json_decref(raw[i].value);
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
                r->text = p;
                r->text_len = (size_t)(le - p);
                r->value = json_loadb(p, (size_t)(le - p), flags, &jerr);
                if (!r->value)
                    snprintf(r->parse_error, sizeof r->parse_error, "not valid %s: %s at column %d",
                             json_error_code(&jerr) == json_error_invalid_utf8 ? "UTF-8" : "JSON", jerr.text,
                             jerr.column);
            }
            p = le + 1;
        }
    }
    if (nraw == 0) {
        free(raw);
        *err_code = "empty_batch";
        snprintf(err, errlen, "the body holds no items");
        return 400;
    }

    out->nitems = nraw;
    out->items = xcalloc(nraw, sizeof *out->items);
    if (kind == INGEST_TRACES)
        out->write.traces = xcalloc(nraw, sizeof *out->write.traces);
    else
        out->write.feedback = xcalloc(nraw, sizeof *out->write.feedback);
    /* inline feedback of traces, appended after the loop */
    store_feedback *inline_fb = NULL;
    size_t ninline = 0, inline_cap = 0;

    for (size_t i = 0; i < nraw; i++) {
        ingest_item *it = &out->items[i];
        it->write_index = -1;
        it->line = raw[i].line;
        char base[32];
        if (array_form)
            snprintf(base, sizeof base, "$[%zu]", i);
        else
            snprintf(base, sizeof base, "$");
        vctx v = {it, base};
        if (!raw[i].value) {
            add_error(&v, "", "%s", raw[i].parse_error);
            continue;
        }
        if (depth_of(raw[i].value) > INGEST_MAX_DEPTH) {
            add_error(&v, "", "is nested deeper than %d levels", INGEST_MAX_DEPTH);
            continue;
        }
        if (kind == INGEST_TRACES) {
            store_feedback *fb = NULL;
            size_t nfb = 0;
            store_trace *t = &out->write.traces[out->write.ntraces];
            const char *text = raw[i].text;
            size_t tlen = raw[i].text_len;
            while (text && tlen && strchr(" \t\r\n", text[0]))
                text++, tlen--;
            while (text && tlen && strchr(" \t\r\n", text[tlen - 1]))
                tlen--;
            if (validate_trace(&v, raw[i].value, text, tlen, now, t, &fb, &nfb)) {
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
            if (validate_feedback(&v, raw[i].value, "", NULL, 0, "explicit", now, f)) {
                it->write_index = (int)out->write.nfeedback++;
                it->id = xstrdup(f->id);
            }
        }
    }
    for (size_t i = 0; i < nraw; i++)
        json_decref(raw[i].value);
    free(raw);
    out->array_form = array_form;
    if (ninline) {
        out->write.feedback = xrealloc(out->write.feedback, (out->write.nfeedback + ninline) * sizeof *inline_fb);
        memcpy(out->write.feedback + out->write.nfeedback, inline_fb, ninline * sizeof *inline_fb);
        out->write.nfeedback += ninline;
    }
    free(inline_fb);
    return 0;
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
    json_t *j = json_string(s);
    char tmp[512];
    size_t n = json_dumpb(j, tmp, sizeof tmp, JSON_ENCODE_ANY);
    if (n <= sizeof tmp) {
        buf_append(b, tmp, n);
    } else {
        char *big = json_dumps(j, JSON_ENCODE_ANY);
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
