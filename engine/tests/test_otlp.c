/* Unit tests for otlp_decode.c and otlp_map.c: OTLP JSON into plain spans,
 * the limits that reject one span, each convention's fields, what is
 * dropped, the deferred prompt rule, log records grouped by span, the
 * prompt named only on the span joined to its records, gzip under a cap. */
#include <jansson.h>
#include <stdlib.h>
#include <zlib.h>

#include <otlp.pb-c.h>

#include "check.h"
#include "api/otlp_decode.h"
#include "api/otlp_map.h"

static json_t *decode_json(otlp_signal sig, const char *text)
{
    char err[256] = "";
    json_t *items = otlp_decode(sig, true, text, strlen(text), err, sizeof err);
    if (!items)
        printf("# decode: %s\n", err);
    return items;
}

/* One span of OTLP JSON with the given attributes (a JSON array text). */
static char *one_span(const char *attrs, const char *extra)
{
    char *out = malloc(strlen(attrs) + (extra ? strlen(extra) : 0) + 512);
    sprintf(out,
            "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{\"stringValue\":\"svc\"}}]},"
            "\"scopeSpans\":[{\"spans\":[{\"traceId\":\"0102030405060708090A0B0C0D0E0F10\",\"spanId\":\"0102030405060708\","
            "\"name\":\"chat\",\"startTimeUnixNano\":\"1700000000000000000\",\"endTimeUnixNano\":1700000000250000000,"
            "\"attributes\":%s%s}]}]}]}",
            attrs, extra ? extra : "");
    return out;
}

static json_t *map_one(const char *attrs, const char *extra, otlp_mapped *m)
{
    char *body = one_span(attrs, extra);
    json_t *items = decode_json(OTLP_TRACES, body);
    free(body);
    otlp_map_spans(items, NULL, m);
    json_decref(items);
    return json_array_get(m->traces, 0);
}

#define S(k, v) "{\"key\":\"" k "\",\"value\":{\"stringValue\":\"" v "\"}}"
#define I(k, v) "{\"key\":\"" k "\",\"value\":{\"intValue\":\"" v "\"}}"

static void test_decode_json(void)
{
    char *body = one_span("[" S("a", "x") "," I("n", "9007199254740993") ",{\"key\":\"d\",\"value\":{\"doubleValue\":\"NaN\"}},"
                          "{\"key\":\"l\",\"value\":{\"arrayValue\":{\"values\":[{\"boolValue\":true}]}}}]", NULL);
    json_t *items = decode_json(OTLP_TRACES, body);
    free(body);
    json_t *s = json_array_get(items, 0);
    CHECK(json_array_size(items) == 1);
    CHECK_STR(json_string_value(json_object_get(s, "trace_id")), "0102030405060708090a0b0c0d0e0f10"); /* lower-cased */
    CHECK(json_integer_value(json_object_get(s, "end_ns")) == 1700000000250000000LL); /* a number or a string */
    json_t *a = json_object_get(s, "attributes");
    CHECK(json_integer_value(json_object_get(a, "n")) == 9007199254740993LL); /* 64-bit exact */
    CHECK(json_is_null(json_object_get(a, "d")));
    CHECK(json_is_true(json_array_get(json_object_get(a, "l"), 0)));
    CHECK_STR(json_string_value(json_object_get(json_object_get(s, "resource"), "service.name")), "svc");
    CHECK(!json_object_get(s, "invalid"));
    json_decref(items);
    char err[256];
    CHECK(otlp_decode(OTLP_TRACES, true, "[1]", 3, err, sizeof err) == NULL && strstr(err, "resourceSpans"));
    CHECK(otlp_decode(OTLP_TRACES, false, "\x0a\x05\x12", 3, err, sizeof err) == NULL && err[0]);
}

static void test_limits(void)
{
    /* nested 40 deep: that span is invalid, named */
    char attrs[4096] = "[{\"key\":\"deep\",\"value\":";
    for (int i = 0; i < 40; i++)
        strcat(attrs, "{\"arrayValue\":{\"values\":[");
    strcat(attrs, "{\"stringValue\":\"x\"}");
    for (int i = 0; i < 40; i++)
        strcat(attrs, "]}}");
    strcat(attrs, "}]");
    char *body = one_span(attrs, NULL);
    json_t *items = decode_json(OTLP_TRACES, body);
    free(body);
    const char *why = json_string_value(json_object_get(json_array_get(items, 0), "invalid"));
    CHECK(why && strstr(why, "'deep' is nested deeper than 32"));
    otlp_mapped m;
    otlp_map_spans(items, NULL, &m);
    CHECK(m.rejected == 1 && json_array_size(m.traces) == 0 && strstr(m.error, "nested deeper"));
    otlp_mapped_free(&m);
    json_decref(items);
    body = one_span("[]", NULL);
    char *bad = strstr(body, "0102030405060708\"");
    memcpy(bad, "01020304050607zz", 16);
    items = decode_json(OTLP_TRACES, body);
    free(body);
    why = json_string_value(json_object_get(json_array_get(items, 0), "invalid"));
    CHECK(why && strstr(why, "spanId must be 16 hex digits"));
    json_decref(items);
}

static void test_conventions(void)
{
    otlp_mapped m;
    /* current GenAI */
    json_t *t = map_one("[" S("gen_ai.operation.name", "chat") "," S("gen_ai.request.model", "m1") ","
                        S("gen_ai.response.model", "m2") "," I("gen_ai.usage.input_tokens", "5") ","
                        S("gen_ai.input.messages", "[{\\\"role\\\":\\\"human\\\",\\\"parts\\\":[{\\\"type\\\":\\\"text\\\",\\\"content\\\":\\\"a\\\"},{\\\"type\\\":\\\"text\\\",\\\"content\\\":\\\"b\\\"}]}]") ","
                        S("gen_ai.output.messages", "[{\\\"role\\\":\\\"assistant\\\",\\\"parts\\\":[{\\\"type\\\":\\\"tool_call\\\",\\\"name\\\":\\\"f\\\",\\\"arguments\\\":{\\\"x\\\":1}}]}]") ","
                        S("ratchet.prompt.name", "p") "]", NULL, &m);
    CHECK(t != NULL);
    CHECK_STR(json_string_value(json_object_get(t, "id")), "0102030405060708090a0b0c0d0e0f10-0102030405060708");
    CHECK_STR(json_string_value(json_object_get(t, "model")), "m2");
    json_t *msg = json_array_get(json_object_get(json_object_get(t, "input"), "messages"), 0);
    CHECK_STR(json_string_value(json_object_get(msg, "role")), "user"); /* human */
    CHECK_STR(json_string_value(json_object_get(msg, "content")), "ab"); /* text parts joined */
    CHECK_STR(json_string_value(json_object_get(t, "output")), "");     /* only a tool call */
    CHECK_STR(json_string_value(json_object_get(json_array_get(json_object_get(t, "tool_calls"), 0), "name")), "f");
    CHECK(json_real_value(json_object_get(t, "latency_ms")) == 250.0);
    CHECK(json_integer_value(json_object_get(t, "timestamp")) == 1700000000000LL);
    CHECK(json_integer_value(json_object_get(json_object_get(t, "usage"), "input_tokens")) == 5);
    otlp_mapped_free(&m);
    /* OpenInference */
    t = map_one("[" S("openinference.span.kind", "LLM") "," S("llm.model_name", "oi") ","
                S("llm.input_messages.0.message.role", "user") ","
                S("llm.input_messages.0.message.contents.0.message_content.text", "q") ","
                S("llm.output_messages.0.message.content", "ans") "," I("llm.token_count.completion", "3") ","
                S("llm.prompt_template.variables", "{\\\"v\\\":1}") "," S("ratchet.prompt.name", "p") "]", NULL, &m);
    CHECK(t && !strcmp(json_string_value(json_object_get(t, "output")), "ans"));
    CHECK(t && json_integer_value(json_object_get(json_object_get(json_object_get(t, "input"), "variables"), "v")) == 1);
    CHECK(t && !strcmp(json_string_value(json_object_get(json_array_get(json_object_get(json_object_get(t, "input"), "messages"), 0), "content")), "q"));
    otlp_mapped_free(&m);
    /* OpenLLMetry, linked by traceloop.prompt.key */
    t = map_one("[" S("llm.request.type", "chat") "," S("gen_ai.prompt.0.role", "user") "," S("gen_ai.prompt.0.content", "q") ","
                S("gen_ai.completion.0.content", "ans") "," S("traceloop.prompt.key", "tl") "," I("traceloop.prompt.version", "4") "]",
                NULL, &m);
    CHECK(t && !strcmp(json_string_value(json_object_get(json_object_get(t, "prompt"), "name")), "tl"));
    CHECK(t && json_integer_value(json_object_get(json_object_get(t, "prompt"), "version")) == 4);
    otlp_mapped_free(&m);
    /* Vercel: the inner span maps, the outer one (no ai.prompt.messages) is dropped */
    t = map_one("[" S("ai.model.id", "v") "," S("ai.prompt.messages", "[{\\\"role\\\":\\\"user\\\",\\\"content\\\":[{\\\"type\\\":\\\"text\\\",\\\"text\\\":\\\"q\\\"}]}]") ","
                S("ai.response.text", "ans") "," I("ai.usage.promptTokens", "2") "," S("ratchet.prompt.name", "p") "]", NULL, &m);
    CHECK(t && json_integer_value(json_object_get(json_object_get(t, "usage"), "input_tokens")) == 2);
    otlp_mapped_free(&m);
    t = map_one("[" S("ai.model.id", "v") "," S("ai.response.text", "ans") "," S("ratchet.prompt.name", "p") "]", NULL, &m);
    CHECK(!t && m.dropped == 1 && m.rejected == 0);
    otlp_mapped_free(&m);
    /* not an LLM call, an embeddings call: dropped, not rejected */
    t = map_one("[" S("http.method", "GET") "]", NULL, &m);
    CHECK(!t && m.dropped == 1 && m.rejected == 0);
    otlp_mapped_free(&m);
    t = map_one("[" S("gen_ai.operation.name", "embeddings") "," S("gen_ai.request.model", "e") "]", NULL, &m);
    CHECK(!t && m.dropped == 1);
    otlp_mapped_free(&m);
    /* an LLM call whose content comes as log records: no trace, a part to
     * join it (model, usage, latency; not the ids, the convention or content) */
    t = map_one("[" S("gen_ai.operation.name", "chat") "," S("gen_ai.system", "openai") "," S("gen_ai.request.model", "m1") ","
                I("gen_ai.usage.input_tokens", "12") "]", NULL, &m);
    CHECK(!t && m.dropped == 0 && m.rejected == 0 && json_array_size(m.parts) == 1);
    json_t *part = json_array_get(m.parts, 0);
    CHECK(strlen(json_string_value(json_object_get(part, "id"))) == 49);
    json_t *pp = json_object_get(part, "part");
    CHECK_STR(json_string_value(json_object_get(pp, "model")), "m1");
    CHECK(json_integer_value(json_object_get(json_object_get(pp, "usage"), "input_tokens")) == 12);
    CHECK(json_is_number(json_object_get(pp, "latency_ms")));
    CHECK(!json_object_get(pp, "id") && !json_object_get(pp, "prompt") && !json_object_get(pp, "output") &&
          !json_object_get(pp, "timestamp"));
    json_t *po = json_object_get(json_object_get(pp, "metadata"), "otel");
    CHECK_STR(json_string_value(json_object_get(po, "provider")), "openai");
    CHECK(!json_object_get(po, "convention") && !json_object_get(po, "span_id"));
    otlp_mapped_free(&m);
    /* an error with no output still maps */
    t = map_one("[" S("gen_ai.operation.name", "chat") "," S("ratchet.prompt.name", "p") "]",
                ",\"status\":{\"code\":2,\"message\":\"boom\"}", &m);
    CHECK(t && !strcmp(json_string_value(json_object_get(t, "error")), "boom"));
    otlp_mapped_free(&m);
    /* an LLM call linked to nothing: rejected, unlinked */
    t = map_one("[" S("gen_ai.operation.name", "chat") "," S("gen_ai.output.messages", "[{\\\"parts\\\":[{\\\"type\\\":\\\"text\\\",\\\"content\\\":\\\"a\\\"}]}]") "]", NULL, &m);
    CHECK(!t && m.rejected == 1 && m.unlinked == 1 && strstr(m.error, "linked to no prompt"));
    otlp_mapped_free(&m);
}

static void test_deferred(void)
{
    char *body = one_span("[" S("gen_ai.operation.name", "chat") ","
                          S("gen_ai.output.messages", "[{\\\"parts\\\":[{\\\"type\\\":\\\"text\\\",\\\"content\\\":\\\"a\\\"}]}]") "]", NULL);
    json_t *items = decode_json(OTLP_TRACES, body);
    free(body);
    for (int k = 0; k < 3; k++) {
        otlp_mapped m;
        otlp_map_opts opts = {.defer_unlinked = true};
        otlp_map_spans(items, &opts, &m);
        CHECK(json_array_size(m.deferred) == 1 && m.rejected == 0 && json_array_size(m.traces) == 0);
        json_t *answers = json_array();
        json_array_append_new(answers, k == 0 ? json_pack("{s:s,s:i}", "name", "ruled", "version", 2)
                                       : k == 1 ? json_null() : json_string("boom"));
        otlp_map_deferred(&m, answers);
        json_decref(answers);
        if (k == 0)
            CHECK(json_array_size(m.traces) == 1 &&
                  !strcmp(json_string_value(json_object_get(json_object_get(json_array_get(m.traces, 0), "prompt"), "name")), "ruled"));
        else
            CHECK(json_array_size(m.traces) == 0 && m.rejected == 1 && m.unlinked == 1 &&
                  strstr(m.error, k == 1 ? "returned false" : "boom"));
        otlp_mapped_free(&m);
    }
    json_decref(items);
}

static void test_logs(void)
{
    const char *text =
        "{\"resourceLogs\":[{\"resource\":{\"attributes\":[" S("ratchet.prompt.name", "p") "]},\"scopeLogs\":[{\"logRecords\":["
        "{\"timeUnixNano\":\"1700000000000000000\",\"traceId\":\"0102030405060708090a0b0c0d0e0f10\",\"spanId\":\"0102030405060708\","
        "\"attributes\":[" S("event.name", "gen_ai.user.message") "],\"body\":{\"kvlistValue\":{\"values\":[" S("content", "hi") "]}}},"
        "{\"traceId\":\"0102030405060708090a0b0c0d0e0f10\",\"spanId\":\"0102030405060708\",\"eventName\":\"gen_ai.choice\","
        "\"body\":{\"kvlistValue\":{\"values\":[{\"key\":\"message\",\"value\":{\"kvlistValue\":{\"values\":[" S("content", "yo") "]}}}]}}},"
        "{\"eventName\":\"app.other\",\"traceId\":\"0102030405060708090a0b0c0d0e0f11\",\"spanId\":\"0102030405060709\"}"
        "]}]}]}";
    json_t *items = decode_json(OTLP_LOGS, text);
    otlp_mapped m;
    otlp_map_logs(items, NULL, &m);
    CHECK(json_array_size(m.traces) == 1 && m.dropped == 1);
    json_t *t = json_array_get(m.traces, 0);
    CHECK(t && !strcmp(json_string_value(json_object_get(t, "output")), "yo"));
    CHECK(t && !strcmp(json_string_value(json_object_get(json_array_get(json_object_get(json_object_get(t, "input"), "messages"), 0), "content")), "hi"));
    CHECK(t && json_integer_value(json_object_get(t, "timestamp")) == 1700000000000LL);
    otlp_mapped_free(&m);
    json_decref(items);
}

/* The prompt named only on the span links the records' trace, in either
 * order (otlp_map_join with the parts the store would hold). */
static void test_join_prompt_on_span(void)
{
    const char *records =
        "{\"resourceLogs\":[{\"scopeLogs\":[{\"logRecords\":["
        "{\"timeUnixNano\":\"1700000000000000000\",\"traceId\":\"0102030405060708090a0b0c0d0e0f10\",\"spanId\":\"0102030405060708\","
        "\"attributes\":[" S("event.name", "gen_ai.user.message") "],\"body\":{\"kvlistValue\":{\"values\":[" S("content", "hi") "]}}},"
        "{\"traceId\":\"0102030405060708090a0b0c0d0e0f10\",\"spanId\":\"0102030405060708\",\"eventName\":\"gen_ai.choice\","
        "\"body\":{\"kvlistValue\":{\"values\":[{\"key\":\"message\",\"value\":{\"kvlistValue\":{\"values\":[" S("content", "yo") "]}}}]}}}"
        "]}]}]}";
    const char *id = "0102030405060708090a0b0c0d0e0f10-0102030405060708";
    /* the records alone: an orphan, not rejected */
    json_t *items = decode_json(OTLP_LOGS, records);
    otlp_mapped rec;
    otlp_map_logs(items, NULL, &rec);
    json_decref(items);
    CHECK(json_array_size(rec.traces) == 0 && json_array_size(rec.orphans) == 1 && rec.rejected == 0);
    json_t *ids = otlp_map_join_ids(&rec);
    CHECK(json_array_size(ids) == 1 && !strcmp(json_string_value(json_array_get(ids, 0)), id));
    json_decref(ids);
    /* the span alone: its part carries the prompt */
    otlp_mapped sp;
    char *body = one_span("[" S("gen_ai.operation.name", "chat") "," S("gen_ai.request.model", "m") ","
                          S("ratchet.prompt.name", "p") "]", NULL);
    items = decode_json(OTLP_TRACES, body);
    free(body);
    otlp_map_spans(items, NULL, &sp);
    json_decref(items);
    CHECK(json_array_size(sp.parts) == 1 && json_array_size(sp.traces) == 0);
    json_t *span_part = json_object_get(json_array_get(sp.parts, 0), "part");
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(span_part, "prompt"), "name")), "p"));

    /* span first: the records find its part and take the prompt */
    json_t *waiting = json_pack("{s:O}", id, span_part);
    otlp_map_join(&rec, waiting);
    json_decref(waiting);
    CHECK(json_array_size(rec.traces) == 1 && json_array_size(rec.parts) == 0 && rec.rejected == 0);
    json_t *t = json_array_get(rec.traces, 0);
    CHECK(t && !strcmp(json_string_value(json_object_get(json_object_get(t, "prompt"), "name")), "p"));
    CHECK(t && !strcmp(json_string_value(json_object_get(t, "output")), "yo"));
    otlp_mapped_free(&rec);

    /* records first: they wait as a part; the span then forms the trace */
    items = decode_json(OTLP_LOGS, records);
    otlp_map_logs(items, NULL, &rec);
    json_decref(items);
    waiting = json_object();
    otlp_map_join(&rec, waiting);
    json_decref(waiting);
    CHECK(json_array_size(rec.traces) == 0 && json_array_size(rec.parts) == 1 && rec.rejected == 0);
    json_t *content = json_object_get(json_array_get(rec.parts, 0), "part");
    CHECK(json_is_true(json_object_get(json_array_get(rec.parts, 0), "waits")) && !json_object_get(content, "prompt"));
    waiting = json_pack("{s:O}", id, content);
    otlp_map_join(&sp, waiting);
    json_decref(waiting);
    CHECK(json_array_size(sp.traces) == 1 && sp.joined == 1 && json_array_size(sp.parts) == 1);
    t = json_array_get(sp.traces, 0);
    CHECK(t && !strcmp(json_string_value(json_object_get(json_object_get(t, "prompt"), "name")), "p"));
    CHECK(t && !strcmp(json_string_value(json_object_get(t, "output")), "yo"));
    CHECK(t && !strcmp(json_string_value(json_object_get(t, "model")), "m"));
    otlp_mapped_free(&sp);

    /* a span that named no prompt came first: the records are rejected as unlinked */
    waiting = json_pack("{s:{s:s}}", id, "model", "m");
    items = decode_json(OTLP_LOGS, records);
    otlp_mapped r2;
    otlp_map_logs(items, NULL, &r2);
    json_decref(items);
    otlp_map_join(&r2, waiting);
    json_decref(waiting);
    CHECK(json_array_size(r2.traces) == 0 && r2.rejected == 1 && r2.unlinked == 1 && strstr(r2.error, "no prompt"));
    otlp_mapped_free(&r2);
    otlp_mapped_free(&rec);
}

/* ---- protobuf spans read in place against plain spans ---- */

#define MAX_KV 8
typedef struct {
    const char *k[MAX_KV], *v[MAX_KV]; /* string attributes; a value starting "#array" is an array of that string */
    const char *span_id;               /* 8 bytes unless given */
    bool event;
} pb_spec;

static void bin(ProtobufCBinaryData *b, const char *s)
{
    b->data = (uint8_t *)s;
    b->len = strlen(s);
}

/* A request of one resource (resource_bad: its service.name is not UTF-8) holding the spans. */
static uint8_t *pb_request(const pb_spec *specs, size_t n, bool resource_bad, size_t *len)
{
    static Otlp__Span spans[8];
    static Otlp__Span *sp[8];
    static Otlp__KeyValue kv[8][MAX_KV], *kvp[8][MAX_KV], rkv, *rkvp;
    static Otlp__AnyValue av[8][MAX_KV], rav;
    static Otlp__ArrayValue arr[8][MAX_KV];
    static ProtobufCBinaryData elems[8][MAX_KV];
    static Otlp__AnyValue elem_av[8][MAX_KV];
    static uint8_t packed[8][MAX_KV][256], elem_packed[8][MAX_KV][128];
    static Otlp__Event ev, *evp = &ev;
    for (size_t i = 0; i < n; i++) {
        otlp__span__init(&spans[i]);
        sp[i] = &spans[i];
        bin(&spans[i].trace_id, "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10");
        bin(&spans[i].span_id, specs[i].span_id ? specs[i].span_id : "\x11\x12\x13\x14\x15\x16\x17\x18");
        bin(&spans[i].name, "chat");
        spans[i].start_time_unix_nano = 1700000000000000000ULL;
        spans[i].end_time_unix_nano = 1700000000250000000ULL;
        size_t na = 0;
        for (; na < MAX_KV && specs[i].k[na]; na++) {
            otlp__key_value__init(&kv[i][na]);
            otlp__any_value__init(&av[i][na]);
            bin(&kv[i][na].key, specs[i].k[na]);
            kv[i][na].value = &av[i][na];
            const char *v = specs[i].v[na];
            if (!strncmp(v, "#array", 6)) {
                otlp__any_value__init(&elem_av[i][na]);
                elem_av[i][na].value_case = OTLP__ANY_VALUE__VALUE_STRING_VALUE;
                bin(&elem_av[i][na].string_value, v + 6);
                size_t el = otlp__any_value__pack(&elem_av[i][na], elem_packed[i][na]);
                elems[i][na] = (ProtobufCBinaryData){.data = elem_packed[i][na], .len = el};
                otlp__array_value__init(&arr[i][na]);
                arr[i][na].n_values = 1;
                arr[i][na].values = &elems[i][na];
                av[i][na].value_case = OTLP__ANY_VALUE__VALUE_ARRAY_VALUE;
                av[i][na].array_value = (ProtobufCBinaryData){.data = packed[i][na],
                                                              .len = otlp__array_value__pack(&arr[i][na], packed[i][na])};
            } else {
                av[i][na].value_case = OTLP__ANY_VALUE__VALUE_STRING_VALUE;
                bin(&av[i][na].string_value, v);
            }
            kvp[i][na] = &kv[i][na];
        }
        spans[i].n_attributes = na;
        spans[i].attributes = kvp[i];
        if (specs[i].event) {
            otlp__event__init(&ev);
            bin(&ev.name, "exception");
            spans[i].n_events = 1;
            spans[i].events = &evp;
        }
    }
    Otlp__ScopeSpans ss = OTLP__SCOPE_SPANS__INIT, *ssp = &ss;
    ss.n_spans = n;
    ss.spans = sp;
    Otlp__Resource res = OTLP__RESOURCE__INIT;
    otlp__key_value__init(&rkv);
    otlp__any_value__init(&rav);
    bin(&rkv.key, "service.name");
    rav.value_case = OTLP__ANY_VALUE__VALUE_STRING_VALUE;
    bin(&rav.string_value, resource_bad ? "svc\xff" : "svc");
    rkv.value = &rav;
    rkvp = &rkv;
    res.n_attributes = 1;
    res.attributes = &rkvp;
    Otlp__ResourceSpans rs = OTLP__RESOURCE_SPANS__INIT, *rsp = &rs;
    rs.resource = &res;
    rs.n_scope_spans = 1;
    rs.scope_spans = &ssp;
    Otlp__ExportTraceServiceRequest rq = OTLP__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    rq.n_resource_spans = 1;
    rq.resource_spans = &rsp;
    *len = otlp__export_trace_service_request__get_packed_size(&rq);
    uint8_t *out = malloc(*len);
    otlp__export_trace_service_request__pack(&rq, out);
    return out;
}

/* Both paths on one request; returns the in-place mapping (free it). */
static void same_both_ways(const pb_spec *specs, size_t n, bool resource_bad, bool defer, otlp_mapped *b)
{
    size_t len;
    uint8_t *body = pb_request(specs, n, resource_bad, &len);
    char err[256];
    json_t *items = otlp_decode(OTLP_TRACES, false, (char *)body, len, err, sizeof err);
    otlp_map_opts opts = {.defer_unlinked = defer};
    otlp_mapped a;
    otlp_map_spans(items, &opts, &a);
    CHECK(otlp_map_pb_spans((char *)body, len, &opts, b, err, sizeof err) == 0);
    bool same = json_equal(a.traces, b->traces) && json_equal(a.parts, b->parts) && json_equal(a.deferred, b->deferred) &&
                a.dropped == b->dropped && a.rejected == b->rejected && a.unlinked == b->unlinked &&
                !strcmp(a.error, b->error);
    if (!same) {
        char *x = json_dumps(a.traces, 0), *y = json_dumps(b->traces, 0);
        printf("# plain: %s %zu %s\n# in place: %s %zu %s\n", x, a.rejected, a.error, y, b->rejected, b->error);
        free(x);
        free(y);
    }
    CHECK(same);
    otlp_mapped_free(&a);
    json_decref(items);
    free(body);
}

static void test_in_place(void)
{
    const char *in = "[{\"role\":\"user\",\"parts\":[{\"type\":\"text\",\"content\":\"hi\"}]}]";
    const char *out = "[{\"role\":\"assistant\",\"parts\":[{\"type\":\"text\",\"content\":\"yo\"}],\"finish_reason\":\"stop\"}]";
    pb_spec llm = {{"gen_ai.operation.name", "gen_ai.request.model", "gen_ai.input.messages", "gen_ai.output.messages",
                    "ratchet.prompt.name", "gen_ai.response.finish_reasons", "ratchet.prompt.name"},
                   {"chat", "m", in, out, "first", "#arraystop", "last"}, NULL, false};
    otlp_mapped m;
    /* a valid span: read in place, the same trace (the last of two equal keys wins, an array read as one) */
    same_both_ways(&llm, 1, false, false, &m);
    CHECK(json_array_size(m.traces) == 1);
    CHECK_STR(json_string_value(json_object_get(json_object_get(json_array_get(m.traces, 0), "prompt"), "name")), "last");
    otlp_mapped_free(&m);
    /* a string that is not UTF-8, a span id of 7 bytes, a resource that is not UTF-8: rejected alike, named alike */
    pb_spec bad = llm;
    bad.v[1] = "m\xc3";
    same_both_ways(&bad, 1, false, false, &m);
    CHECK(m.rejected == 1 && strstr(m.error, "not valid UTF-8"));
    otlp_mapped_free(&m);
    bad = llm;
    bad.span_id = "\x01\x02\x03\x04\x05\x06\x07";
    same_both_ways(&bad, 1, false, false, &m);
    CHECK(m.rejected == 1 && strstr(m.error, "spanId"));
    otlp_mapped_free(&m);
    same_both_ways(&llm, 1, true, false, &m);
    CHECK(m.rejected == 1 && strstr(m.error, "service.name"));
    otlp_mapped_free(&m);
    /* events (the span stays plain), no prompt (rejected, or deferred with the plain span), no content (a part), not an LLM call */
    pb_spec ev = llm,
            unlinked = {{"gen_ai.operation.name", "gen_ai.input.messages", "gen_ai.output.messages"}, {"chat", in, out}, NULL, false},
            nocontent = {{"gen_ai.operation.name", "ratchet.prompt.name"}, {"chat", "p"}, NULL, false},
            other = {{"http.method"}, {"GET"}, NULL, false};
    ev.event = true;
    pb_spec all[] = {ev, unlinked, nocontent, other, llm};
    same_both_ways(all, 5, false, false, &m);
    CHECK(json_array_size(m.traces) == 2 && m.unlinked == 1 && json_array_size(m.parts) == 1 && m.dropped == 1);
    CHECK(m.source[0] == 0 && m.source[1] == 4);
    otlp_mapped_free(&m);
    same_both_ways(all, 5, false, true, &m);
    CHECK(json_array_size(m.deferred) == 1 &&
          json_object_size(json_object_get(json_object_get(json_array_get(m.deferred, 0), "span"), "attributes")) == 3);
    otlp_mapped_free(&m);
}

static void test_inflate(void)
{
    /* 1 MB of zeros, gzip'd: inflates under a 2 MB cap, refused (413) under 64 KB */
    size_t n = 1 << 20;
    unsigned char *zeros = calloc(1, n), gz[8192];
    z_stream z = {0};
    deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    z.next_in = zeros, z.avail_in = (uInt)n, z.next_out = gz, z.avail_out = sizeof gz;
    CHECK(deflate(&z, Z_FINISH) == Z_STREAM_END);
    size_t gzlen = sizeof gz - z.avail_out;
    deflateEnd(&z);
    char *out, err[256];
    size_t outlen;
    CHECK(otlp_inflate((char *)gz, gzlen, 2u << 20, &out, &outlen, err, sizeof err) == 0 && outlen == n);
    free(out);
    CHECK(otlp_inflate((char *)gz, gzlen, 65536, &out, &outlen, err, sizeof err) == 413 && strstr(err, "65536"));
    CHECK(otlp_inflate((char *)gz, gzlen / 2, 2u << 20, &out, &outlen, err, sizeof err) == 400); /* truncated */
    CHECK(otlp_inflate("not gzip", 8, 1024, &out, &outlen, err, sizeof err) == 400);
    free(zeros);
}

int main(void)
{
    test_decode_json();
    test_limits();
    test_conventions();
    test_deferred();
    test_logs();
    test_join_prompt_on_span();
    test_in_place();
    test_inflate();
    return check_done();
}
