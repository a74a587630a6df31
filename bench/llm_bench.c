/* bench/llm_bench.c — the LLM client against `ratchet fake-llm`.
 *
 *   llm_bench ADDR MODE N CONCURRENCY
 *     MODE llm:   N calls through llm.c (provider, queue, retries armed,
 *                 budgets, ledger into a store in a temp dir), CONCURRENCY
 *                 in flight
 *     MODE raw:   the same POSTs through httpc.c alone (the baseline: what
 *                 libcurl on libuv costs without the LLM layer)
 *     MODE hold-llm, hold-raw: starts N calls at once (through llm.c, or
 *                 httpc.c alone) against a fake that stalls them, and
 *                 reports the RSS they add (memory per in-flight call)
 *
 * Prints one RESULT line: calls, wall_s, cpu_s (user+sys of this process),
 * calls_per_s, cpu_us_per_call, rss_kb_per_call (hold), errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "net/http_client.h"
#include "llm/llm.h"
#include "store/store.h"
#include "base/util.h"

static int n_total, n_started, n_done, n_errors, conc;
static llm *L;
static httpc *H;
static char url[256];
static const char *body =
    "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Classify this ticket: I was charged twice\"}],"
    "\"max_tokens\":20}";
static const char *request =
    "{\"messages\":[{\"role\":\"user\",\"content\":\"Classify this ticket: I was charged twice\"}],\"max_tokens\":20}";

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static void start_one(void);

static void on_llm(llm_call *c, json_t *result, const char *kind, const char *err, void *ud)
{
    (void)c;
    (void)ud;
    (void)kind;
    if (!result) {
        if (n_errors++ < 3)
            fprintf(stderr, "call failed: %s: %s\n", kind, err);
    }
    n_done++;
    if (n_started < n_total)
        start_one();
}

static void on_raw(httpc_req *r, const httpc_response *resp, void *ud)
{
    (void)r;
    (void)ud;
    if (resp->error || resp->status != 200) {
        if (n_errors++ < 3)
            fprintf(stderr, "request failed: %s %d\n", resp->message ? resp->message : "", resp->status);
    }
    n_done++;
    if (n_started < n_total)
        start_one();
}

static bool raw_mode;

static void start_one(void)
{
    n_started++;
    if (raw_mode) {
        const char *hdrs[] = {"Content-Type: application/json", "Authorization: Bearer sk-bench"};
        httpc_opts o = {.method = "POST", .url = url, .headers = hdrs, .nheaders = 2, .body = body,
                        .body_len = strlen(body)};
        httpc_start(H, &o, on_raw, NULL);
    } else {
        llm_caller who = {.kind = "other", .name = "bench"};
        llm_chat(L, request, &who, on_llm, NULL);
    }
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: llm_bench ADDR llm|raw|hold-llm|hold-raw N CONCURRENCY\n");
        return 2;
    }
    const char *addr = argv[1], *mode = argv[2];
    n_total = atoi(argv[3]);
    conc = atoi(argv[4]);
    raw_mode = strcmp(mode, "raw") == 0 || strcmp(mode, "hold-raw") == 0;
    bool hold = strncmp(mode, "hold", 4) == 0;
    snprintf(url, sizeof url, "http://%s/v1/chat/completions", addr);
    uv_loop_t *loop = uv_default_loop();
    char dir[] = "/tmp/llm_bench.XXXXXX", err[512];
    if (!mkdtemp(dir))
        return 1;
    store *st = NULL;
    store_options so = {.dir = dir, .max_pending = 1000000};
    if (store_open(&st, loop, &so, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    H = httpc_new(loop);
    L = llm_new(loop, H, st);
    char pjson[1024];
    snprintf(pjson, sizeof pjson,
             "{\"kind\":\"openai\",\"base_url\":\"http://%s/v1\",\"api_key\":\"sk-bench\",\"default_model\":\"m\","
             "\"concurrency\":%d,\"timeout_ms\":600000,"
             "\"models\":{\"m\":{\"input_per_mtok\":1,\"output_per_mtok\":2}}}",
             addr, hold ? n_total : conc);
    char *names[] = {"fake"}, *jsons[] = {pjson};
    llm_budgets b = {0};
    llm_configure(L, names, jsons, 1, &b);

    /* warm up: connections opened, allocator primed */
    int real_total = n_total;
    n_total = hold ? 0 : conc * 2;
    for (int i = 0; i < n_total && i < conc; i++)
        start_one();
    while (n_done < n_total)
        uv_run(loop, UV_RUN_ONCE);
    n_total = real_total;
    n_started = n_done = 0;
    n_errors = 0;

    long rss0 = rss_kb();
    double c0 = cpu_s();
    uint64_t t0 = mono_ns();
    if (hold) {
        for (int i = 0; i < n_total; i++)
            start_one();
        /* run until every call is on the wire (the fake stalls them) */
        uint64_t until = mono_ns() + 3000000000ull;
        while (mono_ns() < until)
            uv_run(loop, UV_RUN_NOWAIT);
        long rss1 = rss_kb();
        printf("RESULT mode=%s calls=%d rss_kb_before=%ld rss_kb_after=%ld rss_kb_per_call=%.2f\n", mode, n_total, rss0, rss1,
               (double)(rss1 - rss0) / n_total);
        fflush(stdout);
        _exit(0); /* the stalled calls never end; nothing to tidy */
    }
    for (int i = 0; i < conc && i < n_total; i++)
        start_one();
    while (n_done < n_total)
        uv_run(loop, UV_RUN_ONCE);
    double wall = (double)(mono_ns() - t0) / 1e9, cpu = cpu_s() - c0;
    printf("RESULT mode=%s calls=%d concurrency=%d wall_s=%.3f cpu_s=%.3f calls_per_s=%.0f cpu_us_per_call=%.1f "
           "errors=%d\n",
           mode, n_total, conc, wall, cpu, n_total / wall, cpu * 1e6 / n_total, n_errors);
    fflush(stdout);
    llm_free(L);
    httpc_free(H);
    uv_run(loop, UV_RUN_NOWAIT);
    store_close(st);
    uv_run(loop, UV_RUN_DEFAULT);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        return 1;
    return 0;
}
