# ratchet — plain Makefile. `make help` lists the targets.

PREFIX  ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
BUILD   ?= build
CC      ?= gcc
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0)
# the commit built, when built from a git checkout (GET /v1/version names it)
COMMIT  := $(shell git rev-parse --short=12 HEAD 2>/dev/null)

PKGS := libuv libcurl lua5.4 lua5.4-cjson sqlite3 libpq jansson libsystemd libcrypto libgit2 libprotobuf-c zlib

# Recursive (=) so pkg-config runs when a recipe needs it, after `deps`.
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   = $(shell pkg-config --libs $(PKGS)) -lhttp_parser -lyajl -lunistring -lm -lpthread

# mimalloc replaces glibc's malloc in the engine (a fifth fewer instructions
# in a regression run, see bench/RESULTS.md); sanitizer builds keep their own.
MALLOC_LIBS ?= -Wl,--push-state,--no-as-needed -lmimalloc -Wl,--pop-state
MALLOC_DEFS  = $(if $(MALLOC_LIBS),-DRATCHET_MIMALLOC)

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wformat=2 -Wno-format-nonliteral
OPT     ?= -O2 -g
CFLAGS_ALL = -std=c11 -D_GNU_SOURCE $(WARN) $(OPT) -Iengine -I$(BUILD)/gen $(PKG_CFLAGS) -DRATCHET_VERSION='"$(VERSION)"' \
             $(if $(COMMIT),-DRATCHET_COMMIT='"$(COMMIT)"') -DRATCHET_SHARE_DIR='"$(PREFIX)/share/ratchet"' -DRATCHET_SOURCE_DIR='"$(CURDIR)"' \
             $(MALLOC_DEFS) $(EXTRA_CFLAGS)
LDFLAGS_ALL = $(EXTRA_LDFLAGS)

# engine/ is in rooms, one folder per subsystem (docs/architecture.md);
# includes name the room ("store/store.h"), from -Iengine
ROOMS := base net store script llm conf loop api cli fake
SRCS := $(filter-out engine/script/lua_module.c,$(foreach r,$(ROOMS),$(wildcard engine/$(r)/*.c)))
HDRS := $(foreach r,$(ROOMS),$(wildcard engine/$(r)/*.h))
# C generated at build time, never committed: OTLP's protobuf messages from
# the project's own proto/otlp.proto (protoc-c, Debian protobuf-c-compiler)
GEN_HDRS := $(BUILD)/gen/otlp.pb-c.h
GEN_OBJS := $(BUILD)/obj/gen/otlp.pb-c.o
OBJS := $(SRCS:engine/%.c=$(BUILD)/obj/%.o) $(GEN_OBJS)
# the Lua module specs use to run evaluators exactly as the engine does
MODULE_SRCS := engine/script/lua_module.c engine/script/script.c engine/script/script_stall.c engine/script/luajson.c \
               engine/script/evaluator.c engine/script/optdecl.c engine/script/policy.c engine/base/util.c \
               engine/base/log.c engine/base/metrics.c engine/base/jtree.c
MODULE := $(BUILD)/lua/ratchet_sandbox.so
TEST_SRCS := $(wildcard engine/tests/test_*.c)
TESTS := $(TEST_SRCS:engine/tests/%.c=$(BUILD)/tests/%)

# libFuzzer targets (fuzz/fuzz_*.c): the engine's sources built again with
# clang and ASan + UBSan + the fuzzer's coverage (fuzz/README.md)
FUZZ_CC ?= clang-14
FUZZ_SECONDS ?= 60
FUZZ_BUILD := $(BUILD)/fuzz
FUZZ_TARGETS := $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))
FUZZ_OBJS := $(SRCS:engine/%.c=$(FUZZ_BUILD)/obj/%.o) $(FUZZ_BUILD)/obj/gen/otlp.pb-c.o
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1

.PHONY: FORCE all deps test-deps test asan install fuzz fuzz-build uninstall run demo clean help demo-gateway bench-gateway bench-ingest bench-pg bench-eval bench-llm bench-gate bench-rollout bench-schema bench-patterns bench-deps bench-pg-partitions bench-efficacy console-screenshots bench-console bench-otlp

all: $(BUILD)/ratchet $(TESTS) $(MODULE)

help:
	@echo "make            build $(BUILD)/ratchet (installs Debian packages first if missing)"
	@echo "make deps       install the Debian packages ratchet needs (idempotent)"
	@echo "make test-deps  install node 22 and the npm clients the specs use (make test runs it)"
	@echo "make test       run every C unit test and busted spec; last line 'N passed, N failed'"
	@echo "make asan       the same suite under AddressSanitizer + UBSan"
	@echo "make demo       the whole loop in a few seconds on simulated models (no API key; see docs/loop.md);"
	@echo "                make demo TEMPLATE=gepa runs it with the gepa search"
	@echo "make demo-gateway  the same demo with its traffic through the gateway (docs/gateway.md)"
	@echo "make run        start an engine with etc/ratchet.conf and a store under ./var/"
	@echo "make install    install under \$$(DESTDIR)\$$(PREFIX) (default /usr/local): binary, unit, scripts,"
	@echo "                docs, and the kit for your own scripts (ratchet init, the busted helper)"
	@echo "make help       this list"
	@echo "make uninstall  remove what make install put under \$$(DESTDIR)\$$(PREFIX) (not /etc/ratchet)"
	@echo "make bench-deps    install what the benchmarks need besides the build's packages (wrk, nginx-light)"
	@echo "make bench-ingest  the ingest benchmark (see bench/README.md)"
	@echo "make bench-pg      durable ingest on PostgreSQL vs SQLite, one and two engines (docs/scale-out.md)"
	@echo "make bench-pg-partitions  PostgreSQL ingest and retention, partitioned traces vs the build before (BASE_REF)"
	@echo "make bench-console the console's pages in headless Chromium with 1 M traces, and its files' weight"
	@echo "make bench-eval    ingest with online evaluation, and p99 while an evaluator spins"
	@echo "make bench-llm     the LLM client against the fake LLM server"
	@echo "make bench-gate    regression runs and prompt resolution (see bench/README.md)"
	@echo "make bench-gateway  the gateway's added latency and throughput against nginx proxy_pass and Portkey"
	@echo "make bench-rollout the rollout policy over 2,000 simulated canaries (no LLM)"
	@echo "make bench-efficacy  the strategies (plain, critique_rewrite, history, gepa) on 4 SIMULATED tasks, 10 seeds each"
	@echo "make bench-schema  json_schema evaluations per second through the engine's runtime"
	@echo "make bench-patterns  Lua pattern functions: Lua's own against the engine's stoppable ones"
	@echo "make bench-otlp    OTLP/HTTP ingest (protobuf, JSON) against the native JSON ingest of the same calls"
	@echo "make console-screenshots  run the console's headless-Chromium spec and copy its screenshots to docs/console/"
	@echo "make fuzz       build the libFuzzer targets and run each for FUZZ_SECONDS (default 60)"

deps:
	@./tools/deps.sh

$(BUILD)/obj/%.o: engine/%.c $(HDRS) $(GEN_HDRS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: proto/%.proto | deps
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Iproto $<

# generated code: the project's warnings minus the ones protoc-c's output trips
$(BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c $(GEN_HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -Wshadow -Wstrict-prototypes,$(CFLAGS_ALL)) -Wno-missing-braces -c $< -o $@

$(BUILD)/ratchet: $(BUILD)/obj/main.o $(OBJS)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(MALLOC_LIBS) $(PKG_LIBS)

$(BUILD)/obj/main.o: engine/main.c $(HDRS) $(BUILD)/version.stamp | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# rewritten only when `git describe` or the commit says something new, so
# main.o and api_ops.o (which answer the version) are rebuilt then and only then
$(BUILD)/version.stamp: FORCE
	@mkdir -p $(dir $@)
	@echo '$(VERSION) $(COMMIT)' | cmp -s - $@ || echo '$(VERSION) $(COMMIT)' > $@

$(BUILD)/obj/api/api_ops.o: $(BUILD)/version.stamp

FORCE:

$(BUILD)/pic/%.o: engine/%.c $(HDRS) | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -fPIC -c $< -o $@

# Lua symbols come from the interpreter that loads the module
$(MODULE): $(MODULE_SRCS:engine/%.c=$(BUILD)/pic/%.o)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -shared -o $@ $^ $(shell pkg-config --libs libuv jansson libcrypto) -llua5.4-cjson -lyajl -lunistring -lpthread -lm

$(BUILD)/tests/%: engine/tests/%.c engine/tests/check.h $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Iengine/tests $(LDFLAGS_ALL) -o $@ $< $(OBJS) $(PKG_LIBS)

# node 22 and the npm clients the specs drive the engine with (tools/test-deps.sh)
test-deps:
	@./tools/test-deps.sh

test: deps test-deps all fuzz-build
	@./tools/promtool.sh
	@RATCHET_BIN=$(abspath $(BUILD)/ratchet) TEST_BIN_DIR=$(abspath $(BUILD)/tests) \
	  FUZZ_BIN_DIR=$(abspath $(FUZZ_BUILD)) RATCHET_LUA_CPATH=$(abspath $(BUILD)/lua) ./spec/run-all

$(FUZZ_BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c $(GEN_HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE -I$(BUILD)/gen $(PKG_CFLAGS) $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/obj/%.o: engine/%.c $(HDRS) $(GEN_HDRS) | deps
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE $(WARN) -Iengine -I$(BUILD)/gen $(PKG_CFLAGS) -DRATCHET_VERSION='"$(VERSION)"' \
	  -DRATCHET_SHARE_DIR='"$(PREFIX)/share/ratchet"' $(FUZZ_SAN) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/%: fuzz/%.c $(FUZZ_OBJS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE $(WARN) $(PKG_CFLAGS) -Iengine -I$(BUILD)/gen $(FUZZ_SAN) -fsanitize=fuzzer \
	  -o $@ $< $(FUZZ_OBJS) $(PKG_LIBS)

fuzz-build: $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/%)

# kept between builds (make would delete them as intermediate files)
.SECONDARY: $(FUZZ_OBJS) $(BUILD)/gen/otlp.pb-c.c $(GEN_HDRS)

# Each target for FUZZ_SECONDS, one at a time; new inputs go to
# build/fuzz/corpus/ (the committed seeds in fuzz/corpus/ stay as they are).
fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$t $(FUZZ_BUILD)/artifacts; \
	  echo "== $$t for $(FUZZ_SECONDS) s"; \
	  $(FUZZ_BUILD)/$$t -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
	    -artifact_prefix=$(FUZZ_BUILD)/artifacts/$$t- -print_final_stats=1 \
	    $(FUZZ_BUILD)/corpus/$$t fuzz/corpus/$$t || exit 1; \
	done

asan: deps test-deps $(MODULE)
	@./tools/promtool.sh
	@$(MAKE) --no-print-directory BUILD=build/asan OPT="-O1 -g -fno-omit-frame-pointer" \
	  EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined" \
	  EXTRA_LDFLAGS="-fsanitize=address,undefined" MALLOC_LIBS= all
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=86 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  RATCHET_SANITIZED=1 RATCHET_BIN=$(abspath build/asan/ratchet) TEST_BIN_DIR=$(abspath build/asan/tests) \
	  RATCHET_LUA_CPATH=$(abspath build/lua) \
	  ./spec/run-all

demo: deps all
	@./demo/run.sh $(if $(TEMPLATE),--template $(TEMPLATE))

demo-gateway: deps all
	@RATCHET_DEMO_GATEWAY=1 ./demo/run.sh

# the console's pages in headless Chromium through the demo's loop
# (spec/engine/console_spec.lua), then their screenshots into docs/console/ on purpose
console-screenshots: deps test-deps all
	@rm -rf $(BUILD)/console-screenshots
	@RATCHET_BIN=$(abspath $(BUILD)/ratchet) RATCHET_LUA_CPATH=$(abspath $(BUILD)/lua) \
	  busted --filter='headless Chromium' spec/engine/console_spec.lua
	@mkdir -p docs/console
	cp $(BUILD)/console-screenshots/*.png docs/console/

run: deps all
	@mkdir -p var
	$(BUILD)/ratchet serve -c etc/ratchet.conf --data-dir ./var --script-dir .

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/ratchet $(DESTDIR)$(PREFIX)/share/doc/ratchet \
	  $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/ratchet
	install -m 0755 $(BUILD)/ratchet $(DESTDIR)$(PREFIX)/bin/ratchet
	install -m 0644 etc/ratchet.conf $(DESTDIR)$(PREFIX)/share/ratchet/ratchet.conf.example
	@# the live config is the admin's: installed once, never overwritten
	[ -e $(DESTDIR)$(SYSCONFDIR)/ratchet/ratchet.conf ] || \
	  install -m 0644 etc/ratchet.conf $(DESTDIR)$(SYSCONFDIR)/ratchet/ratchet.conf
	sed 's|@BINDIR@|$(PREFIX)/bin|; s|@DOCDIR@|$(PREFIX)/share/doc/ratchet|' etc/ratchet.service.in > $(BUILD)/ratchet.service
	install -m 0644 $(BUILD)/ratchet.service $(DESTDIR)$(UNITDIR)/ratchet.service
	install -m 0644 docs/trace.schema.json $(DESTDIR)$(PREFIX)/share/ratchet/trace.schema.json
	@# the shipped scripts; files of the same name in /etc/ratchet/ override them
	install -d $(DESTDIR)$(PREFIX)/share/ratchet/evaluators/lib
	install -m 0644 evaluators/*.lua $(DESTDIR)$(PREFIX)/share/ratchet/evaluators/
	install -m 0644 evaluators/lib/*.lua $(DESTDIR)$(PREFIX)/share/ratchet/evaluators/lib/
	install -d $(DESTDIR)$(PREFIX)/share/ratchet/policies/lib $(DESTDIR)$(PREFIX)/share/ratchet/scripts/lib \
	  $(DESTDIR)$(PREFIX)/share/ratchet/scripts/metaprompts
	install -m 0644 policies/*.lua $(DESTDIR)$(PREFIX)/share/ratchet/policies/
	install -m 0644 policies/lib/*.lua $(DESTDIR)$(PREFIX)/share/ratchet/policies/lib/
	install -m 0644 scripts/lib/*.lua $(DESTDIR)$(PREFIX)/share/ratchet/scripts/lib/
	install -m 0644 scripts/metaprompts/*.lua $(DESTDIR)$(PREFIX)/share/ratchet/scripts/metaprompts/
	@# the web console's static files, and Chart.js beside them from Debian's libjs-chart.js (never in the git tree)
	install -d $(DESTDIR)$(PREFIX)/share/ratchet/console
	install -m 0644 console/index.html console/app.js console/style.css $(DESTDIR)$(PREFIX)/share/ratchet/console/
	install -m 0644 /usr/share/javascript/chart.js/chart.min.js $(DESTDIR)$(PREFIX)/share/ratchet/console/chart.js
	install -m 0644 README.md docs/*.md $(DESTDIR)$(PREFIX)/share/doc/ratchet/
	@# the kit for your own evaluators and policies: what `ratchet init` copies,
	@# the busted helper (require "ratchet.testing") and the runtime as a Lua module
	install -d $(DESTDIR)$(PREFIX)/share/ratchet/lua/ratchet $(DESTDIR)$(PREFIX)/lib/ratchet
	install -m 0644 lua/ratchet/testing.lua $(DESTDIR)$(PREFIX)/share/ratchet/lua/ratchet/
	install -m 0644 $(MODULE) $(DESTDIR)$(PREFIX)/lib/ratchet/
	for f in $$(cd skeleton && find . -type f); do \
	  install -D -m 0644 skeleton/$$f $(DESTDIR)$(PREFIX)/share/ratchet/skeleton/$$f || exit 1; done

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/ratchet $(DESTDIR)$(UNITDIR)/ratchet.service
	rm -rf $(DESTDIR)$(PREFIX)/share/ratchet $(DESTDIR)$(PREFIX)/share/doc/ratchet $(DESTDIR)$(PREFIX)/lib/ratchet

bench-deps:
	@RATCHET_DEPS_EXTRA="wrk nginx-light" ./tools/deps.sh

bench-ingest: bench-deps all
	@./bench/ingest.sh

bench-pg: bench-deps all
	@./bench/pg.sh

# the build before traces were partitioned on PostgreSQL, built from git into build/base
BASE_REF ?= da00e40
bench-pg-partitions: bench-deps all
	@rm -rf build/base && mkdir -p build/base && git archive $(BASE_REF) | tar -x -C build/base
	@$(MAKE) --no-print-directory -C build/base build/ratchet > build/base.log 2>&1 || { tail -20 build/base.log; exit 1; }
	@BASE_BIN=$(abspath build/base/build/ratchet) ./bench/pg_partitions.sh

bench-eval: bench-deps all
	@./bench/ingest_eval.sh

bench-console: all test-deps
	@./bench/console.sh

$(BUILD)/llm_bench: bench/llm_bench.c $(OBJS)
	$(CC) $(CFLAGS_ALL) $(LDFLAGS_ALL) -o $@ $< $(OBJS) $(MALLOC_LIBS) $(PKG_LIBS)

bench-llm: all $(BUILD)/llm_bench
	@./bench/llm.sh

bench-efficacy: all
	RATCHET_BIN=$(CURDIR)/$(BUILD)/ratchet lua5.4 bench/efficacy/run.lua

bench-rollout: all
	@lua5.4 bench/rollout.lua

# the engine's allocator under the busted module too (mimalloc unless MALLOC_LIBS=)
bench-schema: all
	@$(if $(MALLOC_LIBS),LD_PRELOAD=libmimalloc.so.2 )lua5.4 bench/json_schema.lua

# Lua's pattern functions: Lua's own against the engine's stoppable ones
bench-patterns: all
	@$(if $(MALLOC_LIBS),LD_PRELOAD=libmimalloc.so.2 )lua5.4 bench/patterns.lua

$(BUILD)/relay: bench/relay.c $(OBJS)
	$(CC) $(CFLAGS_ALL) $(LDFLAGS_ALL) -o $@ $< $(OBJS) $(MALLOC_LIBS) $(PKG_LIBS)

$(BUILD)/otlp_decode: bench/otlp_decode.c $(OBJS)
	$(CC) $(CFLAGS_ALL) $(LDFLAGS_ALL) -o $@ $< $(OBJS) $(MALLOC_LIBS) $(PKG_LIBS)

bench-otlp: all $(BUILD)/otlp_decode
	@./bench/otlp.sh

bench-gate: all $(BUILD)/llm_bench
	@./bench/gate.sh

# the gateway against nginx proxy_pass and Portkey (bench/package.json, node 22)
bench-gateway: bench-deps test-deps all $(BUILD)/relay
	@cd bench && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null
	@./bench/gateway.sh

clean:
	rm -rf build
