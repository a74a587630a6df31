/* cli_init.c — `ratchet init DIR`: a project to start from, copied from the
 * shipped skeleton (SHARE/skeleton: a config, a custom evaluator and a policy
 * override with their busted specs, a dataset, two prompt versions), plus a
 * .busted file pointing busted at this installation's spec helper
 * (SHARE/lua/ratchet/testing.lua). Nothing is overwritten: when any file
 * would be, nothing is written. */
#include "cli/cli.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "conf/config.h"
#include "base/util.h"

const char init_usage[] =
    "usage: ratchet init DIR\n"
    "\n"
    "Makes a ratchet project in DIR (created when missing; an existing folder is\n"
    "fine as long as no file would be overwritten):\n"
    "  ratchet.conf            a provider, a prompt and its evaluators\n"
    "  evaluators/polite.lua   a custom evaluator, with spec/polite_spec.lua\n"
    "  policies/trigger.lua    an override of the shipped trigger policy, with its spec\n"
    "  datasets/golden.jsonl   a golden set;  prompts/v1.json, v2.json  two prompt versions\n"
    "  .busted                 where busted finds ratchet's spec helper (ratchet.testing)\n"
    "Its specs pass as made: `cd DIR && ratchet check -c ratchet.conf && busted`.\n"
    "\n"
    "Exit status: 0 made, 3 a file already there, a folder that cannot be written, or usage.\n";

/* The skeleton's files, relative to its root, in *files (n of them). */
static int list_files(const char *root, const char *rel, char ***files, size_t *n)
{
    char path[4200];
    snprintf(path, sizeof path, "%s%s%s", root, *rel ? "/" : "", rel);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    struct dirent *de;
    int rc = 0;
    while (!rc && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char sub[4200], full[4400];
        snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", de->d_name);
        snprintf(full, sizeof full, "%s/%s", root, sub);
        struct stat st;
        if (stat(full, &st) != 0)
            rc = -1;
        else if (S_ISDIR(st.st_mode))
            rc = list_files(root, sub, files, n);
        else if (S_ISREG(st.st_mode)) {
            *files = xrealloc(*files, (*n + 1) * sizeof **files);
            (*files)[(*n)++] = xstrdup(sub);
        }
    }
    closedir(d);
    return rc;
}

/* mkdir -p of the folders above path (and path itself when dir_too). */
static int make_parents(const char *path, bool dir_too)
{
    char *p = xstrdup(path);
    int rc = 0;
    for (char *s = p + 1; *s && !rc; s++)
        if (*s == '/') {
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST)
                rc = -1;
            *s = '/';
        }
    if (!rc && dir_too && mkdir(p, 0755) != 0 && errno != EEXIST)
        rc = -1;
    free(p);
    return rc;
}

static int write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wx"); /* never over a file that appeared meanwhile */
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) != 0 || w != len ? -1 : 0;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf_t b;
    buf_init(&b);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    *len = b.len;
    buf_append(&b, "", 1);
    return buf_steal(&b);
}

int cmd_init(int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int ch;
    optind = 1;
    while ((ch = cli_getopt("init", argc, argv, "h", opts)) != -1) {
        if (ch == 'h') {
            fputs(init_usage, stdout);
            return 0;
        }
        fputs(init_usage, stderr);
        return EXIT_ERROR;
    }
    if (argc - optind != 1) {
        fprintf(stderr, "ratchet init: %s\n\n%s", argc - optind ? "one folder at a time" : "which folder?", init_usage);
        return EXIT_ERROR;
    }
    const char *dir = argv[optind];
    const char *share = config_share_dir();
    char skel[4200];
    snprintf(skel, sizeof skel, "%s/skeleton", share);
    char **files = NULL;
    size_t n = 0;
    if (list_files(skel, "", &files, &n) != 0 || n == 0) {
        fprintf(stderr, "ratchet init: cannot read the project skeleton in %s (is ratchet installed completely?)\n",
                skel);
        for (size_t i = 0; i < n; i++)
            free(files[i]);
        free(files);
        return EXIT_ERROR;
    }
    /* the files made here besides the skeleton's */
    char busted[4600];
    snprintf(busted, sizeof busted,
             "-- .busted — made by `ratchet init`: busted finds ratchet's spec helper\n"
             "-- (require \"ratchet.testing\") where this ratchet is installed.\n"
             "return {\n  default = {\n    ROOT = { \"spec\" },\n    lpath = \"%s/lua/?.lua\",\n  },\n}\n",
             share);
    static const char gitignore[] = "var/\nreport.xml\nreport.html\n";
    struct {
        const char *name;
        const char *text;
    } extra[] = {{".busted", busted}, {".gitignore", gitignore}};

    int rc = 0;
    char path[4600];
    /* every target first: nothing is written when anything is in the way */
    for (size_t i = 0; i < n + 2 && !rc; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, i < n ? files[i] : extra[i - n].name);
        struct stat st;
        if (lstat(path, &st) == 0) {
            fprintf(stderr, "ratchet init: %s is already there; nothing was written\n", path);
            rc = EXIT_ERROR;
        }
    }
    for (size_t i = 0; i < n + 2 && !rc; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, i < n ? files[i] : extra[i - n].name);
        char src[4400];
        size_t len = 0;
        char *text = NULL;
        if (i < n) {
            snprintf(src, sizeof src, "%s/%s", skel, files[i]);
            text = read_all(src, &len);
        } else {
            text = xstrdup(extra[i - n].text);
            len = strlen(text);
        }
        if (!text) {
            fprintf(stderr, "ratchet init: cannot read %s: %s\n", src, strerror(errno));
            rc = EXIT_ERROR;
        } else if (make_parents(path, false) != 0 || write_file(path, text, len) != 0) {
            fprintf(stderr, "ratchet init: cannot write %s: %s\n", path, strerror(errno));
            rc = EXIT_ERROR;
        }
        free(text);
    }
    if (!rc) {
        /* the docs: PREFIX/share/doc/ratchet beside an installed share, the tree's docs/ otherwise */
        char docs[4300];
        size_t sl = strlen(share);
        if (sl > 14 && !strcmp(share + sl - 14, "/share/ratchet"))
            snprintf(docs, sizeof docs, "%.*s/share/doc/ratchet", (int)(sl - 14), share);
        else
            snprintf(docs, sizeof docs, "%s/docs", share);
        printf("made a ratchet project in %s (from %s). Next:\n"
               "  cd %s\n"
               "  ratchet check -c ratchet.conf   # the config and every script load\n"
               "  busted                          # the evaluator's and the policy's specs\n"
               "then README.md there, and %s/evaluators.md.\n",
               dir, skel, dir, docs);
    }
    for (size_t i = 0; i < n; i++)
        free(files[i]);
    free(files);
    return rc;
}
