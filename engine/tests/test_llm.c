/* test_llm.c — llm.c against `ratchet fake-llm` (started from $RATCHET_BIN):
 * per-run budgets (no endpoint names a run yet; the loop will), provider
 * settings checks, and a call's outcome reaching the ledger's totals. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "net/http_client.h"
#include "llm/llm.h"
#include "store/store.h"
#include "base/util.h"

typedef struct {
    int done;
    char kind[64];
    char err[512];
} outcome;

static void on_done(llm_call *c, json_t *result, const char *kind, const char *err, void *ud)
{
    (void)c;
    outcome *o = ud;
    o->done = 1;
    snprintf(o->kind, sizeof o->kind, "%s", result ? "ok" : kind);
    snprintf(o->err, sizeof o->err, "%s", err ? err : "");
}

static outcome call(uv_loop_t *loop, llm *l, const char *run)
{
    outcome o = {0};
    llm_caller who = {.kind = "run", .name = "test", .run_id = run};
    llm_chat(l, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":10}", &who, on_done, &o);
    while (!o.done)
        uv_run(loop, UV_RUN_ONCE);
    return o;
}

static void test_parse(void)
{
    char err[400];
    llm_provider_conf c;
    CHECK(llm_provider_parse("a", "{\"kind\":\"openai\"}", &c, err, sizeof err) == 0);
    CHECK_STR(c.base_url, "https://api.openai.com/v1");
    CHECK(c.auth == AUTH_NONE && c.max_retries == 4 && c.concurrency == 16);
    llm_provider_conf_free(&c);
    CHECK(llm_provider_parse("a", "{\"kind\":\"anthropic\",\"api_key\":\"k\",\"base_url\":\"https://x/v1/\"}", &c, err,
                             sizeof err) == 0);
    CHECK(c.auth == AUTH_X_API_KEY);
    CHECK_STR(c.base_url, "https://x/v1");
    llm_provider_conf_free(&c);
    CHECK(llm_provider_parse("a", "{\"kind\":\"openai\",\"api_key\":\"k\\nX-Evil: 1\"}", NULL, err, sizeof err) != 0);
    CHECK(strstr(err, "api_key") != NULL);
    CHECK(strstr(err, "Evil") == NULL); /* a key never echoes back */
    CHECK(llm_provider_parse("a", "{\"kind\":\"openai\",\"headers\":{\"X-A\":\"b\\r\\nc\"}}", NULL, err, sizeof err) != 0);
    CHECK(llm_provider_parse("a", "{\"kind\":\"openai\",\"query\":{\"v\":\"a&b=c\"}}", NULL, err, sizeof err) != 0);
    CHECK(llm_provider_parse("a", "{\"kind\":\"openai\",\"max_retries\":99}", NULL, err, sizeof err) != 0);
    CHECK(strstr(err, "max_retries") != NULL);
}

int main(void)
{
    test_parse();
    const char *bin = getenv("RATCHET_BIN");
    if (!bin) {
        printf("ok %d - # SKIP RATCHET_BIN is not set\n", ++check_count);
        return check_done();
    }
    char dir[] = "/tmp/test_llm.XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    char addr_file[128], cmd[1024];
    snprintf(addr_file, sizeof addr_file, "%s/addr", dir);
    pid_t pid = fork();
    if (pid == 0) {
        execl(bin, bin, "fake-llm", "--address-file", addr_file, (char *)NULL);
        _exit(127);
    }
    char addr[128] = "";
    for (int i = 0; i < 200 && !addr[0]; i++) {
        FILE *f = fopen(addr_file, "r");
        if (f) {
            if (!fgets(addr, sizeof addr, f))
                addr[0] = 0;
            fclose(f);
        }
        if (!addr[0])
            usleep(25000);
    }
    addr[strcspn(addr, "\n")] = 0;
    CHECK(addr[0] != 0);

    uv_loop_t *loop = uv_default_loop();
    char err[512];
    store *st = NULL;
    store_options so = {.dir = dir, .max_pending = 1000};
    CHECK(store_open(&st, loop, &so, err, sizeof err) == 0);
    httpc *h = httpc_new(loop);
    llm *l = llm_new(loop, h, st);
    char pj[512];
    snprintf(pj, sizeof pj,
             "{\"kind\":\"openai\",\"base_url\":\"http://%s/v1\",\"default_model\":\"m\","
             "\"models\":{\"m\":{\"input_per_mtok\":1,\"output_per_mtok\":1}}}", addr);
    char *names[] = {"fake"}, *jsons[] = {pj};
    llm_budgets b = {.run_calls = 2};
    llm_configure(l, names, jsons, 1, &b);

    CHECK_STR(call(loop, l, "run-1").kind, "ok");
    CHECK_STR(call(loop, l, "run-1").kind, "ok");
    outcome o = call(loop, l, "run-1");
    CHECK_STR(o.kind, "budget");
    CHECK(strstr(o.err, "run's call budget") != NULL);
    CHECK_STR(call(loop, l, "run-2").kind, "ok"); /* another run has its own budget */
    CHECK_STR(call(loop, l, NULL).kind, "ok");    /* calls outside a run are not counted against one */

    llm_budgets tok = {.run_tokens = 100};
    llm_configure(l, names, jsons, 1, &tok);
    o = call(loop, l, "run-3"); /* ~10 + 10 tokens reserved: fits */
    CHECK_STR(o.kind, "ok");
    llm_budgets cost = {.run_cost = 1.23456789e-9};
    llm_configure(l, names, jsons, 1, &cost);
    o = call(loop, l, "run-4");
    CHECK_STR(o.kind, "budget");
    CHECK(strstr(o.err, "run's cost budget") != NULL);
    /* the budget as given, not rounded by %g to 1.23457e-09 */
    CHECK(strstr(o.err, "the run's cost budget (1.23456789e-09) would be exceeded") != NULL);

    /* the ledger has the five calls that were sent, with their run ids */
    for (int i = 0; i < 50; i++)
        uv_run(loop, UV_RUN_NOWAIT), usleep(2000);
    int64_t calls = 0, tokens = 0;
    double spent = 0;
    CHECK(store_llm_totals(st, 0, "run-1", &calls, &tokens, &spent, err, sizeof err) == 0);
    CHECK(calls == 2 && tokens > 0 && spent > 0);
    CHECK(store_llm_totals(st, 0, NULL, &calls, &tokens, &spent, err, sizeof err) == 0);
    CHECK(calls == 5);

    llm_free(l);
    httpc_free(h);
    uv_run(loop, UV_RUN_NOWAIT);
    store_close(st);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
    return check_done();
}
