/* otlp_decode.c — OTLP export requests into plain spans and log records
 * (otlp_decode.h): protobuf through protobuf-c (the project's own
 * proto/otlp.proto, generated at build time), OTLP JSON through jtree, gzip
 * through zlib. One plain form for both encodings, so the mapping
 * (otlp_map.c) reads one model. */
#include "api/otlp_decode.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <otlp.pb-c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistr.h>
#include <zlib.h>

#include "base/jtree.h"
#include "base/util.h"

/* Why an item is invalid: the first reason found. */
typedef struct {
    char why[256];
} fault;

static void fail(fault *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(fault *f, const char *fmt, ...)
{
    if (f->why[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->why, sizeof f->why, fmt, ap);
    va_end(ap);
}

/* A key for messages: printable ASCII, cut short. */
static const char *show(const char *s, size_t n, char out[64])
{
    size_t j = 0;
    for (size_t i = 0; i < n && j < 60; i++)
        out[j++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[j] = '\0';
    return out;
}

static json_t *text_or_fail(const void *p, size_t n, fault *f, const char *what)
{
    json_t *s = json_stringn(n ? p : "", n);
    if (!s)
        fail(f, "%s is not valid UTF-8", what);
    return s;
}

static json_t *hex_id(const uint8_t *p, size_t n, size_t want, fault *f, const char *what)
{
    if (n != want) {
        fail(f, "%s must be %zu bytes (got %zu)", what, want, n);
        return NULL;
    }
    static const char digits[] = "0123456789abcdef";
    char h[65];
    for (size_t i = 0; i < n; i++) {
        h[2 * i] = digits[p[i] >> 4];
        h[2 * i + 1] = digits[p[i] & 15];
    }
    return json_stringn_nocheck(h, 2 * n);
}

static json_t *base64(const uint8_t *p, size_t n)
{
    char *out = xmalloc(4 * ((n + 2) / 3) + 1);
    int len = EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    json_t *s = json_stringn(out, len > 0 ? (size_t)len : 0);
    free(out);
    return s;
}

static json_t *nanos(uint64_t ns)
{
    return json_integer(ns > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)ns);
}

/* ---- protobuf ---- */

static json_t *pb_value(const Otlp__AnyValue *v, int depth, const char *kp, size_t kn, fault *f);

static json_t *pb_attrs(Otlp__KeyValue **kv, size_t n, int depth, const char *what, fault *f)
{
    if (n > OTLP_MAX_ATTRIBUTES) {
        fail(f, "%s has %zu attributes; at most %d are read", what, n, OTLP_MAX_ATTRIBUTES);
        return json_object();
    }
    json_t *o = json_object();
    for (size_t i = 0; i < n && !f->why[0]; i++) {
        char k[64];
        const ProtobufCBinaryData *key = &kv[i]->key;
        const char *ks = key->len ? (const char *)key->data : "";
        if (memchr(ks, '\0', key->len) || u8_check((const uint8_t *)ks, key->len)) {
            fail(f, "%s: attribute key '%s' is not valid UTF-8 text without NUL", what, show(ks, key->len, k));
            break;
        }
        json_t *val = kv[i]->value ? pb_value(kv[i]->value, depth, ks, key->len, f) : json_null();
        if (val)
            json_object_setn_new_nocheck(o, ks, key->len, val);
    }
    return o;
}

static json_t *pb_value(const Otlp__AnyValue *v, int depth, const char *kp, size_t kn, fault *f)
{
    char key[64]; /* the key for messages, written only when one is */
#define KEY show(kp, kn, key)
    if (depth > OTLP_MAX_DEPTH) {
        fail(f, "attribute '%s' is nested deeper than %d levels", KEY, OTLP_MAX_DEPTH);
        return NULL;
    }
    switch (v->value_case) {
    case OTLP__ANY_VALUE__VALUE_STRING_VALUE: {
        /* the message is written only when the text is invalid (this runs for every string value) */
        const ProtobufCBinaryData *t = &v->string_value;
        json_t *j = json_stringn(t->len ? (const char *)t->data : "", t->len);
        if (!j)
            fail(f, "the value of attribute '%s' is not valid UTF-8", KEY);
        return j;
    }
    case OTLP__ANY_VALUE__VALUE_BOOL_VALUE: return json_boolean(v->bool_value);
    case OTLP__ANY_VALUE__VALUE_INT_VALUE: return json_integer(v->int_value);
    case OTLP__ANY_VALUE__VALUE_DOUBLE_VALUE: {
        json_t *r = json_real(v->double_value); /* NULL for NaN and infinities */
        return r ? r : json_null();
    }
    case OTLP__ANY_VALUE__VALUE_BYTES_VALUE: return base64(v->bytes_value.data, v->bytes_value.len);
    case OTLP__ANY_VALUE__VALUE_ARRAY_VALUE: {
        Otlp__ArrayValue *a = otlp__array_value__unpack(NULL, v->array_value.len, v->array_value.data);
        if (!a) {
            fail(f, "attribute '%s': its array value is not a valid ArrayValue", KEY);
            return NULL;
        }
        json_t *out = json_array();
        for (size_t i = 0; i < a->n_values && !f->why[0]; i++) {
            Otlp__AnyValue *e = otlp__any_value__unpack(NULL, a->values[i].len, a->values[i].data);
            if (!e) {
                fail(f, "attribute '%s': element %zu is not a valid AnyValue", KEY, i);
                break;
            }
            json_t *j = pb_value(e, depth + 1, kp, kn, f);
            otlp__any_value__free_unpacked(e, NULL);
            if (j)
                json_array_append_new(out, j);
        }
        otlp__array_value__free_unpacked(a, NULL);
        return out;
    }
    case OTLP__ANY_VALUE__VALUE_KVLIST_VALUE: {
        Otlp__KeyValueList *l = otlp__key_value_list__unpack(NULL, v->kvlist_value.len, v->kvlist_value.data);
        if (!l) {
            fail(f, "attribute '%s': its kvlist value is not a valid KeyValueList", KEY);
            return NULL;
        }
        char what[128];
        snprintf(what, sizeof what, "attribute '%s'", KEY);
        json_t *out = pb_attrs(l->values, l->n_values, depth + 1, what, f);
        otlp__key_value_list__free_unpacked(l, NULL);
        return out;
    }
    default: return json_null();
    }
}
#undef KEY

static void set_text(json_t *o, const char *name, const ProtobufCBinaryData *b, fault *f, const char *what)
{
    json_t *s = text_or_fail(b->data, b->len, f, what);
    if (s)
        json_object_set_new(o, name, s);
}

static void mark(json_t *item, fault *f)
{
    if (f->why[0])
        json_object_set_new_nocheck(item, "invalid", json_string(f->why));
}

static json_t *pb_resource(const Otlp__Resource *r, fault *f)
{
    return r ? pb_attrs(r->attributes, r->n_attributes, 0, "the resource", f) : json_object();
}

static json_t *pb_scope(const Otlp__InstrumentationScope *s)
{
    json_t *n = s ? json_stringn(s->name.len ? (const char *)s->name.data : "", s->name.len) : NULL;
    return n ? n : json_string("");
}

/* A span's fields but its attributes and events. */
static json_t *pb_span_head(const Otlp__Span *s, json_t *resource, json_t *scope, fault *f)
{
    json_t *o = json_object();
    json_t *tid = hex_id(s->trace_id.data, s->trace_id.len, 16, f, "traceId");
    json_t *sid = hex_id(s->span_id.data, s->span_id.len, 8, f, "spanId");
    json_object_set_new_nocheck(o, "trace_id", tid ? tid : json_string(""));
    json_object_set_new_nocheck(o, "span_id", sid ? sid : json_string(""));
    set_text(o, "name", &s->name, f, "the span name");
    json_object_set_new_nocheck(o, "start_ns", nanos(s->start_time_unix_nano));
    json_object_set_new_nocheck(o, "end_ns", nanos(s->end_time_unix_nano));
    json_object_set_new_nocheck(o, "status_code", json_integer(s->status ? s->status->code : 0));
    if (s->status)
        set_text(o, "status_message", &s->status->message, f, "the status message");
    json_object_set_nocheck(o, "resource", resource);
    json_object_set_nocheck(o, "scope", scope);
    return o;
}

static json_t *pb_span(const Otlp__Span *s, json_t *resource, json_t *scope, const char *resource_fault)
{
    fault f = {{0}};
    if (resource_fault[0])
        fail(&f, "%s", resource_fault);
    json_t *o = pb_span_head(s, resource, scope, &f);
    json_object_set_new_nocheck(o, "attributes", pb_attrs(s->attributes, s->n_attributes, 0, "the span", &f));
    json_t *events = json_array();
    for (size_t i = 0; i < s->n_events && !f.why[0]; i++) {
        const Otlp__Event *e = s->events[i];
        json_t *ev = json_object();
        set_text(ev, "name", &e->name, &f, "an event name");
        json_object_set_new_nocheck(ev, "time_ns", nanos(e->time_unix_nano));
        json_object_set_new_nocheck(ev, "attributes", pb_attrs(e->attributes, e->n_attributes, 0, "an event", &f));
        json_array_append_new(events, ev);
    }
    json_object_set_new_nocheck(o, "events", events);
    mark(o, &f);
    return o;
}

static json_t *pb_log(const Otlp__LogRecord *r, json_t *resource, json_t *scope, const char *resource_fault)
{
    fault f = {{0}};
    if (resource_fault[0])
        fail(&f, "%s", resource_fault);
    json_t *o = json_object();
    /* a log record may belong to no span: its ids are then empty */
    json_t *tid = r->trace_id.len ? hex_id(r->trace_id.data, r->trace_id.len, 16, &f, "traceId") : NULL;
    json_t *sid = r->span_id.len ? hex_id(r->span_id.data, r->span_id.len, 8, &f, "spanId") : NULL;
    json_object_set_new_nocheck(o, "trace_id", tid ? tid : json_string(""));
    json_object_set_new_nocheck(o, "span_id", sid ? sid : json_string(""));
    json_object_set_new_nocheck(o, "time_ns", nanos(r->time_unix_nano ? r->time_unix_nano : r->observed_time_unix_nano));
    set_text(o, "event_name", &r->event_name, &f, "the event name");
    json_object_set_nocheck(o, "resource", resource);
    json_object_set_nocheck(o, "scope", scope);
    json_object_set_new_nocheck(o, "attributes", pb_attrs(r->attributes, r->n_attributes, 0, "the log record", &f));
    json_t *body = r->body ? pb_value(r->body, 0, "body", 4, &f) : NULL;
    json_object_set_new_nocheck(o, "body", body ? body : json_null());
    mark(o, &f);
    return o;
}

/* ---- protobuf spans read in place (otlp_decode.h) ---- */

struct otlp_pb_span {
    const Otlp__Span *s;
    json_t *resource, *scope;
    json_t **vals; /* each attribute's plain value once asked for (or made while checking) */
};

/* Whether pb_attrs would find no fault in the span's attributes, without
 * building them: keys and strings checked as text (jansson's rules are
 * RFC 3629's, as u8_check's), arrays and kvlists made now by pb_value
 * (which checks them as it goes) and kept in vals. */
static bool pb_attrs_clean(const Otlp__Span *s, json_t **vals)
{
    if (s->n_attributes > OTLP_MAX_ATTRIBUTES)
        return false;
    for (size_t i = 0; i < s->n_attributes; i++) {
        const ProtobufCBinaryData *key = &s->attributes[i]->key;
        const char *ks = key->len ? (const char *)key->data : "";
        if (memchr(ks, '\0', key->len) || !utf8_valid(ks, key->len))
            return false;
        const Otlp__AnyValue *v = s->attributes[i]->value;
        if (!v)
            continue;
        if (v->value_case == OTLP__ANY_VALUE__VALUE_STRING_VALUE) {
            if (v->string_value.len && !utf8_valid((const char *)v->string_value.data, v->string_value.len))
                return false;
        } else if (v->value_case == OTLP__ANY_VALUE__VALUE_ARRAY_VALUE ||
                   v->value_case == OTLP__ANY_VALUE__VALUE_KVLIST_VALUE) {
            fault f = {{0}};
            vals[i] = pb_value(v, 0, ks, key->len, &f);
            if (f.why[0])
                return false;
        }
    }
    return true;
}

static json_t *pb_value_of(otlp_pb_span *p, size_t i)
{
    if (p->vals[i])
        return p->vals[i];
    const Otlp__AnyValue *v = p->s->attributes[i]->value;
    if (!v) {
        p->vals[i] = json_null();
    } else if (v->value_case == OTLP__ANY_VALUE__VALUE_STRING_VALUE) {
        /* checked by pb_attrs_clean */
        p->vals[i] = json_stringn_nocheck(v->string_value.len ? (const char *)v->string_value.data : "",
                                          v->string_value.len);
    } else {
        fault f = {{0}};
        const ProtobufCBinaryData *key = &p->s->attributes[i]->key;
        p->vals[i] = pb_value(v, 0, (const char *)key->data, key->len, &f);
        if (!p->vals[i])
            p->vals[i] = json_null();
    }
    return p->vals[i];
}

/* The position of attribute key: the last of equal keys, as in the plain span's object. */
static bool pb_find(const otlp_pb_span *p, const char *key, size_t *at)
{
    size_t kl = strlen(key);
    for (size_t i = p->s->n_attributes; i-- > 0;) {
        const ProtobufCBinaryData *k = &p->s->attributes[i]->key;
        if (k->len == kl && !memcmp(k->data, key, kl)) {
            *at = i;
            return true;
        }
    }
    return false;
}

json_t *otlp_pb_attr(otlp_pb_span *p, const char *key)
{
    size_t i;
    return pb_find(p, key, &i) ? pb_value_of(p, i) : NULL;
}

const char *otlp_pb_text(otlp_pb_span *p, const char *key, size_t *len)
{
    size_t i;
    if (!pb_find(p, key, &i))
        return NULL;
    const Otlp__AnyValue *v = p->s->attributes[i]->value;
    if (!v || v->value_case != OTLP__ANY_VALUE__VALUE_STRING_VALUE)
        return NULL;
    *len = v->string_value.len;
    return v->string_value.len ? (const char *)v->string_value.data : "";
}

bool otlp_pb_key(const otlp_pb_span *p, size_t i, const char **key, size_t *len)
{
    if (i >= p->s->n_attributes)
        return false;
    const ProtobufCBinaryData *k = &p->s->attributes[i]->key;
    *key = k->len ? (const char *)k->data : "";
    *len = k->len;
    return true;
}

json_t *otlp_pb_plain(const otlp_pb_span *p)
{
    return pb_span(p->s, p->resource, p->scope, "");
}

/* Every span of a protobuf ExportTraceServiceRequest to fn, in order: in
 * place where it can be (in_place), else as the plain span. */
static int walk_pb_spans(const char *body, size_t len, bool in_place,
                         void (*fn)(void *ud, json_t *span, otlp_pb_span *s), void *ud, char *err, size_t errlen)
{
    Otlp__ExportTraceServiceRequest *rq = otlp__export_trace_service_request__unpack(NULL, len, (const uint8_t *)body);
    if (!rq) {
        snprintf(err, errlen, "the body is not a protobuf ExportTraceServiceRequest (truncated, or a field of the wrong wire type)");
        return -1;
    }
    json_t **vals = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < rq->n_resource_spans; i++) {
        const Otlp__ResourceSpans *rs = rq->resource_spans[i];
        fault rf = {{0}};
        json_t *res = pb_resource(rs->resource, &rf);
        for (size_t j = 0; j < rs->n_scope_spans; j++) {
            json_t *scope = pb_scope(rs->scope_spans[j]->scope);
            for (size_t k = 0; k < rs->scope_spans[j]->n_spans; k++) {
                const Otlp__Span *s = rs->scope_spans[j]->spans[k];
                size_t n = s->n_attributes;
                if (n > cap) {
                    cap = n > 2 * cap ? n : 2 * cap;
                    vals = xrealloc(vals, cap * sizeof *vals);
                }
                memset(vals, 0, n * sizeof *vals);
                fault f = {{0}};
                json_t *head = NULL;
                /* in place: no fault anywhere (ids, texts, attributes) and no events (they stay plain) */
                if (in_place && !rf.why[0] && !s->n_events && pb_attrs_clean(s, vals)) {
                    head = pb_span_head(s, res, scope, &f);
                    if (f.why[0]) {
                        json_decref(head);
                        head = NULL;
                    }
                }
                if (head) {
                    otlp_pb_span p = {.s = s, .resource = res, .scope = scope, .vals = vals};
                    fn(ud, head, &p);
                } else {
                    head = pb_span(s, res, scope, rf.why);
                    fn(ud, head, NULL);
                }
                json_decref(head);
                for (size_t v = 0; v < n; v++)
                    json_decref(vals[v]);
            }
            json_decref(scope);
        }
        json_decref(res);
    }
    free(vals);
    otlp__export_trace_service_request__free_unpacked(rq, NULL);
    return 0;
}

int otlp_decode_pb_spans(const char *body, size_t len, void (*fn)(void *ud, json_t *span, otlp_pb_span *s), void *ud,
                         char *err, size_t errlen)
{
    return walk_pb_spans(body, len, true, fn, ud, err, errlen);
}

static void append_span(void *ud, json_t *span, otlp_pb_span *s)
{
    (void)s;
    json_array_append(ud, span);
}

static json_t *decode_pb(otlp_signal sig, const char *body, size_t len, char *err, size_t errlen)
{
    json_t *out = json_array();
    if (sig == OTLP_TRACES) {
        if (walk_pb_spans(body, len, false, append_span, out, err, errlen)) {
            json_decref(out);
            return NULL;
        }
    } else {
        Otlp__ExportLogsServiceRequest *rq = otlp__export_logs_service_request__unpack(NULL, len, (const uint8_t *)body);
        if (!rq) {
            snprintf(err, errlen, "the body is not a protobuf ExportLogsServiceRequest (truncated, or a field of the wrong wire type)");
            json_decref(out);
            return NULL;
        }
        for (size_t i = 0; i < rq->n_resource_logs; i++) {
            const Otlp__ResourceLogs *rl = rq->resource_logs[i];
            fault rf = {{0}};
            json_t *res = pb_resource(rl->resource, &rf);
            for (size_t j = 0; j < rl->n_scope_logs; j++) {
                json_t *scope = pb_scope(rl->scope_logs[j]->scope);
                for (size_t k = 0; k < rl->scope_logs[j]->n_log_records; k++)
                    json_array_append_new(out, pb_log(rl->scope_logs[j]->log_records[k], res, scope, rf.why));
                json_decref(scope);
            }
            json_decref(res);
        }
        otlp__export_logs_service_request__free_unpacked(rq, NULL);
    }
    return out;
}

/* ---- OTLP JSON ---- */

static json_t *js_value(json_t *v, int depth, const char *key, fault *f);

static json_t *js_attrs(json_t *list, int depth, const char *what, fault *f)
{
    json_t *o = json_object();
    if (!list || json_is_null(list))
        return o;
    if (!json_is_array(list)) {
        fail(f, "%s: attributes must be an array of {key, value}", what);
        return o;
    }
    if (json_array_size(list) > OTLP_MAX_ATTRIBUTES) {
        fail(f, "%s has %zu attributes; at most %d are read", what, json_array_size(list), OTLP_MAX_ATTRIBUTES);
        return o;
    }
    size_t i;
    json_t *kv;
    json_array_foreach(list, i, kv) {
        json_t *k = json_object_get(kv, "key");
        if (!json_is_string(k) || strlen(json_string_value(k)) != json_string_length(k)) {
            fail(f, "%s: attribute %zu has no key (a string)", what, i);
            break;
        }
        json_t *val = js_value(json_object_get(kv, "value"), depth, json_string_value(k), f);
        if (f->why[0]) {
            json_decref(val);
            break;
        }
        /* the key's text was checked by the parser, and above for NUL */
        json_object_setn_new_nocheck(o, json_string_value(k), json_string_length(k), val ? val : json_null());
    }
    return o;
}

static bool js_u64(json_t *v, uint64_t *out)
{
    if (!v || json_is_null(v)) {
        *out = 0;
        return true;
    }
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (uint64_t)json_integer_value(v);
        return true;
    }
    if (!json_is_string(v))
        return false;
    const char *s = json_string_value(v);
    if (!*s || *s == '-' || *s == '+' || *s == ' ')
        return false;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    if (errno || *end)
        return false;
    *out = n;
    return true;
}

static json_t *js_value(json_t *v, int depth, const char *key, fault *f)
{
    if (depth > OTLP_MAX_DEPTH) {
        fail(f, "attribute '%s' is nested deeper than %d levels", key, OTLP_MAX_DEPTH);
        return NULL;
    }
    if (!v || json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0))
        return json_null();
    if (!json_is_object(v)) {
        fail(f, "attribute '%s': a value must be an AnyValue object like {\"stringValue\": \"...\"}", key);
        return NULL;
    }
    json_t *x;
    if ((x = json_object_get(v, "stringValue"))) {
        if (json_is_string(x))
            return json_incref(x);
    } else if ((x = json_object_get(v, "boolValue"))) {
        if (json_is_boolean(x))
            return json_incref(x);
    } else if ((x = json_object_get(v, "intValue"))) {
        if (json_is_integer(x))
            return json_incref(x);
        if (json_is_string(x)) {
            const char *s = json_string_value(x);
            char *end;
            errno = 0;
            long long n = strtoll(s, &end, 10);
            if (*s && !errno && !*end && *s != ' ')
                return json_integer(n);
        }
    } else if ((x = json_object_get(v, "doubleValue"))) {
        if (json_is_number(x))
            return json_real(json_number_value(x));
        if (json_is_string(x))
            return json_null(); /* "NaN", "Infinity": JSON has no number for them */
    } else if ((x = json_object_get(v, "bytesValue"))) {
        if (json_is_string(x))
            return json_incref(x);
    } else if ((x = json_object_get(v, "arrayValue"))) {
        json_t *vals = json_object_get(x, "values");
        if (json_is_object(x) && (!vals || json_is_array(vals))) {
            json_t *out = json_array();
            size_t i;
            json_t *e;
            json_array_foreach(vals, i, e) {
                json_t *j = js_value(e, depth + 1, key, f);
                if (!j)
                    break;
                json_array_append_new(out, j);
            }
            return out;
        }
    } else if ((x = json_object_get(v, "kvlistValue"))) {
        if (json_is_object(x)) {
            char what[128];
            snprintf(what, sizeof what, "attribute '%.60s'", key);
            return js_attrs(json_object_get(x, "values"), depth + 1, what, f);
        }
    }
    fail(f, "attribute '%s': not a valid AnyValue (one of stringValue, boolValue, intValue, doubleValue, "
            "arrayValue, kvlistValue, bytesValue with a value of its type)", key);
    return NULL;
}

/* A hex id of want bytes, lower-cased; empty allowed when may_be_empty. */
static json_t *js_id(json_t *v, size_t want, bool may_be_empty, fault *f, const char *what)
{
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    if (!v && may_be_empty)
        return json_string("");
    if (!s) {
        fail(f, "%s must be a hex string of %zu bytes", what, want);
        return json_string("");
    }
    size_t n = strlen(s);
    if (n == 0 && may_be_empty)
        return json_string("");
    if (n != 2 * want || strspn(s, "0123456789abcdefABCDEF") != n) {
        fail(f, "%s must be %zu hex digits (got %zu characters)", what, 2 * want, n);
        return json_string("");
    }
    char low[65];
    for (size_t i = 0; i < n; i++)
        low[i] = (char)(s[i] >= 'A' && s[i] <= 'F' ? s[i] + 32 : s[i]);
    return json_stringn_nocheck(low, n); /* hex digits */
}

static json_t *js_text(json_t *v)
{
    return json_is_string(v) ? json_incref(v) : json_string("");
}

static json_t *js_time(json_t *v, fault *f, const char *what)
{
    uint64_t ns;
    if (!js_u64(v, &ns)) {
        fail(f, "%s must be an unsigned integer of nanoseconds (a number or a decimal string)", what);
        ns = 0;
    }
    return nanos(ns);
}

static json_t *js_span(json_t *s, json_t *resource, json_t *scope, const char *resource_fault)
{
    fault f = {{0}};
    if (resource_fault[0])
        fail(&f, "%s", resource_fault);
    json_t *o = json_object();
    if (!json_is_object(s)) {
        fail(&f, "a span must be an object");
        mark(o, &f);
        return o;
    }
    json_object_set_new_nocheck(o, "trace_id", js_id(json_object_get(s, "traceId"), 16, false, &f, "traceId"));
    json_object_set_new_nocheck(o, "span_id", js_id(json_object_get(s, "spanId"), 8, false, &f, "spanId"));
    json_object_set_new_nocheck(o, "name", js_text(json_object_get(s, "name")));
    json_object_set_new_nocheck(o, "start_ns", js_time(json_object_get(s, "startTimeUnixNano"), &f, "startTimeUnixNano"));
    json_object_set_new_nocheck(o, "end_ns", js_time(json_object_get(s, "endTimeUnixNano"), &f, "endTimeUnixNano"));
    json_t *st = json_object_get(s, "status");
    json_t *code = json_object_get(st, "code");
    json_object_set_new_nocheck(o, "status_code", json_integer(json_is_integer(code) ? json_integer_value(code) : 0));
    json_object_set_new_nocheck(o, "status_message", js_text(json_object_get(st, "message")));
    json_object_set_nocheck(o, "resource", resource);
    json_object_set_nocheck(o, "scope", scope);
    json_object_set_new_nocheck(o, "attributes", js_attrs(json_object_get(s, "attributes"), 0, "the span", &f));
    json_t *events = json_array(), *evs = json_object_get(s, "events");
    if (evs && !json_is_array(evs))
        fail(&f, "events must be an array");
    size_t i;
    json_t *e;
    json_array_foreach(evs, i, e) {
        if (f.why[0])
            break;
        json_t *ev = json_object();
        json_object_set_new_nocheck(ev, "name", js_text(json_object_get(e, "name")));
        json_object_set_new_nocheck(ev, "time_ns", js_time(json_object_get(e, "timeUnixNano"), &f, "an event's timeUnixNano"));
        json_object_set_new_nocheck(ev, "attributes", js_attrs(json_object_get(e, "attributes"), 0, "an event", &f));
        json_array_append_new(events, ev);
    }
    json_object_set_new_nocheck(o, "events", events);
    mark(o, &f);
    return o;
}

static json_t *js_log(json_t *r, json_t *resource, json_t *scope, const char *resource_fault)
{
    fault f = {{0}};
    if (resource_fault[0])
        fail(&f, "%s", resource_fault);
    json_t *o = json_object();
    if (!json_is_object(r)) {
        fail(&f, "a log record must be an object");
        mark(o, &f);
        return o;
    }
    json_object_set_new_nocheck(o, "trace_id", js_id(json_object_get(r, "traceId"), 16, true, &f, "traceId"));
    json_object_set_new_nocheck(o, "span_id", js_id(json_object_get(r, "spanId"), 8, true, &f, "spanId"));
    json_t *t = json_object_get(r, "timeUnixNano");
    if (!t || (json_is_string(t) && !strcmp(json_string_value(t), "0")) || (json_is_integer(t) && !json_integer_value(t)))
        t = json_object_get(r, "observedTimeUnixNano");
    json_object_set_new_nocheck(o, "time_ns", js_time(t, &f, "timeUnixNano"));
    json_object_set_new_nocheck(o, "event_name", js_text(json_object_get(r, "eventName")));
    json_object_set_nocheck(o, "resource", resource);
    json_object_set_nocheck(o, "scope", scope);
    json_object_set_new_nocheck(o, "attributes", js_attrs(json_object_get(r, "attributes"), 0, "the log record", &f));
    json_t *body = json_object_get(r, "body") ? js_value(json_object_get(r, "body"), 0, "body", &f) : NULL;
    json_object_set_new_nocheck(o, "body", body ? body : json_null());
    mark(o, &f);
    return o;
}

static json_t *decode_json(otlp_signal sig, const char *body, size_t len, char *err, size_t errlen)
{
    char why[256];
    json_t *root = jtree_parse(body, len, why, sizeof why);
    if (!root) {
        snprintf(err, errlen, "the body is not JSON: %s", why);
        return NULL;
    }
    const char *top = sig == OTLP_TRACES ? "resourceSpans" : "resourceLogs";
    const char *mid = sig == OTLP_TRACES ? "scopeSpans" : "scopeLogs";
    const char *leaf = sig == OTLP_TRACES ? "spans" : "logRecords";
    json_t *list = json_object_get(root, top);
    if (!json_is_object(root) || (list && !json_is_array(list))) {
        snprintf(err, errlen, "the body must be an OTLP JSON export request: an object whose '%s' is an array", top);
        json_decref(root);
        return NULL;
    }
    json_t *out = json_array();
    size_t i, j, k;
    json_t *rs, *ss, *sp;
    json_array_foreach(list, i, rs) {
        fault rf = {{0}};
        json_t *res = js_attrs(json_object_get(json_object_get(rs, "resource"), "attributes"), 0, "the resource", &rf);
        json_t *scopes = json_object_get(rs, mid);
        if (scopes && !json_is_array(scopes)) {
            snprintf(err, errlen, "%s[%zu].%s must be an array", top, i, mid);
            json_decref(res);
            json_decref(out);
            json_decref(root);
            return NULL;
        }
        json_array_foreach(scopes, j, ss) {
            json_t *items = json_object_get(ss, leaf);
            if (items && !json_is_array(items)) {
                snprintf(err, errlen, "%s[%zu].%s[%zu].%s must be an array", top, i, mid, j, leaf);
                json_decref(res);
                json_decref(out);
                json_decref(root);
                return NULL;
            }
            json_t *scope = js_text(json_object_get(json_object_get(ss, "scope"), "name"));
            json_array_foreach(items, k, sp)
                json_array_append_new(out, sig == OTLP_TRACES ? js_span(sp, res, scope, rf.why)
                                                              : js_log(sp, res, scope, rf.why));
            json_decref(scope);
        }
        json_decref(res);
    }
    json_decref(root);
    return out;
}

json_t *otlp_decode(otlp_signal sig, bool json, const char *body, size_t len, char *err, size_t errlen)
{
    return json ? decode_json(sig, body, len, err, errlen) : decode_pb(sig, body, len, err, errlen);
}

int otlp_inflate(const char *in, size_t len, size_t cap, char **out, size_t *outlen, char *err, size_t errlen)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 15 + 32) != Z_OK) { /* +32: gzip or zlib header, detected */
        snprintf(err, errlen, "cannot start inflating the body");
        return 400;
    }
    size_t size = len * 4 + 1024;
    if (size > cap + 1)
        size = cap + 1;
    char *buf = xmalloc(size + 1);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    size_t used = 0;
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
        if (used == size) {
            if (size > cap) {
                inflateEnd(&z);
                free(buf);
                snprintf(err, errlen, "the body inflates past %zu bytes (limits.max_body_bytes)", cap);
                return 413;
            }
            size = size * 2 > cap + 1 ? cap + 1 : size * 2;
            buf = xrealloc(buf, size + 1);
        }
        z.next_out = (Bytef *)buf + used;
        z.avail_out = (uInt)(size - used);
        rc = inflate(&z, Z_NO_FLUSH);
        used = size - z.avail_out;
        if (rc == Z_STREAM_END)
            break;
        if (rc != Z_OK || (z.avail_in == 0 && z.avail_out != 0)) {
            inflateEnd(&z);
            free(buf);
            snprintf(err, errlen, "the body is not valid gzip (Content-Encoding: gzip): %s",
                     z.msg ? z.msg : rc == Z_OK || rc == Z_BUF_ERROR ? "it ends too early" : "corrupt data");
            return 400;
        }
    }
    inflateEnd(&z);
    if (used > cap) {
        free(buf);
        snprintf(err, errlen, "the body inflates past %zu bytes (limits.max_body_bytes)", cap);
        return 413;
    }
    buf[used] = '\0';
    *out = buf;
    *outlen = used;
    return 0;
}
