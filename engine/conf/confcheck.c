/* confcheck.c — a configuration checked against its scripts (see
 * confcheck.h). */
#include "conf/confcheck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "script/optdecl.h"
#include "base/util.h"

static const char *const policy_kinds[] = {"trigger", "mining", "accept", "rollout", "search", NULL};

typedef struct {
    confcheck_report report;
    void *ud;
    const char *prefix; /* "file:line: prompt 'p': what: " */
    int n;
} sink;

static void sink_say(const char *problem, void *ud)
{
    sink *s = ud;
    char msg[1600];
    snprintf(msg, sizeof msg, "%s%s", s->prefix, problem);
    s->report(msg, s->ud);
    s->n++;
}

static void where(char *out, size_t n, const config *cfg, int line, const char *prompt, const char *what)
{
    snprintf(out, n, "%s:%d: prompt '%s': %s: ", cfg->path ? cfg->path : "(defaults)", line, prompt, what);
}

/* "the known ones are a, b; did you mean 'x'?" for a name not found */
static void unknown_name(sink *s, const char *kind, const char *name, char **known, const char *looked)
{
    buf_t list;
    buf_init(&list);
    size_t n = 0;
    for (char **k = known; k && *k; k++, n++)
        buf_printf(&list, "%s%s", n ? ", " : "", *k);
    const char *near = closest_name(name, (const char *const *)known, n);
    char msg[1200];
    snprintf(msg, sizeof msg, "no %s '%s' is loaded%s%s%s (looked for %s; loaded: %s)", kind, name,
             near ? "; did you mean '" : "",
             near ? near : "", near ? "'?" : "", looked, list.data ? list.data : "none");
    sink_say(msg, s);
    buf_free(&list);
}

static char *folders(const catalog *cat, const char *sub, const char *file)
{
    buf_t b;
    buf_init(&b);
    buf_printf(&b, "%s.lua in ", file);
    for (const char *const *d = catalog_dirs(cat); *d; d++)
        buf_printf(&b, "%s%s/%s", d == catalog_dirs(cat) ? "" : ", ", *d, sub);
    return buf_steal(&b);
}

/* ---- evaluators ---- */

static void check_attachment(const config *cfg, const config_prompt *p, const config_attachment *a, catalog *cat,
                             const loaded_evaluator *le, sink *s)
{
    char what[200], prefix[600];
    if (strcmp(a->name, a->evaluator))
        snprintf(what, sizeof what, "evaluator '%s' (%s)", a->name, a->evaluator);
    else
        snprintf(what, sizeof what, "evaluator '%s'", a->evaluator);
    where(prefix, sizeof prefix, cfg, a->line, p->name, what);
    sink sub = {s->report, s->ud, prefix, 0};
    evaluator_check_options(catalog_vm(cat), &le->ev, a->options_json, sink_say, &sub);
    if (sub.n == 0 && le->ev.options) {
        /* an option naming a provider names one the configuration declares */
        json_t *opts = a->options_json ? json_loads(a->options_json, 0, NULL) : NULL;
        const char **names = xcalloc(cfg->nproviders + 1, sizeof *names);
        for (size_t i = 0; i < cfg->nproviders; i++)
            names[i] = cfg->providers[i].name;
        optdecl_validate_names(le->ev.options, opts, "provider", names, cfg->nproviders, sink_say, &sub);
        free(names);
        json_decref(opts);
    }
    s->n += sub.n;
}

static void check_evaluators(const config *cfg, const config_prompt *p, catalog *cat, const char *slot,
                             const loaded_evaluator *with, sink *s)
{
    for (size_t k = 0; k < p->nevaluators; k++) {
        const config_attachment *a = &p->evaluators[k];
        if (slot && strcmp(slot, a->evaluator))
            continue;
        const loaded_evaluator *le = with ? with : catalog_peek(cat, a->evaluator);
        if (le) {
            check_attachment(cfg, p, a, cat, le, s);
            continue;
        }
        char prefix[400];
        snprintf(prefix, sizeof prefix, "%s:%d: prompt '%s': ", cfg->path ? cfg->path : "(defaults)", a->line,
                 p->name);
        sink sub = {s->report, s->ud, prefix, 0};
        char **known = catalog_names(cat, "");
        char *looked = folders(cat, "evaluators", a->evaluator);
        unknown_name(&sub, "evaluator", a->evaluator, known, looked);
        free(looked);
        catalog_free_list(known);
        s->n += sub.n;
    }
}

/* ---- the loop ---- */

int confcheck_policy_options(catalog *cat, const loaded_evaluator *le, const json_t *opts, confcheck_report report,
                             void *ud)
{
    char *stext = script_field_json(catalog_vm(cat), le->ev.ref, "settings");
    char *otext = script_field_json(catalog_vm(cat), le->ev.ref, "options");
    json_t *st = stext ? json_loads(stext, 0, NULL) : NULL, *ot = otext ? json_loads(otext, 0, NULL) : NULL;
    free(stext);
    free(otext);
    json_t *decl = optdecl_from_settings(st, ot);
    json_decref(st);
    json_decref(ot);
    int n = 0;
    char err[700];
    if (!decl) {
        /* no settings, no declaration: its options are not checked */
    } else if (optdecl_check(decl, err, sizeof err) != 0) {
        report(err, ud); /* the catalog refuses such a file; a guard all the same */
        n = 1;
    } else {
        n = optdecl_validate(decl, json_object_size(opts) ? opts : NULL, report, ud);
    }
    json_decref(decl);
    return n;
}

/* the line of a loop key, else of the loop table, else of the prompt */
static int key_line(const config *cfg, const config_prompt *p, const char *key)
{
    int n = config_key_line(cfg, p, key);
    return n != p->line ? n : config_key_line(cfg, p, "loop");
}

static const char *loop_name(const json_t *loop, const char *key, const char *dflt)
{
    const char *v = json_string_value(json_object_get(loop, key));
    return v ? v : dflt;
}

static void check_loop(const config *cfg, const config_prompt *p, catalog *cat, const char *slot,
                       const loaded_evaluator *with, sink *s)
{
    if (!p->loop_json)
        return;
    json_t *loop = json_loads(p->loop_json, 0, NULL);
    if (!loop)
        return;
    char prefix[600], name[200], what[200];
    /* the template */
    const char *tpl = loop_name(loop, "template", "plain");
    snprintf(name, sizeof name, "metaprompts/%s", tpl);
    if (!slot || !strcmp(slot, name)) {
        const loaded_evaluator *le = slot ? with : catalog_peek(cat, name);
        where(prefix, sizeof prefix, cfg, key_line(cfg, p, "template"), p->name, "loop.template");
        sink sub = {s->report, s->ud, prefix, 0};
        char err[900];
        if (!le) {
            char **known = catalog_names(cat, "metaprompts/");
            char *looked = folders(cat, "scripts/metaprompts", tpl);
            unknown_name(&sub, "template", tpl, known, looked);
            free(looked);
            catalog_free_list(known);
        } else if (catalog_check_contract(cat, le, "template", err, sizeof err) != 0) {
            sink_say(err, &sub);
        }
        s->n += sub.n;
    }
    /* the policies and their options */
    for (const char *const *k = policy_kinds; *k; k++) {
        const char *pol = loop_name(loop, *k, *k);
        snprintf(name, sizeof name, "policies/%s", pol);
        if (slot && strcmp(slot, name))
            continue;
        const loaded_evaluator *le = slot ? with : catalog_peek(cat, name);
        snprintf(what, sizeof what, "loop.%s", *k);
        where(prefix, sizeof prefix, cfg, key_line(cfg, p, *k), p->name, what);
        sink sub = {s->report, s->ud, prefix, 0};
        char err[900];
        if (!le) {
            char **known = catalog_names(cat, "policies/");
            char *looked = folders(cat, "policies", pol);
            unknown_name(&sub, "policy", pol, known, looked);
            free(looked);
            catalog_free_list(known);
        } else if (catalog_check_contract(cat, le, *k, err, sizeof err) != 0) {
            sink_say(err, &sub);
        } else {
            char key[40];
            snprintf(key, sizeof key, "%s_options", *k);
            snprintf(what, sizeof what, "loop.%s (%s)", key, le->ev.path);
            where(prefix, sizeof prefix, cfg, key_line(cfg, p, key), p->name, what);
            sub.prefix = prefix;
            confcheck_policy_options(cat, le, json_object_get(loop, key), sink_say, &sub);
        }
        s->n += sub.n;
    }
    /* the optimizer's provider */
    const char *prov = json_string_value(json_object_get(json_object_get(loop, "optimizer"), "provider"));
    if (!slot && prov && !config_find_provider(cfg, prov)) {
        where(prefix, sizeof prefix, cfg, key_line(cfg, p, "optimizer"), p->name, "loop.optimizer.provider");
        sink sub = {s->report, s->ud, prefix, 0};
        char **known = xcalloc(cfg->nproviders + 1, sizeof *known);
        for (size_t i = 0; i < cfg->nproviders; i++)
            known[i] = cfg->providers[i].name;
        buf_t list;
        buf_init(&list);
        for (size_t i = 0; i < cfg->nproviders; i++)
            buf_printf(&list, "%s%s", i ? ", " : "", known[i]);
        const char *near = closest_name(prov, (const char *const *)known, cfg->nproviders);
        char msg[900];
        snprintf(msg, sizeof msg, "no provider '%s'%s%s%s (configured: %s; declare it with provider \"%s\" { ... })",
                 prov, near ? "; did you mean '" : "", near ? near : "", near ? "'?" : "",
                 list.data ? list.data : "none", prov);
        sink_say(msg, &sub);
        buf_free(&list);
        free(known);
        s->n += sub.n;
    }
    json_decref(loop);
}

/* ---- entry points ---- */

int confcheck_config(const config *cfg, catalog *cat, confcheck_report report, void *ud)
{
    sink s = {report, ud, "", 0};
    for (size_t i = 0; i < cfg->nprompts; i++) {
        check_evaluators(cfg, &cfg->prompts[i], cat, NULL, NULL, &s);
        check_loop(cfg, &cfg->prompts[i], cat, NULL, NULL, &s);
    }
    return s.n;
}

int confcheck_script(const config *cfg, catalog *cat, const char *slot, const loaded_evaluator *le,
                     confcheck_report report, void *ud)
{
    sink s = {report, ud, "", 0};
    for (size_t i = 0; i < cfg->nprompts; i++) {
        if (!strncmp(slot, "policies/", 9) || !strncmp(slot, "metaprompts/", 12))
            check_loop(cfg, &cfg->prompts[i], cat, slot, le, &s);
        else
            check_evaluators(cfg, &cfg->prompts[i], cat, slot, le, &s);
    }
    return s.n;
}

bool confcheck_uses(const config *cfg, const char *slot)
{
    for (size_t i = 0; i < cfg->nprompts; i++) {
        const config_prompt *p = &cfg->prompts[i];
        for (size_t k = 0; k < p->nevaluators; k++)
            if (!strcmp(p->evaluators[k].evaluator, slot))
                return true;
        if (!p->loop_json)
            continue;
        json_t *loop = json_loads(p->loop_json, 0, NULL);
        bool used = false;
        char name[200];
        snprintf(name, sizeof name, "metaprompts/%s", loop_name(loop, "template", "plain"));
        used = !strcmp(name, slot);
        for (const char *const *k = policy_kinds; *k && !used; k++) {
            snprintf(name, sizeof name, "policies/%s", loop_name(loop, *k, *k));
            used = !strcmp(name, slot);
        }
        json_decref(loop);
        if (used)
            return true;
    }
    return false;
}
