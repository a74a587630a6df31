/* catalog.c — finds, loads and reloads the scripts (see catalog.h). */
#include "script/catalog.h"

#include <dirent.h>
#include <lauxlib.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/log.h"
#include "script/optdecl.h"
#include "base/util.h"

#define MAX_SCRIPTS 4096

/* the script folders under each root; evaluators are loaded, the others
 * (used by later stages of the loop) are compiled so errors show early */
static const char *const kinds[] = {"evaluators", "policies", "scripts", NULL};

typedef struct {
    char *name;   /* evaluators: the file name without .lua; else NULL */
    char *path;
    buf_t text;
    char *error;  /* reading failed, or the probe found it broken */
    bool probed;  /* loaded (or compiled) in a probe VM off the loop */
} scanned;

struct catalog_scan {
    scanned *files;
    size_t n;
};

typedef struct {
    char *name;
    loaded_evaluator *current;
} slot;

struct catalog {
    script_vm *vm;
    char **dirs;
    slot *slots;
    size_t nslots;
    char **errors;
    size_t nerrors;
    catalog_stats stats;
    eval_stats *evstats; /* by evaluator name, kept over reloads and removals */
    bool applying;       /* a reload's loads are running */
};

static void free_list(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

void catalog_free_list(char **list)
{
    if (!list)
        return;
    for (char **p = list; *p; p++)
        free(*p);
    free(list);
}

catalog *catalog_new(script_vm *vm, const char *const *dirs)
{
    catalog *cat = xcalloc(1, sizeof *cat);
    cat->vm = vm;
    size_t n = 0;
    while (dirs && dirs[n])
        n++;
    cat->dirs = xcalloc(n + 1, sizeof *cat->dirs);
    for (size_t i = 0; i < n; i++)
        cat->dirs[i] = xstrdup(dirs[i]);
    return cat;
}

script_vm *catalog_vm(const catalog *cat)
{
    return cat->vm;
}

const char *const *catalog_dirs(const catalog *cat)
{
    return (const char *const *)cat->dirs;
}

static void release(script_vm *vm, loaded_evaluator *le)
{
    if (--le->refs > 0)
        return;
    evaluator_free(vm, &le->ev);
    free(le);
}

void catalog_free(catalog *cat)
{
    for (size_t i = 0; i < cat->nslots; i++) {
        release(cat->vm, cat->slots[i].current);
        free(cat->slots[i].name);
    }
    free(cat->slots);
    while (cat->evstats) {
        eval_stats *st = cat->evstats;
        cat->evstats = st->next;
        free(st->name);
        free(st);
    }
    free_list(cat->errors, cat->nerrors);
    catalog_free_list(cat->dirs);
    free(cat);
}

static eval_stats *stats_for(catalog *cat, const char *name)
{
    eval_stats **pp = &cat->evstats;
    for (; *pp; pp = &(*pp)->next)
        if (!strcmp((*pp)->name, name))
            return *pp;
    *pp = xcalloc(1, sizeof **pp);
    (*pp)->name = xstrdup(name);
    return *pp;
}

void catalog_metrics(const catalog *cat, buf_t *b)
{
    static const metrics_counter counters[] = {
        {"ratchet_evaluator_runs_total", "Evaluator invocations (online and in runs).", offsetof(eval_stats, runs)},
        {"ratchet_evaluator_failures_total", "Invocations whose verdict was fail.", offsetof(eval_stats, failures)},
        {"ratchet_evaluator_errors_total", "Invocations that gave no verdict: a script error, a bad answer, or killed.",
         offsetof(eval_stats, errors)},
        {"ratchet_evaluator_killed_total", "Invocations stopped for running out of time or memory.",
         offsetof(eval_stats, killed)},
    };
    for (size_t i = 0; i < sizeof counters / sizeof counters[0]; i++) {
        metrics_family(b, counters[i].name, "counter", counters[i].help);
        for (const eval_stats *st = cat->evstats; st; st = st->next)
            metrics_sample(b, counters[i].name, metrics_field(st, counters[i].off),
                           "evaluator", st->name, NULL);
    }
    metrics_family(b, "ratchet_evaluator_duration_seconds", "histogram",
                   "Time from an evaluator's invocation to its verdict, waits for its turn included.");
    for (const eval_stats *st = cat->evstats; st; st = st->next)
        metrics_histogram(b, "ratchet_evaluator_duration_seconds", &st->seconds, "evaluator", st->name, NULL);
    metrics_one(b, "ratchet_script_reloads_total", "counter",
                "Reloads of the scripts (start-up, file changes, SIGHUP).", (double)cat->stats.reloads);
    metrics_one(b, "ratchet_script_reload_errors_total", "counter",
                "Script files that failed to load in a reload (the previous version kept running).",
                (double)cat->stats.reload_errors);
    metrics_one(b, "ratchet_script_errors", "gauge", "Script files whose last load failed.", (double)cat->nerrors);
}

/* ---- scanning (no VM, any thread) ---- */

static bool is_lua_name(const char *f, size_t *stem)
{
    size_t n = strlen(f);
    if (n < 5 || strcmp(f + n - 4, ".lua") != 0 || f[0] == '.')
        return false;
    *stem = n - 4;
    return true;
}

/* Policies and meta-prompt templates are tables of functions called by name. */
static bool table_script(const char *name)
{
    return !strncmp(name, "policies/", 9) || !strncmp(name, "metaprompts/", 12);
}

static bool scan_has(const catalog_scan *scan, const char *name)
{
    for (size_t i = 0; i < scan->n; i++)
        if (scan->files[i].name && strcmp(scan->files[i].name, name) == 0)
            return true;
    return false;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void scan_add(catalog_scan *scan, const char *name, const char *path)
{
    if (scan->n >= MAX_SCRIPTS)
        return;
    scan->files = xrealloc(scan->files, (scan->n + 1) * sizeof *scan->files);
    scanned *f = &scan->files[scan->n++];
    memset(f, 0, sizeof *f);
    f->name = name ? xstrdup(name) : NULL;
    f->path = xstrdup(path);
    buf_init(&f->text);
    char err[512];
    if (script_read_text(path, &f->text, err, sizeof err) != 0)
        f->error = xstrdup(err);
}

/* Adds the .lua files of dir (and, for modules, of its sub-folders one level
 * down), sorted so the order is stable. */
static void scan_dir(catalog_scan *scan, const char *dir, const char *kind, int depth)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    char **names = NULL;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < MAX_SCRIPTS) {
        if (de->d_name[0] == '.')
            continue;
        names = xrealloc(names, (n + 1) * sizeof *names);
        names[n++] = xstrdup(de->d_name);
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct stat st;
        if (stat(path, &st) != 0)
            continue;
        size_t stem;
        if (S_ISDIR(st.st_mode)) {
            if (depth == 0 && kind && !strcmp(kind, "scripts") && !strcmp(names[i], "metaprompts"))
                scan_dir(scan, path, "metaprompts", 0); /* meta-prompt templates, as metaprompts/NAME */
            else if (depth == 0)
                scan_dir(scan, path, NULL, 1); /* modules (lib/), compiled only */
        } else if (S_ISREG(st.st_mode) && is_lua_name(names[i], &stem)) {
            if (kind && depth == 0 && strcmp(kind, "scripts") != 0) {
                /* evaluators by name; policies as policies/NAME, templates as metaprompts/NAME */
                char name[256];
                snprintf(name, sizeof name, "%s%s%.*s", strcmp(kind, "evaluators") ? kind : "",
                         strcmp(kind, "evaluators") ? "/" : "", (int)(stem < 200 ? stem : 200), names[i]);
                if (!scan_has(scan, name)) /* an earlier root overrides by name */
                    scan_add(scan, name, path);
            } else {
                scan_add(scan, NULL, path);
            }
        }
    }
    free_list(names, n);
}

catalog_scan *catalog_scan_run(const char *const *dirs)
{
    catalog_scan *scan = xcalloc(1, sizeof *scan);
    for (const char *const *k = kinds; *k; k++)
        for (const char *const *d = dirs; d && *d; d++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", *d, *k);
            scan_dir(scan, path, *k, 0);
        }
    return scan;
}

void catalog_scan_free(catalog_scan *scan)
{
    if (!scan)
        return;
    for (size_t i = 0; i < scan->n; i++) {
        free(scan->files[i].name);
        free(scan->files[i].path);
        free(scan->files[i].error);
        buf_free(&scan->files[i].text);
    }
    free(scan->files);
    free(scan);
}

/* ---- applying (loop thread) ---- */

static slot *find_slot(const catalog *cat, const char *name)
{
    for (size_t i = 0; i < cat->nslots; i++)
        if (strcmp(cat->slots[i].name, name) == 0)
            return &cat->slots[i];
    return NULL;
}

static void add_error(catalog *cat, const char *msg, bool log_errors)
{
    cat->errors = xrealloc(cat->errors, (cat->nerrors + 1) * sizeof *cat->errors);
    cat->errors[cat->nerrors++] = xstrdup(msg);
    if (log_errors)
        log_error("scripts", "%s", msg);
}

/* ---- contracts of policies and templates ---- */

static const struct {
    const char *kind, *fn, *signature;
} policy_kinds[] = {
    {"trigger", "should_optimize", "should_optimize(stats, state)"},
    {"mining", "select", "select(failures, options)"},
    {"accept", "decide", "decide(report)"},
    {"rollout", "next", "next(state, canary, production)"},
    {"search", "select_parent", "select_parent(pool, options)"},
};

/* a search policy's other functions (docs/loop.md, "The gepa strategy") */
static const struct {
    const char *fn, *signature;
} search_fns[] = {
    {"accept_child", "accept_child(child, parents, options)"},
    {"pick_merge", "pick_merge(pool, options)"},
    {"final", "final(pool, options)"},
};

const char *catalog_policy_function(const char *kind)
{
    for (size_t i = 0; i < sizeof policy_kinds / sizeof policy_kinds[0]; i++)
        if (!strcmp(policy_kinds[i].kind, kind))
            return policy_kinds[i].signature;
    return NULL;
}

/* The table at the top of L must have function fn; else err says so, with a
 * near name it does export (and that function's line) when there is one. */
static int need_function(lua_State *L, const char *path, const char *what, const char *fn, const char *signature,
                         char *err, size_t errlen)
{
    int t = lua_gettop(L);
    lua_pushstring(L, fn);
    int type = lua_rawget(L, t);
    lua_pop(L, 1);
    if (type == LUA_TFUNCTION)
        return 0;
    /* the names it exports, for "did you mean" */
    const char *names[64];
    int lines[64], n = 0;
    lua_pushnil(L);
    while (lua_next(L, t) && n < 64) {
        if (lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TFUNCTION) {
            lua_Debug ar;
            lua_pushvalue(L, -1);
            lua_getinfo(L, ">S", &ar);
            names[n] = lua_tostring(L, -2); /* the key stays on the stack while next() walks */
            lines[n++] = ar.linedefined;
        }
        lua_pop(L, 1);
    }
    const char *near = closest_name(fn, names, (size_t)n);
    if (near) {
        int line = 0;
        for (int i = 0; i < n; i++)
            if (names[i] == near)
                line = lines[i];
        snprintf(err, errlen, "%s:%d: %s must export %s; '%s' (defined here) looks like a misspelling of '%s'", path,
                 line, what, signature, near, fn);
    } else if (type != LUA_TNIL) {
        snprintf(err, errlen, "%s: %s must export %s as a function (it is a %s)", path, what, signature,
                 lua_typename(L, type));
    } else {
        snprintf(err, errlen, "%s: %s must export %s", path, what, signature);
    }
    return -1;
}

int catalog_check_contract(const catalog *cat, const loaded_evaluator *le, const char *kind, char *err, size_t errlen)
{
    lua_State *L = script_vm_state(cat->vm);
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, le->ev.ref);
    int rc = 0;
    char what[80];
    if (!strcmp(kind, "template")) {
        rc = need_function(L, le->ev.path, "a meta-prompt template", "build", "build(ctx)", err, errlen);
        if (rc == 0)
            rc = need_function(L, le->ev.path, "a meta-prompt template", "parse", "parse(text, ctx)", err, errlen);
        if (rc == 0) {
            lua_pushliteral(L, "editable");
            int et = lua_rawget(L, -2);
            bool ok = et == LUA_TNIL;
            if (et == LUA_TTABLE) {
                lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
                ok = n > 0;
                for (lua_Integer i = 1; ok && i <= n; i++) {
                    ok = lua_rawgeti(L, -1, i) == LUA_TSTRING;
                    lua_pop(L, 1);
                }
            }
            if (!ok) {
                snprintf(err, errlen, "%s: a meta-prompt template's editable must be a list of the roles candidates "
                                      "may change, like { \"system\" }", le->ev.path);
                rc = -1;
            }
            lua_pop(L, 1);
        }
        /* a search template (search = "gepa"): the engine also asks it for merges */
        if (rc == 0) {
            lua_pushliteral(L, "search");
            int st = lua_rawget(L, -2);
            if (st == LUA_TSTRING && !strcmp(lua_tostring(L, -1), "gepa")) {
                lua_pop(L, 1);
                rc = need_function(L, le->ev.path, "a search template (search = \"gepa\")", "merge", "merge(ctx)", err,
                                   errlen);
            } else if (st != LUA_TNIL) {
                snprintf(err, errlen, "%s: a meta-prompt template's search must be \"gepa\" (or absent: one build and "
                                      "parse per cycle)", le->ev.path);
                rc = -1;
            }
        }
    } else {
        const char *sig = catalog_policy_function(kind);
        snprintf(what, sizeof what, "a%s %s policy", strchr("aeiou", kind[0]) ? "n" : "", kind);
        const char *fn = NULL;
        for (size_t i = 0; i < sizeof policy_kinds / sizeof policy_kinds[0]; i++)
            if (!strcmp(policy_kinds[i].kind, kind))
                fn = policy_kinds[i].fn;
        if (sig && fn)
            rc = need_function(L, le->ev.path, what, fn, sig, err, errlen);
        for (size_t i = 0; rc == 0 && !strcmp(kind, "search") && i < sizeof search_fns / sizeof search_fns[0]; i++)
            rc = need_function(L, le->ev.path, what, search_fns[i].fn, search_fns[i].signature, err, errlen);
    }
    lua_settop(L, top);
    return rc;
}

/* A policy's settings and options declaration must be plain data and well
 * formed; the kinds named by the shipped file names must meet their
 * contract; a template must be a template. */
static int check_table_script(catalog *cat, const loaded_evaluator *le, const char *sname, char *err, size_t errlen)
{
    if (!strncmp(sname, "metaprompts/", 12))
        return catalog_check_contract(cat, le, "template", err, errlen);
    const char *name = sname + 9;
    if (catalog_policy_function(name) && catalog_check_contract(cat, le, name, err, errlen) != 0)
        return -1;
    lua_State *L = script_vm_state(cat->vm);
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, le->ev.ref);
    lua_pushliteral(L, "settings");
    int st = lua_rawget(L, -2);
    lua_pushliteral(L, "options");
    int ot = lua_rawget(L, -3);
    lua_settop(L, top);
    if (st != LUA_TNIL && st != LUA_TTABLE) {
        snprintf(err, errlen, "%s: a policy's settings must be a table of named defaults", le->ev.path);
        return -1;
    }
    if (ot != LUA_TNIL && ot != LUA_TTABLE) {
        snprintf(err, errlen, "%s: a policy's options must be a table declaring its options", le->ev.path);
        return -1;
    }
    char *stext = st == LUA_TTABLE ? script_field_json(cat->vm, le->ev.ref, "settings") : NULL;
    char *otext = ot == LUA_TTABLE ? script_field_json(cat->vm, le->ev.ref, "options") : NULL;
    int rc = 0;
    if ((st == LUA_TTABLE && !stext) || (ot == LUA_TTABLE && !otext)) {
        snprintf(err, errlen, "%s: a policy's %s must be plain data (tables, strings, numbers, booleans)", le->ev.path,
                 !stext && st == LUA_TTABLE ? "settings" : "options");
        rc = -1;
    } else if (stext || otext) {
        json_t *s = stext ? json_loads(stext, 0, NULL) : NULL, *o = otext ? json_loads(otext, 0, NULL) : NULL;
        json_t *decl = optdecl_from_settings(s, o);
        char why[700];
        if (o && !json_is_object(o) && !(json_is_array(o) && json_array_size(o) == 0)) {
            snprintf(err, errlen, "%s: a policy's options must be a table declaring its options", le->ev.path);
            rc = -1;
        } else if (decl && optdecl_check(decl, why, sizeof why) != 0) {
            snprintf(err, errlen, "%s: %s", le->ev.path, why);
            rc = -1;
        }
        json_decref(s);
        json_decref(o);
        json_decref(decl);
    }
    free(stext);
    free(otext);
    return rc;
}

/* One reload: the scan, and what each of its files' load gave. */
typedef struct {
    int ref;           /* the table the file returned, or LUA_NOREF */
    char version[17];
    char *error;       /* "file:line: message" */
} loaded_file;

struct apply {
    catalog *cat;
    catalog_scan *scan;
    loaded_file *files;
    size_t pending;    /* loads not finished */
    bool log_errors;
    bool started;      /* every load is started: the last to finish finishes the reload */
    catalog_hooks hooks;
    bool has_hooks;
    catalog_applied cb;
    void *ud;
};

static void apply_begin(catalog *cat, catalog_scan *scan)
{
    cat->applying = true;
    /* every file loads with fresh module instances, from the texts the
     * scan read (require reads nothing from the disk on the loop) */
    script_forget_modules(cat->vm);
    for (size_t i = 0; i < scan->n; i++)
        if (!scan->files[i].error)
            script_set_source(cat->vm, scan->files[i].path, scan->files[i].text.data ? scan->files[i].text.data : "",
                              scan->files[i].text.len);
}

/* Puts each file that loaded in place of its running version, in file
 * order; a file that failed keeps what runs. Then unloads evaluators whose
 * file is gone. Frees the scan. */
static int apply_finish(catalog *cat, catalog_scan *scan, loaded_file *lf, bool log_errors,
                        const catalog_hooks *hooks)
{
    /* the last reload's errors stay shown until this one's replace them */
    free_list(cat->errors, cat->nerrors);
    cat->errors = NULL;
    cat->nerrors = 0;
    bool *seen = cat->nslots ? xcalloc(cat->nslots, sizeof *seen) : NULL;
    size_t old_slots = cat->nslots;
    char err[1024];
    for (size_t i = 0; i < scan->n; i++) {
        scanned *f = &scan->files[i];
        if (f->error)
            add_error(cat, f->error, log_errors);
        else if (lf[i].error)
            add_error(cat, lf[i].error, log_errors);
        if (!f->name)
            continue;
        slot *sl = find_slot(cat, f->name);
        if (sl && sl < cat->slots + old_slots)
            seen[sl - cat->slots] = true;
        if (f->error || lf[i].ref == LUA_NOREF)
            continue; /* keep what runs now */
        loaded_evaluator *le = xcalloc(1, sizeof *le);
        le->refs = 1;
        le->cat = cat;
        if (table_script(f->name)) {
            /* a policy or a template: a table of functions the engine calls by name */
            le->ev.ref = lf[i].ref;
            memcpy(le->ev.version, lf[i].version, sizeof le->ev.version);
            le->ev.name = xstrdup(f->name);
            le->ev.description = xstrdup("");
            le->ev.path = xstrdup(f->path);
            if (check_table_script(cat, le, f->name, err, sizeof err) != 0) {
                add_error(cat, err, log_errors);
                evaluator_free(cat->vm, &le->ev);
                free(le);
                continue;
            }
        } else if (evaluator_from_ref(cat->vm, lf[i].ref, f->path, lf[i].version, &le->ev, err, sizeof err) != 0) {
            add_error(cat, err, log_errors);
            free(le);
            continue;
        }
        if (!table_script(f->name) && strcmp(le->ev.name, f->name) != 0) {
            snprintf(err, sizeof err, "%s: the evaluator is named '%s' but its file is %s.lua; name the file after it",
                     f->path, le->ev.name, f->name);
            add_error(cat, err, log_errors);
            evaluator_free(cat->vm, &le->ev);
            free(le);
            continue;
        }
        if (!table_script(f->name))
            le->ev.stats = stats_for(cat, f->name);
        char why[900];
        /* a file that did not change needs no check: what fails then is the config's doing, and says so */
        bool changed = sl && (strcmp(sl->current->ev.version, le->ev.version) || strcmp(sl->current->ev.path, le->ev.path));
        if (changed && hooks && hooks->accept && hooks->accept(hooks->ud, cat, f->name, le, why, sizeof why) != 0) {
            /* it loads, but the configuration that runs cannot use it */
            snprintf(err, sizeof err, "%s: this version is not used, version %s keeps running: %s", f->path,
                     sl->current->ev.version, why);
            add_error(cat, err, log_errors);
            evaluator_free(cat->vm, &le->ev);
            free(le);
            continue;
        }
        if (sl) {
            if (strcmp(sl->current->ev.version, le->ev.version) != 0 || strcmp(sl->current->ev.path, le->ev.path))
                log_info("scripts", "%s %s: version %s (%s)", table_script(f->name) ? "script" : "evaluator",
                         f->name, le->ev.version, f->path);
            release(cat->vm, sl->current);
            sl->current = le;
        } else {
            cat->slots = xrealloc(cat->slots, (cat->nslots + 1) * sizeof *cat->slots);
            /* the realloc may move slots; seen[] is indexed, so it stays right */
            cat->slots[cat->nslots].name = xstrdup(f->name);
            cat->slots[cat->nslots].current = le;
            cat->nslots++;
        }
    }
    /* scripts whose file is gone are unloaded, unless the configuration uses
     * them: then the last version loaded keeps running, and it is an error
     * until the file is back or the configuration stops naming it */
    size_t w = 0;
    for (size_t i = 0; i < cat->nslots; i++) {
        if (i < old_slots && !seen[i] && hooks && hooks->in_use && hooks->in_use(hooks->ud, cat->slots[i].name)) {
            const evaluator *ev = &cat->slots[i].current->ev;
            snprintf(err, sizeof err, "%s: the file is gone, but the configuration uses %s %s: its last version %s "
                                      "keeps running until the file is back or the configuration stops naming it",
                     ev->path, table_script(cat->slots[i].name) ? "script" : "evaluator", cat->slots[i].name,
                     ev->version);
            add_error(cat, err, log_errors);
        } else if (i < old_slots && !seen[i]) {
            log_info("scripts", "%s %s: its file is gone; unloaded", table_script(cat->slots[i].name) ? "script"
                                                                                                 : "evaluator",
                     cat->slots[i].name);
            release(cat->vm, cat->slots[i].current);
            free(cat->slots[i].name);
            continue;
        }
        cat->slots[w++] = cat->slots[i];
    }
    cat->nslots = w;
    free(seen);
    for (size_t i = 0; i < scan->n; i++)
        free(lf[i].error);
    free(lf);
    catalog_scan_free(scan);
    /* old versions' memory goes back now, not at some later cycle; in
     * steps, so a big heap does not stall the loop */
    script_collect(cat->vm);
    cat->applying = false;
    cat->stats.reloads++;
    cat->stats.reload_errors += cat->nerrors;
    cat->stats.last_reload_ms = now_ms();
    cat->stats.evaluators = 0;
    for (size_t i = 0; i < cat->nslots; i++)
        cat->stats.evaluators += !table_script(cat->slots[i].name);
    return (int)cat->nerrors;
}

int catalog_apply(catalog *cat, catalog_scan *scan, bool log_errors, const catalog_hooks *hooks)
{
    apply_begin(cat, scan);
    loaded_file *lf = xcalloc(scan->n ? scan->n : 1, sizeof *lf);
    char err[1024];
    for (size_t i = 0; i < scan->n; i++) {
        scanned *f = &scan->files[i];
        lf[i].ref = LUA_NOREF;
        if (f->error)
            continue;
        const char *text = f->text.data ? f->text.data : "";
        if (!f->name) { /* a module: compiled, so its errors show now */
            if (!f->probed && script_compile_text(cat->vm, f->path, text, f->text.len, err, sizeof err) != 0)
                lf[i].error = xstrdup(err);
        } else if (script_load_text(cat->vm, f->path, text, f->text.len, &lf[i].ref, lf[i].version, err,
                                    sizeof err) != 0) {
            lf[i].error = xstrdup(err);
        }
    }
    return apply_finish(cat, scan, lf, log_errors, hooks);
}

typedef struct {
    struct apply *a;
    size_t index;
} load_job;

static void apply_done_if_last(struct apply *a)
{
    if (!a->started || a->pending > 0)
        return;
    int failed = apply_finish(a->cat, a->scan, a->files, a->log_errors, a->has_hooks ? &a->hooks : NULL);
    catalog_applied cb = a->cb;
    void *ud = a->ud;
    catalog *cat = a->cat;
    free(a);
    if (cb)
        cb(cat, failed, ud);
}

static void on_file_loaded(void *ud, int ref, const char *err)
{
    load_job *j = ud;
    struct apply *a = j->a;
    a->files[j->index].ref = ref;
    if (err)
        a->files[j->index].error = xstrdup(err);
    free(j);
    a->pending--;
    apply_done_if_last(a);
}

void catalog_apply_async(catalog *cat, catalog_scan *scan, bool log_errors, const catalog_hooks *hooks,
                         catalog_applied cb, void *ud)
{
    apply_begin(cat, scan);
    struct apply *a = xcalloc(1, sizeof *a);
    if (hooks) {
        a->hooks = *hooks;
        a->has_hooks = true;
    }
    a->cat = cat;
    a->scan = scan;
    a->files = xcalloc(scan->n ? scan->n : 1, sizeof *a->files);
    a->log_errors = log_errors;
    a->cb = cb;
    a->ud = ud;
    for (size_t i = 0; i < scan->n; i++) {
        scanned *f = &scan->files[i];
        a->files[i].ref = LUA_NOREF;
        if (f->error || !f->name)
            continue; /* modules were compiled by the probe, off the loop */
        load_job *j = xcalloc(1, sizeof *j);
        j->a = a;
        j->index = i;
        a->pending++;
        script_load_async(cat->vm, f->path, f->text.data ? f->text.data : "", f->text.len, a->files[i].version,
                          on_file_loaded, j);
    }
    a->started = true;
    apply_done_if_last(a);
}

bool catalog_applying(const catalog *cat)
{
    return cat->applying;
}

/* ---- the probe (any thread; the thread pool on a reload) ---- */

void catalog_scan_probe(catalog_scan *scan, const script_limits *lim, const char *const *require_dirs)
{
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0)
        return;
    script_vm *vm = script_vm_new(&loop, lim, require_dirs);
    for (size_t i = 0; i < scan->n; i++)
        if (!scan->files[i].error)
            script_set_source(vm, scan->files[i].path, scan->files[i].text.data ? scan->files[i].text.data : "",
                              scan->files[i].text.len);
    char err[1024];
    for (size_t i = 0; i < scan->n; i++) {
        scanned *f = &scan->files[i];
        if (f->error)
            continue;
        const char *text = f->text.data ? f->text.data : "";
        f->probed = true;
        if (!f->name) {
            if (script_compile_text(vm, f->path, text, f->text.len, err, sizeof err) != 0)
                f->error = xstrdup(err);
        } else if (table_script(f->name)) {
            int ref;
            if (script_load_text(vm, f->path, text, f->text.len, &ref, NULL, err, sizeof err) != 0)
                f->error = xstrdup(err);
            else
                script_unref(vm, ref);
        } else {
            evaluator ev;
            if (evaluator_load_text(vm, f->path, text, f->text.len, &ev, err, sizeof err) != 0)
                f->error = xstrdup(err);
            else
                evaluator_free(vm, &ev);
        }
    }
    script_vm_free(vm);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
}

int catalog_reload(catalog *cat, bool log_errors)
{
    return catalog_apply(cat, catalog_scan_run((const char *const *)cat->dirs), log_errors, NULL);
}

char **catalog_names(const catalog *cat, const char *prefix)
{
    size_t plen = strlen(prefix), n = 0;
    char **out = xcalloc(cat->nslots + 1, sizeof *out);
    for (size_t i = 0; i < cat->nslots; i++) {
        const char *name = cat->slots[i].name;
        if (plen ? strncmp(name, prefix, plen) == 0 : !table_script(name))
            out[n++] = xstrdup(name + plen);
    }
    qsort(out, n, sizeof *out, cmp_str);
    return out;
}

size_t catalog_errors(const catalog *cat, const char *const **errors)
{
    *errors = (const char *const *)cat->errors;
    return cat->nerrors;
}

loaded_evaluator *catalog_get(catalog *cat, const char *name)
{
    slot *sl = find_slot(cat, name);
    if (!sl)
        return NULL;
    sl->current->refs++;
    return sl->current;
}

const loaded_evaluator *catalog_peek(const catalog *cat, const char *name)
{
    slot *sl = find_slot(cat, name);
    return sl ? sl->current : NULL;
}

void catalog_release(loaded_evaluator *le)
{
    release(le->cat->vm, le);
}

void catalog_get_stats(const catalog *cat, catalog_stats *st)
{
    *st = cat->stats;
}

json_t *catalog_status_json(const catalog *cat)
{
    json_t *evs = json_array(), *pols = json_array(), *tpls = json_array();
    for (size_t i = 0; i < cat->nslots; i++) {
        const evaluator *ev = &cat->slots[i].current->ev;
        bool policy = !strncmp(ev->name, "policies/", 9), tpl = !strncmp(ev->name, "metaprompts/", 12);
        json_array_append_new(policy ? pols : tpl ? tpls : evs,
                              json_pack("{s:s, s:s, s:s}", "name", ev->name + (policy ? 9 : tpl ? 12 : 0), "version",
                                        ev->version, "path", ev->path));
    }
    json_t *errs = json_array();
    for (size_t i = 0; i < cat->nerrors; i++)
        json_array_append_new(errs, json_string(cat->errors[i]));
    json_t *dirs = json_array();
    for (char **d = cat->dirs; *d; d++)
        json_array_append_new(dirs, json_string(*d));
    char when[32] = "";
    if (cat->stats.last_reload_ms)
        rfc3339_format(cat->stats.last_reload_ms, when);
    return json_pack("{s:o, s:o, s:o, s:o, s:o, s:I, s:I, s:s?, s:I}", "dirs", dirs, "evaluators", evs, "policies",
                     pols, "metaprompts", tpls, "errors", errs,
                     "reloads", (json_int_t)cat->stats.reloads, "reload_errors",
                     (json_int_t)cat->stats.reload_errors, "last_reload", when[0] ? when : NULL, "memory_bytes",
                     (json_int_t)script_vm_memory(cat->vm));
}

char **catalog_watch_dirs(const char *const *dirs)
{
    char **out = NULL;
    size_t n = 0;
    for (const char *const *d = dirs; *d; d++) {
        struct stat st;
        char path[4096];
        for (int k = -1; k < 3; k++) {
            if (k < 0)
                snprintf(path, sizeof path, "%s", *d);
            else
                snprintf(path, sizeof path, "%s/%s", *d, kinds[k]);
            if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
                continue;
            out = xrealloc(out, (n + 2) * sizeof *out);
            out[n++] = xstrdup(path);
            if (k < 0)
                continue;
            DIR *dd = opendir(path); /* one level of module folders (lib/) */
            struct dirent *de;
            while (dd && (de = readdir(dd))) {
                char sub[4400];
                if (de->d_name[0] == '.')
                    continue;
                snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
                if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode)) {
                    out = xrealloc(out, (n + 2) * sizeof *out);
                    out[n++] = xstrdup(sub);
                }
            }
            if (dd)
                closedir(dd);
        }
    }
    if (out)
        out[n] = NULL;
    return out;
}
