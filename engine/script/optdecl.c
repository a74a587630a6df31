/* optdecl.c — declarations of options and the check of options against
 * them (see optdecl.h). */
#include "script/optdecl.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/util.h"

/* the types an option may have; a declaration names one or a list */
enum { T_STRING = 1, T_NUMBER = 2, T_INTEGER = 4, T_BOOLEAN = 8, T_LIST = 16, T_OBJECT = 32, T_ANY = 63 };

static const struct {
    const char *name, *phrase;
    int bit;
} types[] = {
    {"string", "a string", T_STRING},   {"number", "a number", T_NUMBER},
    {"integer", "an integer", T_INTEGER}, {"boolean", "true or false", T_BOOLEAN},
    {"list", "a list", T_LIST},         {"object", "a table of named values", T_OBJECT},
    {"any", "any value", T_ANY},
};
#define NTYPES (sizeof types / sizeof types[0])

static const char *const decl_keys[] = {"type",    "items", "required", "allowed",  "default",
                                        "description", "min", "max",  "above", "nonempty", "names", NULL};

/* what a `names` declaration may point at: the configuration's own names */
static const char *const name_kinds[] = {"provider", NULL};

static int type_bit(const char *name)
{
    for (size_t i = 0; i < NTYPES; i++)
        if (!strcmp(types[i].name, name))
            return types[i].bit;
    return 0;
}

/* The set of types a "type" or "items" value names (0: not a valid one). */
static int type_set(const json_t *v)
{
    if (json_is_string(v))
        return type_bit(json_string_value(v));
    if (!json_is_array(v) || json_array_size(v) == 0)
        return 0;
    int set = 0;
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
        int b = json_is_string(x) ? type_bit(json_string_value(x)) : 0;
        if (!b)
            return 0;
        set |= b;
    }
    return set;
}

/* "a string or a list" */
static void type_phrase(int set, char *out, size_t n)
{
    out[0] = '\0';
    if ((set & T_ANY) == T_ANY) {
        snprintf(out, n, "any value");
        return;
    }
    if (set & T_NUMBER)
        set &= ~T_INTEGER;
    int left = __builtin_popcount((unsigned)set);
    for (size_t i = 0; i < NTYPES - 1; i++) {
        if (!(set & types[i].bit))
            continue;
        size_t len = strlen(out);
        snprintf(out + len, n - len, "%s%s", len ? (left == 1 ? " or " : ", ") : "", types[i].phrase);
        left--;
    }
}

/* What a value is, in words: "a string", "a number", "a list", ... */
static const char *value_phrase(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_ARRAY: return "a list";
    case JSON_OBJECT: return "a table of named values";
    default: return "null";
    }
}

static bool is_integral(const json_t *v)
{
    if (json_is_integer(v))
        return true;
    double d = json_real_value(v);
    return json_is_real(v) && isfinite(d) && d == floor(d) && fabs(d) < 9007199254740992.0;
}

static bool has_type(const json_t *v, int set)
{
    switch (json_typeof(v)) {
    case JSON_STRING: return set & T_STRING;
    case JSON_INTEGER:
    case JSON_REAL: return (set & T_NUMBER) || ((set & T_INTEGER) && is_integral(v));
    case JSON_TRUE:
    case JSON_FALSE: return set & T_BOOLEAN;
    case JSON_ARRAY: return set & T_LIST;
    /* a Lua table cannot say whether an empty {} is a list or an object */
    case JSON_OBJECT: return (set & T_OBJECT) || ((set & T_LIST) && json_object_size(v) == 0);
    default: return (set & T_ANY) == T_ANY;
    }
}

/* The value as it would be written in a message: numbers never rounded,
 * strings quoted, anything else as its kind. */
static void value_text(const json_t *v, char *out, size_t n)
{
    char num[32];
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        snprintf(out, n, "\"%.60s%s\"", s, strlen(s) > 60 ? "..." : "");
    } else if (json_is_integer(v)) {
        snprintf(out, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (json_is_real(v)) {
        num_text(json_real_value(v), num);
        snprintf(out, n, "%s", num);
    } else if (json_is_boolean(v)) {
        snprintf(out, n, "%s", json_is_true(v) ? "true" : "false");
    } else {
        snprintf(out, n, "%s", value_phrase(v));
    }
}

/* ---- checking one value ---- */

typedef struct {
    optdecl_report report;
    void *ud;
    int problems;
} reporter;

static void say(reporter *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(reporter *r, const char *fmt, ...)
{
    char msg[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->problems++;
    if (r->report)
        r->report(msg, r->ud);
}

/* The declaration of one option as an object (a string is a description). */
static int decl_types(const json_t *d)
{
    json_t *t = json_is_object(d) ? json_object_get(d, "type") : NULL;
    return t ? type_set(t) : T_ANY;
}

/* Checks v against declaration d of option `name`. */
static void check_value(const char *name, const json_t *d, const json_t *v, reporter *r)
{
    if (!json_is_object(d))
        return; /* a description only: any value */
    int set = decl_types(d);
    char want[160], got[100];
    if (!has_type(v, set)) {
        type_phrase(set, want, sizeof want);
        if ((set & (T_INTEGER | T_NUMBER)) == T_INTEGER && json_is_number(v)) {
            value_text(v, got, sizeof got);
            say(r, "option '%s' must be an integer (got %s)", name, got);
        } else {
            say(r, "option '%s' must be %s (got %s)", name, want, value_phrase(v));
        }
        return;
    }
    json_t *items = json_object_get(d, "items");
    int iset = items ? type_set(items) : T_ANY;
    bool nonempty = json_is_true(json_object_get(d, "nonempty"));
    if (json_is_array(v) || (json_is_object(v) && items)) {
        if (nonempty && (json_is_array(v) ? json_array_size(v) : json_object_size(v)) == 0)
            say(r, "option '%s' must not be empty", name);
        type_phrase(iset, want, sizeof want);
        if (json_is_array(v)) {
            size_t i;
            json_t *x;
            json_array_foreach(v, i, x) {
                if (!has_type(x, iset))
                    say(r, "option '%s': item %zu must be %s (got %s)", name, i + 1, want, value_phrase(x));
                else if (nonempty && json_is_string(x) && json_string_length(x) == 0)
                    say(r, "option '%s': item %zu must not be an empty string", name, i + 1);
            }
        } else {
            const char *k;
            json_t *x;
            json_object_foreach((json_t *)v, k, x) {
                if (!has_type(x, iset))
                    say(r, "option '%s': the value of '%s' must be %s (got %s)", name, k, want, value_phrase(x));
            }
        }
    }
    if (nonempty && json_is_string(v) && json_string_length(v) == 0)
        say(r, "option '%s' must not be an empty string", name);
    json_t *allowed = json_object_get(d, "allowed");
    if (allowed && !json_is_array(v)) {
        bool ok = false;
        size_t i;
        json_t *x;
        json_array_foreach(allowed, i, x)
            ok = ok || json_equal((json_t *)x, (json_t *)v) ||
                 (json_is_number(x) && json_is_number(v) && json_number_value(x) == json_number_value(v));
        if (!ok) {
            buf_t list;
            buf_init(&list);
            json_array_foreach(allowed, i, x) {
                char t[100];
                value_text(x, t, sizeof t);
                buf_printf(&list, "%s%s", i ? ", " : "", t);
            }
            value_text(v, got, sizeof got);
            say(r, "option '%s' must be one of %s (got %s)", name, list.data, got);
            buf_free(&list);
        }
    }
    if (json_is_number(v)) {
        double x = json_number_value(v);
        json_t *lo = json_object_get(d, "min"), *hi = json_object_get(d, "max"), *above = json_object_get(d, "above");
        char b[32];
        value_text(v, got, sizeof got);
        if (lo && x < json_number_value(lo)) {
            num_text(json_number_value(lo), b);
            say(r, "option '%s' must be at least %s (got %s)", name, b, got);
        }
        if (above && !(x > json_number_value(above))) {
            num_text(json_number_value(above), b);
            say(r, "option '%s' must be more than %s (got %s)", name, b, got);
        }
        if (hi && x > json_number_value(hi)) {
            num_text(json_number_value(hi), b);
            say(r, "option '%s' must be at most %s (got %s)", name, b, got);
        }
    }
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int optdecl_validate(const json_t *decl, const json_t *opts, optdecl_report report, void *ud)
{
    reporter r = {report, ud, 0};
    if (!json_is_object(decl))
        return 0;
    const char *k;
    json_t *v;
    if (opts && !json_is_object(opts)) {
        say(&r, "the options must be a table of named options (got %s)", value_phrase(opts));
        return r.problems;
    }
    if (opts) {
        size_t n = json_object_size(decl), i = 0;
        const char **names = xcalloc(n + 1, sizeof *names);
        const char *dk;
        json_t *dv;
        json_object_foreach((json_t *)decl, dk, dv)
            names[i++] = dk;
        qsort(names, n, sizeof *names, cmp_names); /* a stable order, whatever the script's table order */
        json_object_foreach((json_t *)opts, k, v) {
            json_t *d = json_object_get(decl, k);
            if (d) {
                check_value(k, d, v, &r);
                continue;
            }
            buf_t known;
            buf_init(&known);
            for (size_t j = 0; j < n; j++)
                buf_printf(&known, "%s%s", j ? ", " : "", names[j]);
            const char *near = closest_name(k, names, n);
            if (near)
                say(&r, "unknown option '%s'; did you mean '%s'? (known: %s)", k, near, known.data ? known.data : "none");
            else
                say(&r, "unknown option '%s' (known: %s)", k, known.data ? known.data : "none");
            buf_free(&known);
        }
        free(names);
    }
    json_object_foreach((json_t *)decl, k, v) {
        if (!json_is_object(v) || !json_is_true(json_object_get(v, "required")))
            continue;
        if (opts && json_object_get(opts, k))
            continue;
        const char *what = json_string_value(json_object_get(v, "description"));
        char want[160];
        type_phrase(decl_types(v), want, sizeof want);
        say(&r, "option '%s' is required (%s%s%s)", k, want, what ? ": " : "", what ? what : "");
    }
    return r.problems;
}

/* ---- checking a declaration ---- */

static void first_problem(const char *problem, void *ud)
{
    char *slot = ud;
    if (!slot[0])
        snprintf(slot, 700, "%s", problem);
}

static int check_one(const char *name, const json_t *d, char *err, size_t errlen)
{
    if (json_is_string(d))
        return 0;
    if (!json_is_object(d)) {
        snprintf(err, errlen, "options.%s: a declaration is a table { type = ..., description = ... } or a "
                              "description string (got %s)", name, value_phrase(d));
        return -1;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)d, k, v) {
        bool known = false;
        for (const char *const *x = decl_keys; *x; x++)
            known = known || !strcmp(*x, k);
        if (!known) {
            const char *near = closest_name(k, decl_keys, 0);
            snprintf(err, errlen, "options.%s: unknown declaration key '%s'%s%s%s (known: type, items, required, "
                                  "allowed, default, description, min, max, above, nonempty, names)",
                     name, k, near ? "; did you mean '" : "", near ? near : "", near ? "'?" : "");
            return -1;
        }
    }
    json_t *t = json_object_get(d, "type"), *items = json_object_get(d, "items");
    if (t && !type_set(t)) {
        snprintf(err, errlen, "options.%s: type must be one of string, number, integer, boolean, list, object, any, "
                              "or a list of them", name);
        return -1;
    }
    int set = decl_types(d);
    if (items && (!type_set(items) || !(set & (T_LIST | T_OBJECT)))) {
        snprintf(err, errlen, "options.%s: items names the type of each item of a list or value of an object "
                              "(string, number, integer, boolean, list, object, any, or a list of them)", name);
        return -1;
    }
    static const char *const flags[] = {"required", "nonempty", NULL};
    for (const char *const *f = flags; *f; f++)
        if (json_object_get(d, *f) && !json_is_boolean(json_object_get(d, *f))) {
            snprintf(err, errlen, "options.%s: %s must be true or false", name, *f);
            return -1;
        }
    json_t *desc = json_object_get(d, "description");
    if (desc && !json_is_string(desc)) {
        snprintf(err, errlen, "options.%s: description must be a string", name);
        return -1;
    }
    static const char *const bounds[] = {"min", "max", "above", NULL};
    for (const char *const *b = bounds; *b; b++) {
        json_t *x = json_object_get(d, *b);
        if (x && (!json_is_number(x) || !(set & (T_NUMBER | T_INTEGER)))) {
            snprintf(err, errlen, "options.%s: %s must be a number, on an option of type number or integer", name, *b);
            return -1;
        }
    }
    json_t *names = json_object_get(d, "names");
    if (names) {
        bool ok = false;
        for (const char *const *x = name_kinds; *x; x++)
            ok = ok || (json_is_string(names) && !strcmp(*x, json_string_value(names)));
        if (!ok || set != T_STRING) {
            snprintf(err, errlen, "options.%s: names must be \"provider\" (the value names an LLM provider of the "
                                  "configuration), on an option of type string", name);
            return -1;
        }
    }
    json_t *allowed = json_object_get(d, "allowed");
    if (allowed) {
        bool ok = json_is_array(allowed) && json_array_size(allowed) > 0;
        size_t i;
        json_t *x;
        json_array_foreach(allowed, i, x)
            ok = ok && (json_is_string(x) || json_is_number(x) || json_is_boolean(x)) && has_type(x, set);
        if (!ok) {
            snprintf(err, errlen, "options.%s: allowed must be a non-empty list of values of the option's type", name);
            return -1;
        }
    }
    json_t *def = json_object_get(d, "default");
    if (def) {
        if (json_is_true(json_object_get(d, "required"))) {
            snprintf(err, errlen, "options.%s: a required option has no default", name);
            return -1;
        }
        char problem[700] = "";
        reporter r = {first_problem, problem, 0};
        check_value(name, d, def, &r);
        if (r.problems) {
            snprintf(err, errlen, "options.%s: the default does not fit the declaration: %s", name, problem);
            return -1;
        }
    }
    return 0;
}

int optdecl_check(const json_t *decl, char *err, size_t errlen)
{
    if (!json_is_object(decl)) {
        snprintf(err, errlen, "options must be a table: option name -> declaration (got %s)", value_phrase(decl));
        return -1;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)decl, k, v)
        if (check_one(k, v, err, errlen) != 0)
            return -1;
    return 0;
}

/* ---- options that name something of the configuration ---- */

int optdecl_validate_names(const json_t *decl, const json_t *opts, const char *kind, const char *const *known,
                           size_t nknown, optdecl_report report, void *ud)
{
    reporter r = {report, ud, 0};
    const char *k;
    json_t *d;
    json_object_foreach((json_t *)decl, k, d) {
        json_t *names = json_is_object(d) ? json_object_get(d, "names") : NULL;
        if (!json_is_string(names) || strcmp(json_string_value(names), kind))
            continue;
        json_t *v = json_is_object(opts) ? json_object_get(opts, k) : NULL;
        buf_t list;
        buf_init(&list);
        for (size_t i = 0; i < nknown; i++)
            buf_printf(&list, "%s%s", i ? ", " : "", known[i]);
        const char *declared = list.data ? list.data : "none";
        if (json_is_string(v)) {
            bool found = false;
            for (size_t i = 0; i < nknown && !found; i++)
                found = !strcmp(known[i], json_string_value(v));
            const char *near = found ? NULL : closest_name(json_string_value(v), known, nknown);
            if (!found)
                say(&r, "option '%s': no %s '%s' is declared%s%s%s (declared: %s)", k, kind, json_string_value(v),
                    near ? "; did you mean '" : "", near ? near : "", near ? "'?" : "", declared);
        } else if (!v && nknown != 1) {
            say(&r, "option '%s' is required when the configuration does not declare exactly one %s (declared: %s)",
                k, kind, declared);
        }
        buf_free(&list);
    }
    return r.problems;
}

/* ---- policies: a declaration from the settings ---- */

static const char *type_of_default(const json_t *v, const char **items)
{
    *items = NULL;
    switch (json_typeof(v)) {
    case JSON_STRING: return "string";
    case JSON_INTEGER:
    case JSON_REAL: return "number";
    case JSON_TRUE:
    case JSON_FALSE: return "boolean";
    case JSON_ARRAY: {
        /* a list: typed items when they all are numbers, or all strings */
        int set = 0;
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
            set |= json_is_number(x) ? T_NUMBER : json_is_string(x) ? T_STRING : T_ANY;
        *items = set == T_NUMBER ? "number" : set == T_STRING ? "string" : NULL;
        return "list";
    }
    case JSON_OBJECT: return json_object_size(v) ? "object" : "any"; /* {} may be either */
    default: return "any";
    }
}

json_t *optdecl_from_settings(const json_t *settings, const json_t *decl)
{
    if (!json_is_object(settings) && !json_is_object(decl))
        return NULL;
    json_t *out = json_object();
    const char *k;
    json_t *v;
    if (json_is_object(settings))
        json_object_foreach((json_t *)settings, k, v) {
            const char *items;
            const char *t = type_of_default(v, &items);
            json_t *d = json_pack("{s:s, s:O}", "type", t, "default", v);
            if (items)
                json_object_set_new(d, "items", json_string(items));
            json_object_set_new(out, k, d);
        }
    if (json_is_object(decl))
        json_object_foreach((json_t *)decl, k, v) {
            json_t *base = json_object_get(out, k);
            if (json_is_object(base) && json_is_object(v)) {
                json_object_update(base, v); /* the declaration narrows what the default implies */
            } else if (json_is_object(base) && json_is_string(v)) {
                json_object_set(base, "description", v);
            } else {
                json_object_set(out, k, v);
            }
        }
    return out;
}
