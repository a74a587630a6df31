/* otlp_map.c — plain OTLP spans and log records into ratchet traces and
 * feedback (otlp_map.h). Each convention is a reader that fills the same
 * trace fields; a field a reader leaves empty is left to the next one, in
 * the order: current GenAI attributes, OpenInference, OpenLLMetry, Vercel AI
 * SDK, the older GenAI events. docs/otlp.md is the table of what each
 * attribute becomes; keep the two together. */
#include "api/otlp_map.h"

#include "api/otlp_decode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/jtree.h"
#include "base/util.h"

#define STR_(x) #x
#define STR(x) STR_(x)

/* ---- attributes ---- */

/* A span as the readers see it: a plain span (otlp_decode.h) with its
 * attributes and resource looked up once, or a protobuf span read in place
 * (pb: its attributes through otlp_pb_attr; span is then the plain span
 * without them). */
typedef struct {
    json_t *span;
    json_t *attrs;      /* the plain span's "attributes" (NULL with pb) */
    json_t *resource;   /* its "resource" */
    otlp_pb_span *pb;
} span_in;

static span_in span_of(json_t *span, otlp_pb_span *pb)
{
    return (span_in){.span = span, .attrs = pb ? NULL : json_object_get(span, "attributes"),
                     .resource = json_object_get(span, "resource"), .pb = pb};
}

/* The whole plain span, attributes and all (a new reference): the prompt rule's argument. */
static json_t *span_plain(const span_in *sp)
{
    return sp->pb ? otlp_pb_plain(sp->pb) : json_incref(sp->span);
}

static json_t *attr(const span_in *sp, const char *key)
{
    json_t *v = sp->pb ? otlp_pb_attr(sp->pb, key) : json_object_get(sp->attrs, key);
    return v && !json_is_null(v) ? v : NULL;
}

static const char *sattr(const span_in *sp, const char *key)
{
    json_t *v = attr(sp, key);
    return json_is_string(v) && json_string_length(v) ? json_string_value(v) : NULL;
}

/* A span attribute, else the resource's. */
static const char *sattr_or_resource(const span_in *sp, const char *key)
{
    const char *s = sattr(sp, key);
    if (s)
        return s;
    json_t *v = json_object_get(sp->resource, key);
    return json_is_string(v) && json_string_length(v) ? json_string_value(v) : NULL;
}

/* An integer attribute (an integer, an integral real or decimal text); false when absent or not one. */
static bool iattr(const span_in *sp, const char *key, json_int_t *out)
{
    json_t *v = attr(sp, key);
    if (!v && !strncmp(key, "ratchet.", 8)) /* ratchet's own attributes may be the resource's (one service, one prompt) */
        v = json_object_get(sp->resource, key);
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_real(v) && json_real_value(v) == (double)(json_int_t)json_real_value(v)) {
        *out = (json_int_t)json_real_value(v);
        return true;
    }
    if (json_is_string(v)) {
        char *end;
        long long n = strtoll(json_string_value(v), &end, 10);
        if (json_string_length(v) && !*end) {
            *out = n;
            return true;
        }
    }
    return false;
}

/* The span's attribute keys, one by one: false after the last. */
typedef struct {
    const span_in *sp;
    size_t i;
    void *iter;
} key_iter;

static bool next_key(key_iter *it, const char **key, size_t *len)
{
    if (it->sp->pb)
        return otlp_pb_key(it->sp->pb, it->i++, key, len);
    it->iter = it->i++ ? json_object_iter_next(it->sp->attrs, it->iter) : json_object_iter(it->sp->attrs);
    if (!it->iter)
        return false;
    *key = json_object_iter_key(it->iter);
    *len = strlen(*key);
    return true;
}

/* A value that may be JSON text (the JS SDKs can only send strings) or
 * already structured: a new reference, or NULL. */
static json_t *json_attr_value(json_t *v)
{
    if (!v)
        return NULL;
    if (!json_is_string(v))
        return json_incref(v);
    char err[128];
    /* a jansson string is valid UTF-8: its JSON's plain strings are not checked again */
    return jtree_parse_utf8(json_string_value(v), json_string_length(v), err, sizeof err);
}

/* A JSON-text attribute parsed, or a structured one as it is: a new
 * reference, or NULL. Read in place, the text is parsed straight from the
 * protobuf bytes (checked as UTF-8 already). */
static json_t *attr_json(const span_in *sp, const char *key)
{
    size_t n;
    const char *t = sp->pb ? otlp_pb_text(sp->pb, key, &n) : NULL;
    if (t) {
        char err[128];
        return jtree_parse_utf8(t, n, err, sizeof err);
    }
    return json_attr_value(attr(sp, key));
}

static bool has_prefix(const span_in *sp, const char *prefix)
{
    size_t n = strlen(prefix), len;
    const char *k;
    for (key_iter it = {.sp = sp}; next_key(&it, &k, &len);)
        if (len >= n && !memcmp(k, prefix, n))
            return true;
    return false;
}

/* ---- what a reader fills ---- */

typedef struct {
    json_t *messages;   /* [{role, content}] */
    json_t *output;     /* the answer */
    json_t *tool_calls; /* [{id?, name, arguments?}] */
    json_t *variables;  /* template variables */
    json_t *meta;       /* metadata.otel */
    json_t *feedback;   /* inline feedback items */
    const char *model, *provider, *prompt_name, *convention;
    json_int_t version, in_tokens, out_tokens;
    bool has_in, has_out;
} fields;

static void fields_free(fields *f)
{
    json_decref(f->messages);
    json_decref(f->output);
    json_decref(f->tool_calls);
    json_decref(f->variables);
    json_decref(f->meta);
    json_decref(f->feedback);
}

static const char *role_of(const char *r)
{
    if (!r)
        return "user";
    if (!strcmp(r, "human"))
        return "user";
    if (!strcmp(r, "ai") || !strcmp(r, "model") || !strcmp(r, "bot"))
        return "assistant";
    if (!strcmp(r, "function") || !strcmp(r, "ipython"))
        return "tool";
    return r;
}

static void add_message(fields *f, const char *role, json_t *content /* stolen */)
{
    if (!f->messages)
        f->messages = json_array();
    /* set directly: json_pack parses its format on every call (per message, per span) */
    json_t *m = json_object();
    json_object_set_new_nocheck(m, "role", json_string(role_of(role)));
    json_object_set_new_nocheck(m, "content", content ? content : json_null());
    json_array_append_new(f->messages, m);
}

static void add_tool_call(fields *f, json_t *id, json_t *name, json_t *args)
{
    if (!json_is_string(name))
        return;
    if (!f->tool_calls)
        f->tool_calls = json_array();
    json_t *c = json_object();
    json_object_set_nocheck(c, "name", name);
    if (json_is_string(id))
        json_object_set_nocheck(c, "id", id);
    if (json_is_string(args) || json_is_object(args))
        json_object_set_nocheck(c, "arguments", args);
    json_array_append_new(f->tool_calls, c);
}

/* Text parts joined, or the parts as they are when any is not text. */
static json_t *content_of_parts(json_t *parts, const char *text_key)
{
    if (!json_is_array(parts))
        return json_is_string(parts) ? json_incref(parts) : json_null();
    buf_t b = {0};
    size_t i;
    json_t *p;
    bool all_text = true;
    json_array_foreach(parts, i, p) {
        json_t *t = json_object_get(p, text_key);
        const char *type = json_string_value(json_object_get(p, "type"));
        if (json_is_string(p)) {
            buf_append(&b, json_string_value(p), json_string_length(p));
        } else if (json_is_string(t) && (!type || !strcmp(type, "text"))) {
            buf_append(&b, json_string_value(t), json_string_length(t));
        } else if (type && (!strcmp(type, "tool_call") || !strcmp(type, "tool-call"))) {
            continue; /* carried as tool_calls */
        } else {
            all_text = false;
        }
    }
    json_t *out = all_text ? json_stringn(b.data ? b.data : "", b.len) : json_incref(parts);
    buf_free(&b);
    return out ? out : json_null();
}

/* ---- readers ---- */

/* Current GenAI semantic conventions: gen_ai.input.messages, output
 * messages and system instructions as JSON (role + parts). */
static void read_genai(const span_in *sp, fields *f)
{
    json_t *sys = attr_json(sp, "gen_ai.system_instructions");
    json_t *in = attr_json(sp, "gen_ai.input.messages");
    json_t *out = attr_json(sp, "gen_ai.output.messages");
    if (sys && !f->messages) {
        json_t *c = content_of_parts(json_is_array(sys) ? sys : NULL, "content");
        if (json_is_string(sys))
            json_decref(c), c = json_incref(sys);
        add_message(f, "system", c);
    }
    size_t i;
    json_t *m;
    if (json_is_array(in)) {
        f->has_in = true;
        json_array_foreach(in, i, m) add_message(f, json_string_value(json_object_get(m, "role")),
                                                 content_of_parts(json_object_get(m, "parts"), "content"));
    }
    if (json_is_array(out) && json_array_size(out)) {
        f->has_out = true;
        json_t *first = json_array_get(out, 0);
        json_t *parts = json_object_get(first, "parts");
        f->output = content_of_parts(parts, "content");
        if (!json_is_string(f->output)) {
            json_decref(f->output);
            f->output = json_incref(parts);
        }
        json_t *p;
        json_array_foreach(parts, i, p) {
            const char *type = json_string_value(json_object_get(p, "type"));
            if (type && !strcmp(type, "tool_call"))
                add_tool_call(f, json_object_get(p, "id"), json_object_get(p, "name"), json_object_get(p, "arguments"));
        }
        const char *fr = json_string_value(json_object_get(first, "finish_reason"));
        if (fr)
            json_object_set_new_nocheck(f->meta, "finish_reason", json_string(fr));
    }
    json_decref(sys);
    json_decref(in);
    json_decref(out);
}

/* key.{i}.suffix for i = 0, 1, ... while present; fn called with i. */
#define MAX_INDEXED 1000

/* OpenLLMetry: gen_ai.prompt.{i}.role/content, gen_ai.completion.{i}.*. */
static void read_openllmetry(const span_in *sp, fields *f)
{
    char k[128];
    bool any = false;
    for (int i = 0; i < MAX_INDEXED; i++) {
        snprintf(k, sizeof k, "gen_ai.prompt.%d.content", i);
        json_t *c = attr(sp, k);
        snprintf(k, sizeof k, "gen_ai.prompt.%d.role", i);
        const char *role = sattr(sp, k);
        if (!c && !role)
            break;
        if (!f->has_in)
            add_message(f, role, c ? content_of_parts(c, "text") : NULL);
        any = true;
    }
    if (any)
        f->has_in = true;
    if (f->has_out)
        return;
    snprintf(k, sizeof k, "gen_ai.completion.0.content");
    json_t *c = attr(sp, k);
    bool calls = false;
    for (int j = 0; j < MAX_INDEXED; j++) {
        char kn[128], ka[128], ki[128];
        snprintf(kn, sizeof kn, "gen_ai.completion.0.tool_calls.%d.name", j);
        snprintf(ka, sizeof ka, "gen_ai.completion.0.tool_calls.%d.arguments", j);
        snprintf(ki, sizeof ki, "gen_ai.completion.0.tool_calls.%d.id", j);
        if (!attr(sp, kn))
            break;
        add_tool_call(f, attr(sp, ki), attr(sp, kn), attr(sp, ka));
        calls = true;
    }
    if (c || calls) {
        f->has_out = true;
        f->output = c ? json_incref(c) : json_string("");
        const char *fr = sattr(sp, "gen_ai.completion.0.finish_reason");
        if (fr)
            json_object_set_new_nocheck(f->meta, "finish_reason", json_string(fr));
    }
}

/* OpenInference: llm.input_messages.{i}.message.*, llm.output_messages.*. */
static json_t *oi_content(const span_in *sp, const char *base)
{
    char k[160];
    snprintf(k, sizeof k, "%s.message.content", base);
    json_t *c = attr(sp, k);
    if (c)
        return json_incref(c);
    buf_t b = {0};
    for (int j = 0; j < MAX_INDEXED; j++) {
        snprintf(k, sizeof k, "%s.message.contents.%d.message_content.text", base, j);
        json_t *t = attr(sp, k);
        if (!json_is_string(t))
            break;
        buf_append(&b, json_string_value(t), json_string_length(t));
    }
    json_t *out = b.data ? json_stringn(b.data, b.len) : NULL;
    buf_free(&b);
    return out;
}

static void read_openinference(const span_in *sp, fields *f)
{
    char base[96], k[160];
    bool any = false;
    for (int i = 0; i < MAX_INDEXED && !f->has_in; i++) {
        snprintf(base, sizeof base, "llm.input_messages.%d", i);
        snprintf(k, sizeof k, "%s.message.role", base);
        const char *role = sattr(sp, k);
        json_t *c = oi_content(sp, base);
        if (!role && !c)
            break;
        add_message(f, role, c);
        any = true;
    }
    if (any)
        f->has_in = true;
    if (!f->has_out) {
        json_t *c = oi_content(sp, "llm.output_messages.0");
        for (int j = 0; j < MAX_INDEXED; j++) {
            char kn[160], ka[160], ki[160];
            snprintf(kn, sizeof kn, "llm.output_messages.0.message.tool_calls.%d.tool_call.function.name", j);
            snprintf(ka, sizeof ka, "llm.output_messages.0.message.tool_calls.%d.tool_call.function.arguments", j);
            snprintf(ki, sizeof ki, "llm.output_messages.0.message.tool_calls.%d.tool_call.id", j);
            if (!attr(sp, kn))
                break;
            add_tool_call(f, attr(sp, ki), attr(sp, kn), attr(sp, ka));
        }
        if (c || f->tool_calls) {
            f->has_out = true;
            f->output = c ? c : json_string("");
        }
    }
    if (!f->variables) {
        json_t *vars = attr_json(sp, "llm.prompt_template.variables");
        if (json_is_object(vars))
            f->variables = vars;
        else
            json_decref(vars);
    }
}

/* Vercel AI SDK: ai.prompt.messages (JSON), ai.response.text, ai.response.toolCalls. */
static void read_vercel(const span_in *sp, fields *f)
{
    json_t *msgs = attr_json(sp, "ai.prompt.messages");
    size_t i;
    json_t *m;
    if (!f->has_in && json_is_array(msgs)) {
        f->has_in = true;
        json_array_foreach(msgs, i, m) add_message(f, json_string_value(json_object_get(m, "role")),
                                                   content_of_parts(json_object_get(m, "content"), "text"));
    }
    json_decref(msgs);
    if (f->has_out)
        return;
    json_t *text = attr(sp, "ai.response.text");
    json_t *calls = attr_json(sp, "ai.response.toolCalls");
    json_array_foreach(calls, i, m) {
        json_t *args = json_object_get(m, "input");
        if (!args)
            args = json_object_get(m, "args");
        add_tool_call(f, json_object_get(m, "toolCallId"), json_object_get(m, "toolName"), args);
    }
    json_decref(calls);
    if (text || f->tool_calls) {
        f->has_out = true;
        f->output = text ? json_incref(text) : json_string("");
    }
    const char *fr = sattr(sp, "ai.response.finishReason");
    if (fr)
        json_object_set_new_nocheck(f->meta, "finish_reason", json_string(fr));
}

/* The older GenAI event form: one event per message (gen_ai.system.message,
 * gen_ai.user.message, gen_ai.assistant.message, gen_ai.tool.message,
 * gen_ai.choice), as span events (fields as attributes) or log records
 * (fields in the body); and gen_ai.evaluation.result as feedback. */
static void read_event(fields *f, const char *name, json_t *fieldsobj)
{
    static const char *const roles[][2] = {{"gen_ai.system.message", "system"},
                                           {"gen_ai.user.message", "user"},
                                           {"gen_ai.assistant.message", "assistant"},
                                           {"gen_ai.tool.message", "tool"}};
    for (size_t r = 0; r < sizeof roles / sizeof roles[0]; r++)
        if (!strcmp(name, roles[r][0])) {
            json_t *content = json_object_get(fieldsobj, "content");
            add_message(f, roles[r][1], content ? content_of_parts(content, "text") : NULL);
            f->has_in = true;
            return;
        }
    if (!strcmp(name, "gen_ai.choice") && !f->has_out) {
        json_t *msg = json_object_get(fieldsobj, "message");
        json_t *content = json_object_get(msg ? msg : fieldsobj, "content");
        json_t *calls = json_object_get(msg ? msg : fieldsobj, "tool_calls");
        size_t i;
        json_t *c;
        json_array_foreach(calls, i, c) {
            json_t *fn = json_object_get(c, "function");
            add_tool_call(f, json_object_get(c, "id"), json_object_get(fn, "name"), json_object_get(fn, "arguments"));
        }
        f->has_out = true;
        f->output = content && !json_is_null(content) ? content_of_parts(content, "text") : json_string("");
        const char *fr = json_string_value(json_object_get(fieldsobj, "finish_reason"));
        if (fr)
            json_object_set_new_nocheck(f->meta, "finish_reason", json_string(fr));
        return;
    }
    if (!strcmp(name, "gen_ai.evaluation.result")) {
        json_t *fb = json_object();
        json_t *score = json_object_get(fieldsobj, "gen_ai.evaluation.score.value");
        json_t *label = json_object_get(fieldsobj, "gen_ai.evaluation.score.label");
        json_t *why = json_object_get(fieldsobj, "gen_ai.evaluation.explanation");
        json_t *who = json_object_get(fieldsobj, "gen_ai.evaluation.name");
        if (json_is_number(score) && json_number_value(score) >= 0 && json_number_value(score) <= 1)
            json_object_set_new_nocheck(fb, "score", json_real(json_number_value(score)));
        if (json_is_string(label))
            json_object_set_nocheck(fb, "label", label);
        if (json_is_string(why))
            json_object_set_nocheck(fb, "comment", why);
        if (json_is_string(who))
            json_object_set_nocheck(fb, "who", who);
        if (json_object_size(fb) == 0 || (json_object_size(fb) == 1 && json_is_string(who))) {
            json_decref(fb);
            return;
        }
        if (!f->feedback)
            f->feedback = json_array();
        json_array_append_new(f->feedback, fb);
    }
}

static void read_span_events(const span_in *sp, fields *f)
{
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(sp->span, "events"), i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        json_t *a = json_object_get(e, "attributes");
        if (!name)
            continue;
        /* the earliest form: gen_ai.content.prompt / completion events with the JSON as an attribute */
        if (!strcmp(name, "gen_ai.content.prompt") && !f->has_in) {
            json_t *msgs = json_attr_value(json_object_get(a, "gen_ai.prompt"));
            size_t j;
            json_t *m;
            json_array_foreach(msgs, j, m) add_message(f, json_string_value(json_object_get(m, "role")),
                                                       content_of_parts(json_object_get(m, "content"), "text"));
            f->has_in = json_is_array(msgs);
            json_decref(msgs);
        } else if (!strcmp(name, "gen_ai.content.completion") && !f->has_out) {
            json_t *msgs = json_attr_value(json_object_get(a, "gen_ai.completion"));
            json_t *m = json_array_get(msgs, 0);
            if (m) {
                f->has_out = true;
                f->output = content_of_parts(json_object_get(m, "content"), "text");
            }
            json_decref(msgs);
        } else {
            /* event fields as attributes; a JSON-text "message" is read as its object */
            json_t *copy = json_deep_copy(a);
            json_t *msg = json_attr_value(json_object_get(a, "message"));
            if (msg)
                json_object_set_new_nocheck(copy, "message", msg);
            json_t *content = json_object_get(a, "content");
            if (json_is_string(content)) {
                json_t *parsed = json_attr_value(content);
                if (json_is_array(parsed))
                    json_object_set_new_nocheck(copy, "content", parsed);
                else
                    json_decref(parsed);
            }
            read_event(f, name, copy);
            json_decref(copy);
        }
    }
}

/* ---- which spans are LLM calls ---- */

static const char *convention_of(const span_in *sp)
{
    const char *oi = sattr(sp, "openinference.span.kind");
    if (oi)
        return !strcasecmp(oi, "LLM") ? "openinference" : NULL;
    if (sattr(sp, "ai.operationId") || sattr(sp, "ai.model.id")) /* Vercel AI SDK */
        return attr(sp, "ai.prompt.messages") ? "vercel-ai" : NULL;
    const char *op = sattr(sp, "gen_ai.operation.name");
    if (!op)
        op = sattr(sp, "llm.request.type"); /* OpenLLMetry */
    if (!op)
        op = sattr(sp, "gen_ai.request.type");
    if (op && strcmp(op, "chat") && strcmp(op, "text_completion") && strcmp(op, "completion") &&
        strcmp(op, "generate_content"))
        return NULL; /* embeddings, tools, agents: not one model call ratchet can score */
    if (attr(sp, "gen_ai.input.messages") || attr(sp, "gen_ai.output.messages"))
        return "gen_ai";
    if (attr(sp, "gen_ai.prompt.0.content") || attr(sp, "gen_ai.completion.0.content") ||
        attr(sp, "gen_ai.prompt.0.role") || sattr(sp, "traceloop.entity.name"))
        return "openllmetry";
    if (op || sattr(sp, "gen_ai.system") || sattr(sp, "gen_ai.provider.name") ||
        sattr(sp, "gen_ai.request.model"))
        return "gen_ai";
    if (sattr(sp, "ratchet.prompt.name") && has_prefix(sp, "ratchet."))
        return "ratchet";
    return NULL;
}

/* ---- the trace ---- */

static json_int_t first_int(const span_in *sp, const char *const *keys, bool *found)
{
    json_int_t v;
    for (; *keys; keys++)
        if (iattr(sp, *keys, &v) && v >= 0) {
            *found = true;
            return v;
        }
    *found = false;
    return 0;
}

static const char *first_str(const span_in *sp, const char *const *keys)
{
    for (; *keys; keys++) {
        const char *s = sattr(sp, *keys);
        if (s)
            return s;
    }
    return NULL;
}

static void reject(otlp_mapped *out, const char *fmt, const char *a, const char *b)
{
    out->rejected++;
    if (!out->error[0])
        snprintf(out->error, sizeof out->error, fmt, a, b);
}

void otlp_trace_id(const char *trace_hex, const char *span_hex, char out[64])
{
    /* as snprintf "%.32s-%.16s", without it: this runs for every span */
    size_t t = strnlen(trace_hex, 32), s = strnlen(span_hex, 16);
    memcpy(out, trace_hex, t);
    out[t] = '-';
    memcpy(out + t + 1, span_hex, s);
    out[t + 1 + s] = '\0';
}

/* The prompt: the convention's prompt attributes, else ratchet.prompt.*, else the rule. */
static json_t *prompt_of(const span_in *sp, fields *f, const otlp_map_opts *opts)
{
    static const char *const names[] = {"traceloop.prompt.key", "ratchet.prompt.name",
                                        "ai.telemetry.metadata.ratchet.prompt.name", "gen_ai.prompt.name", NULL};
    static const char *const versions[] = {"traceloop.prompt.version", "ratchet.prompt.version",
                                           "ai.telemetry.metadata.ratchet.prompt.version", "llm.prompt_template.version",
                                           "gen_ai.prompt.version", NULL};
    const char *name = NULL;
    for (const char *const *k = names; *k && !name; k++)
        name = sattr_or_resource(sp, *k);
    json_t *p = NULL;
    if (name) {
        p = json_object();
        json_object_set_new_nocheck(p, "name", json_string(name));
        bool found;
        json_int_t v = first_int(sp, versions, &found);
        if (found && v >= 1)
            json_object_set_new_nocheck(p, "version", json_integer(v));
    }
    (void)opts;
    if (!f->variables) {
        json_t *vars = attr_json(sp, "traceloop.prompt.template_variables");
        if (!vars)
            vars = attr_json(sp, "ratchet.prompt.variables");
        if (json_is_object(vars))
            f->variables = vars;
        else
            json_decref(vars);
    }
    return p;
}

static json_t *build_trace(const span_in *sp, fields *f, json_t *prompt, const char *conv)
{
    static const char *const models[] = {"gen_ai.response.model", "gen_ai.request.model", "llm.model_name",
                                         "ai.response.model", "ai.model.id", NULL};
    static const char *const providers[] = {"gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system",
                                            "ai.model.provider", NULL};
    static const char *const in_tokens[] = {"gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
                                            "llm.token_count.prompt", "ai.usage.inputTokens", "ai.usage.promptTokens", NULL};
    static const char *const out_tokens[] = {"gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
                                             "llm.token_count.completion", "ai.usage.outputTokens",
                                             "ai.usage.completionTokens", NULL};
    static const char *const sessions[] = {"session.id", "gen_ai.conversation.id", "ai.telemetry.metadata.sessionId", NULL};
    static const char *const users[] = {"user.id", "enduser.id", "ai.telemetry.metadata.userId", NULL};
    char id[64];
    const char *tid = json_string_value(json_object_get(sp->span, "trace_id"));
    const char *sid = json_string_value(json_object_get(sp->span, "span_id"));
    otlp_trace_id(tid ? tid : "", sid ? sid : "", id);
    json_t *t = json_object();
    json_object_set_new_nocheck(t, "id", json_string(id));
    json_object_set_nocheck(t, "prompt", prompt);
    json_t *input = json_object();
    if (f->messages)
        json_object_set_nocheck(input, "messages", f->messages);
    if (f->variables)
        json_object_set_nocheck(input, "variables", f->variables);
    if (json_object_size(input))
        json_object_set_nocheck(t, "input", input);
    json_decref(input);
    json_int_t code = json_integer_value(json_object_get(sp->span, "status_code"));
    if (code == 2) {
        const char *msg = json_string_value(json_object_get(sp->span, "status_message"));
        const char *type = sattr(sp, "error.type");
        json_object_set_new_nocheck(t, "error", json_string(msg && *msg ? msg : type ? type : "the span's status is ERROR"));
    }
    if (f->output)
        json_object_set_nocheck(t, "output", f->output);
    if (f->tool_calls)
        json_object_set_nocheck(t, "tool_calls", f->tool_calls);
    const char *model = first_str(sp, models);
    if (model)
        json_object_set_new_nocheck(t, "model", json_string(model));
    json_int_t start = json_integer_value(json_object_get(sp->span, "start_ns"));
    json_int_t end = json_integer_value(json_object_get(sp->span, "end_ns"));
    if (end >= start && start > 0 && end > 0)
        json_object_set_new_nocheck(t, "latency_ms", json_real((double)(end - start) / 1e6));
    if (start > 0)
        json_object_set_new_nocheck(t, "timestamp", json_integer(start / 1000000));
    bool fi, fo;
    json_int_t ti = first_int(sp, in_tokens, &fi), to = first_int(sp, out_tokens, &fo);
    if (fi || fo) {
        json_t *u = json_object();
        if (fi)
            json_object_set_new_nocheck(u, "input_tokens", json_integer(ti));
        if (fo)
            json_object_set_new_nocheck(u, "output_tokens", json_integer(to));
        json_object_set_new_nocheck(t, "usage", u);
    }
    json_t *meta = json_object();
    const char *s;
    if ((s = first_str(sp, sessions)))
        json_object_set_new_nocheck(meta, "session_id", json_string(s));
    if ((s = first_str(sp, users)))
        json_object_set_new_nocheck(meta, "user_id", json_string(s));
    json_t *otel = f->meta;
    json_object_set_new_nocheck(otel, "trace_id", json_string(tid ? tid : ""));
    json_object_set_new_nocheck(otel, "span_id", json_string(sid ? sid : ""));
    json_object_set_nocheck(otel, "span_name", json_object_get(sp->span, "name") ? json_object_get(sp->span, "name") : json_string(""));
    json_object_set_new_nocheck(otel, "convention", json_string(conv));
    if ((s = first_str(sp, providers)))
        json_object_set_new_nocheck(otel, "provider", json_string(s));
    if ((s = sattr(sp, "gen_ai.operation.name")))
        json_object_set_new_nocheck(otel, "operation", json_string(s));
    if ((s = sattr(sp, "gen_ai.response.id")))
        json_object_set_new_nocheck(otel, "response_id", json_string(s));
    json_t *svc = json_object_get(sp->resource, "service.name");
    if (json_is_string(svc))
        json_object_set_nocheck(otel, "service", svc);
    json_object_set_nocheck(meta, "otel", otel);
    json_object_set_new_nocheck(t, "metadata", meta);
    if (f->feedback)
        json_object_set_nocheck(t, "feedback", f->feedback);
    const char *thumbs = sattr(sp, "ratchet.feedback.thumbs");
    if (thumbs) {
        if (!json_is_array(json_object_get(t, "feedback")))
            json_object_set_new_nocheck(t, "feedback", json_array());
        json_array_append_new(json_object_get(t, "feedback"), json_pack("{s:s}", "thumbs", thumbs));
    }
    return t;
}

/* What a span without its content adds to the trace its log records form:
 * the trace's fields the span knows (model, usage, latency, ids of the
 * session and user, the span's own metadata), not what the records say. */
static json_t *part_of(const span_in *sp, fields *f, const char *conv)
{
    json_t *t = build_trace(sp, f, json_null(), conv);
    static const char *const not_from_span[] = {"id", "prompt", "input", "output", "tool_calls", "timestamp",
                                                "feedback", "error", NULL};
    for (const char *const *k = not_from_span; *k; k++)
        json_object_del(t, *k);
    json_t *otel = json_object_get(json_object_get(t, "metadata"), "otel");
    json_object_del(otel, "trace_id");
    json_object_del(otel, "span_id");
    json_object_del(otel, "convention");
    return t;
}

static void push(otlp_mapped *out, json_t *trace, size_t source)
{
    size_t n = json_array_size(out->traces);
    out->source = xrealloc(out->source, (n + 1) * sizeof *out->source);
    out->source[n] = source;
    json_array_append_new(out->traces, trace);
}

/* A log records' trace nothing linked waits for its span's part (below). */
static void add_orphan(otlp_mapped *out, json_t *trace /* stolen */, size_t index)
{
    json_object_del(trace, "prompt");
    json_array_append_new(out->orphans, json_pack("{s:I,s:o}", "index", (json_int_t)index, "trace", trace));
}

static void map_one(const span_in *sp, size_t index, const char *conv, fields *f, const otlp_map_opts *opts,
                    otlp_mapped *out)
{
    json_t *prompt = prompt_of(sp, f, opts);
    bool records = !strcmp(conv, "gen_ai-events");
    if (!prompt && opts && opts->defer_unlinked) {
        if (json_array_size(out->deferred) < OTLP_MAX_DEFERRED) {
            /* the trace, whole but for its prompt, waits for the rule */
            json_t *t = build_trace(sp, f, json_null(), conv);
            json_array_append_new(out->deferred, json_pack("{s:I,s:o,s:o,s:b}", "index", (json_int_t)index, "span", span_plain(sp),
                                                           "trace", t, "records", records));
            return;
        }
        out->unlinked++;
        reject(out, "%s%s", "more LLM calls in one request than otlp.prompt_rule is asked about (" STR(OTLP_MAX_DEFERRED) ")", "");
        return;
    }
    if (!prompt && records) {
        add_orphan(out, build_trace(sp, f, json_null(), conv), index);
        return;
    }
    if (!prompt) {
        out->unlinked++;
        reject(out, "span '%s' (%s) is an LLM call linked to no prompt: set ratchet.prompt.name (or the "
                    "convention's prompt attribute) or configure otlp.prompt_rule",
               json_string_value(json_object_get(sp->span, "name")) ? json_string_value(json_object_get(sp->span, "name")) : "",
               conv);
        return;
    }
    push(out, build_trace(sp, f, prompt, conv), index);
    json_decref(prompt);
}

static void init_out(otlp_mapped *out)
{
    memset(out, 0, sizeof *out);
    out->traces = json_array();
    out->feedback = json_array();
    out->deferred = json_array();
    out->parts = json_array();
    out->orphans = json_array();
}

static void map_span(const span_in *sp, size_t i, const otlp_map_opts *opts, otlp_mapped *out)
{
    const char *bad = json_string_value(json_object_get(sp->span, "invalid"));
    if (bad) {
        reject(out, "span %s: %s", json_string_value(json_object_get(sp->span, "name")) ?
               json_string_value(json_object_get(sp->span, "name")) : "", bad);
        return;
    }
    const char *conv = convention_of(sp);
    if (!conv) {
        out->dropped++;
        return;
    }
    /* one pass over the keys: which readers have anything to read */
    bool oi = false, ollm = false, vercel = false;
    const char *k;
    size_t n;
#define STARTS(p) (n >= sizeof p - 1 && !memcmp(k, p, sizeof p - 1))
    for (key_iter it = {.sp = sp}; next_key(&it, &k, &n);) {
        oi |= STARTS("llm.");
        ollm |= STARTS("gen_ai.prompt.") || STARTS("gen_ai.completion.");
        vercel |= STARTS("ai.");
    }
#undef STARTS
    fields f = {.meta = json_object(), .convention = conv};
    read_genai(sp, &f);
    if (oi)
        read_openinference(sp, &f);
    if (ollm)
        read_openllmetry(sp, &f);
    if (vercel)
        read_vercel(sp, &f);
    if (json_array_size(json_object_get(sp->span, "events")))
        read_span_events(sp, &f);
    if (!f.has_out && json_integer_value(json_object_get(sp->span, "status_code")) != 2) {
        /* content off, or sent as log records (/v1/logs): nothing to score
         * here, but what the span knows joins the trace the records form */
        char id[64];
        const char *tid = json_string_value(json_object_get(sp->span, "trace_id"));
        const char *sid = json_string_value(json_object_get(sp->span, "span_id"));
        otlp_trace_id(tid ? tid : "", sid ? sid : "", id);
        json_t *part = part_of(sp, &f, conv);
        /* the prompt the span names (never merged into a trace: it links the
         * records' trace when they name none, in either order) and its
         * template variables */
        json_t *prompt = prompt_of(sp, &f, opts);
        if (prompt)
            json_object_set_new_nocheck(part, "prompt", prompt);
        if (f.variables)
            json_object_set_new_nocheck(part, "input", json_pack("{s:O}", "variables", f.variables));
        json_t *entry = json_pack("{s:s,s:o}", "id", id, "part", part);
        if (!prompt && opts && opts->defer_unlinked && json_array_size(out->deferred) < OTLP_MAX_DEFERRED)
            /* the rule may name the prompt its records will take (otlp_map_deferred) */
            json_array_append_new(out->deferred, json_pack("{s:I,s:o,s:o}", "index", (json_int_t)i, "span", span_plain(sp),
                                                           "part", entry));
        else
            json_array_append_new(out->parts, entry);
        fields_free(&f);
        return;
    }
    map_one(sp, i, conv, &f, opts, out);
    fields_free(&f);
}

void otlp_map_spans(json_t *spans, const otlp_map_opts *opts, otlp_mapped *out)
{
    init_out(out);
    size_t i;
    json_t *span;
    json_array_foreach(spans, i, span) {
        span_in sp = span_of(span, NULL);
        map_span(&sp, i, opts, out);
    }
}

typedef struct {
    const otlp_map_opts *opts;
    otlp_mapped *out;
    size_t i;
} pb_ctx;

static void map_pb(void *ud, json_t *span, otlp_pb_span *pb)
{
    pb_ctx *c = ud;
    span_in sp = span_of(span, pb);
    map_span(&sp, c->i++, c->opts, c->out);
}

int otlp_map_pb_spans(const char *body, size_t len, const otlp_map_opts *opts, otlp_mapped *out, char *err,
                      size_t errlen)
{
    init_out(out);
    pb_ctx c = {.opts = opts, .out = out};
    if (otlp_decode_pb_spans(body, len, map_pb, &c, err, errlen) == 0)
        return 0;
    otlp_mapped_free(out);
    return -1;
}

void otlp_map_deferred(otlp_mapped *m, json_t *answers)
{
    json_t *deferred = m->deferred;
    m->deferred = json_array();
    size_t i;
    json_t *d;
    json_array_foreach(deferred, i, d) {
        json_t *span = json_object_get(d, "span");
        size_t index = (size_t)json_integer_value(json_object_get(d, "index"));
        json_t *a = json_array_get(answers, i);
        json_t *entry = json_object_get(d, "part");
        if (entry) {
            /* a span without its content: the rule's prompt waits with its
             * part; no answer (or the rule's error) leaves the part as it was */
            if (json_is_object(a))
                json_object_set_nocheck(json_object_get(entry, "part"), "prompt", a);
            json_array_append(m->parts, entry);
            continue;
        }
        if (json_is_null(a) && json_is_true(json_object_get(d, "records"))) {
            /* the rule said no: the span's part may still name the prompt */
            add_orphan(m, json_incref(json_object_get(d, "trace")), index);
            continue;
        }
        m->unlinked += !json_is_object(a);
        if (json_is_string(a)) {
            reject(m, "otlp.prompt_rule failed on a span: %s%s", json_string_value(a), "");
        } else if (!json_is_object(a)) {
            const char *name = json_string_value(json_object_get(span, "name"));
            reject(m, "span '%s' is an LLM call linked to no prompt: no attribute links it and otlp.prompt_rule "
                      "returned false%s", name ? name : "", "");
        } else {
            json_t *t = json_object_get(d, "trace");
            json_object_set_nocheck(t, "prompt", a);
            push(m, json_incref(t), index);
        }
    }
    json_decref(deferred);
}

/* Log records: grouped by span (records without a span are each their own group). */
void otlp_map_logs(json_t *logs, const otlp_map_opts *opts, otlp_mapped *out)
{
    init_out(out);
    size_t n = json_array_size(logs);
    bool *done = xcalloc(n ? n : 1, sizeof *done);
    for (size_t i = 0; i < n; i++) {
        if (done[i])
            continue;
        json_t *rec = json_array_get(logs, i);
        const char *bad = json_string_value(json_object_get(rec, "invalid"));
        done[i] = true;
        if (bad) {
            reject(out, "log record %s%s", "", bad);
            continue;
        }
        const char *tid = json_string_value(json_object_get(rec, "trace_id"));
        const char *sid = json_string_value(json_object_get(rec, "span_id"));
        /* the span's records, in order: a synthetic span carries their fields */
        fields f = {.meta = json_object(), .convention = "gen_ai-events"};
        json_t *span = json_pack("{s:s,s:s,s:O,s:O,s:o,s:I}", "trace_id", tid, "span_id", sid, "resource",
                                 json_object_get(rec, "resource"), "attributes", json_object_get(rec, "attributes"),
                                 "name", json_string(""), "start_ns",
                                 (json_int_t)json_integer_value(json_object_get(rec, "time_ns")));
        json_t *attrs = json_deep_copy(json_object_get(rec, "attributes"));
        json_object_set_new_nocheck(span, "attributes", attrs);
        span_in sp = span_of(span, NULL);
        size_t nevents = 0, ngenai = 0;
        for (size_t j = i; j < n; j++) {
            json_t *r = json_array_get(logs, j);
            if (j > i && (done[j] || !*tid || !*sid || json_object_get(r, "invalid") ||
                          strcmp(json_string_value(json_object_get(r, "trace_id")), tid) ||
                          strcmp(json_string_value(json_object_get(r, "span_id")), sid)))
                continue;
            done[j] = true;
            const char *name = json_string_value(json_object_get(r, "event_name"));
            json_t *a = json_object_get(r, "attributes");
            if (!name || !*name)
                name = json_string_value(json_object_get(a, "event.name"));
            if (!name || strncmp(name, "gen_ai.", 7))
                continue;
            nevents++;
            json_object_update_missing(attrs, a);
            json_t *body = json_object_get(r, "body");
            json_t *fo = json_is_object(body) ? json_deep_copy(body) : json_object();
            if (body && !json_is_object(body))
                json_object_set_nocheck(fo, "content", body);
            json_object_update_missing(fo, a);
            read_event(&f, name, fo);
            ngenai += strcmp(name, "gen_ai.evaluation.result") != 0;
            json_decref(fo);
        }
        /* gen_ai.client.inference.operation.details records carry the
         * current attributes (gen_ai.input.messages, ...), merged above */
        if (nevents && (!f.has_in || !f.has_out))
            read_genai(&sp, &f);
        if (!nevents) {
            out->dropped++;
        } else if (!ngenai && f.feedback) {
            /* feedback on a trace sent before */
            char id[64];
            otlp_trace_id(tid, sid, id);
            size_t k;
            json_t *fb;
            json_array_foreach(f.feedback, k, fb) {
                json_t *item = json_deep_copy(fb);
                json_object_set_new_nocheck(item, "trace_id", json_string(id));
                json_array_append_new(out->feedback, item);
            }
        } else if (!*tid || !*sid) {
            reject(out, "GenAI log records without a trace and span id cannot form a trace%s%s", "", "");
        } else if (!f.has_out) {
            out->dropped++; /* the question without its answer: the choice comes with the span's other records */
        } else {
            map_one(&sp, i, "gen_ai-events", &f, opts, out);
        }
        json_decref(span);
        fields_free(&f);
    }
    free(done);
}

/* ---- joining a span's prompt and its records' trace ---- */

json_t *otlp_map_join_ids(const otlp_mapped *m)
{
    json_t *ids = json_array();
    size_t i;
    json_t *o;
    json_array_foreach(m->orphans, i, o) json_array_append(ids, json_object_get(json_object_get(o, "trace"), "id"));
    json_array_foreach(m->parts, i, o) json_array_append(ids, json_object_get(o, "id"));
    return ids;
}

void otlp_map_join(otlp_mapped *m, json_t *waiting)
{
    size_t i;
    json_t *o;
    /* a span naming the prompt, whose records' trace waits as a part: the two form the trace now */
    json_t *parts = m->parts;
    m->parts = json_array();
    json_array_foreach(parts, i, o) {
        json_t *part = json_object_get(o, "part");
        json_t *w = json_object_get(waiting, json_string_value(json_object_get(o, "id")));
        if (!json_object_get(w, "output")) { /* no records' trace waits: as before */
            json_array_append(m->parts, o);
            continue;
        }
        if (!json_object_get(part, "prompt") && !json_object_get(w, "prompt")) {
            m->unlinked++;
            reject(m, "span %s is an LLM call whose log records name no prompt, and neither does it: set "
                      "ratchet.prompt.name on the span, the records or the resource, or configure otlp.prompt_rule%s",
                   json_string_value(json_object_get(o, "id")), "");
            continue;
        }
        json_t *t = json_deep_copy(w);
        json_object_update_recursive(t, part); /* the span's fields win, as when merged into a stored trace */
        m->joined++;
        push(m, t, SIZE_MAX);
        /* stored after the trace (which takes and deletes the waiting part):
         * the span's fields win there too */
        json_array_append(m->parts, o);
    }
    json_decref(parts);
    json_t *orphans = m->orphans;
    m->orphans = json_array();
    json_array_foreach(orphans, i, o) {
        json_t *t = json_object_get(o, "trace");
        const char *id = json_string_value(json_object_get(t, "id"));
        json_t *w = json_object_get(waiting, id ? id : "");
        json_t *prompt = json_object_get(w, "prompt");
        if (json_is_object(prompt)) {
            /* the span came first and named the prompt: the trace takes it
             * (and the rest of the part when it is stored) */
            json_object_set_nocheck(t, "prompt", prompt);
            push(m, json_incref(t), (size_t)json_integer_value(json_object_get(o, "index")));
        } else if (w && !json_object_get(w, "output")) {
            /* the span came first and named none */
            m->unlinked++;
            reject(m, "log records of span %s form an LLM call linked to no prompt: set ratchet.prompt.name on the "
                      "span, the records or the resource, or configure otlp.prompt_rule%s", id, "");
        } else {
            /* the span has not come (or these records came before): the trace waits for it as a part */
            json_array_append_new(m->parts, json_pack("{s:s,s:O,s:b}", "id", id, "part", t, "waits", 1));
        }
    }
    json_decref(orphans);
}

void otlp_mapped_free(otlp_mapped *m)
{
    json_decref(m->traces);
    json_decref(m->feedback);
    json_decref(m->deferred);
    json_decref(m->parts);
    json_decref(m->orphans);
    free(m->source);
    memset(m, 0, sizeof *m);
}
