/* fuzz_config.c — libFuzzer target: the config loader (config.c), a Lua
 * file read in a sandbox and checked setting by setting. The input is the
 * file. A config that loads must free cleanly; one that fails must say why
 * (with file:line). The loader's instruction limit is lowered so a looping
 * input costs milliseconds; the Lua pattern functions are left out of the
 * inputs (the config is the operator's own file, read off the loop, and a
 * pattern can run for minutes there, which is no finding). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/config.h"
#include "base/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (!path[0]) {
        log_set_level(LOG_ERROR);
        config_instruction_limit = 1000000;
        snprintf(path, sizeof path, "/tmp/ratchet-fuzz-config-%d.conf", (int)getpid());
    }
    static const char *const unbounded[] = {"find", "match", "gsub", "gmatch", "rep", NULL};
    for (const char *const *u = unbounded; *u; u++)
        if (memmem(data, size, *u, strlen(*u)))
            return 0;
    FILE *f = fopen(path, "wb");
    if (!f)
        abort();
    fwrite(data, 1, size, f);
    fclose(f);
    config c;
    config_defaults(&c);
    char err[1024] = "";
    if (config_load(&c, path, err, sizeof err) != 0 && !err[0])
        abort(); /* a refusal always says why */
    config_free(&c);
    return 0;
}
