# Portcullis - one plain GNU Makefile.
#   make            bin/portcullisd, bin/portcullis
#   make test       unit + integration tests, under AddressSanitizer and UBSan
#   make asan       sanitizer build in build/asan/bin
#   make bench      benchmarks (not run by CI)
#   make run        install missing packages, build, run the daemon on the demo config
#   make deps       install missing Debian packages (as root)
#   make install    binaries, /etc/portcullis/portcullis.conf (kept if present),
#                   a systemd unit, the state directory (PREFIX, DESTDIR)

CC      ?= cc
OPT     ?= -O2 -g
BUILD   ?= build/release
BINDIR  ?= bin
SAN     ?=
PKGS    := milter hiredis libevent libevent_openssl openssl libgsasl libmaxminddb
# GMime 3: the IMAP door's MIME decoding (pop-imap-proxy/imap_mime.c)
PKGS    += gmime-3.0
CPPFLAGS_ALL := -I. -D_GNU_SOURCE $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
CFLAGS_ALL   := -std=c11 -Wall -Wextra -Werror -pthread $(OPT) $(SAN) $(CFLAGS)
LIBS_MILTER  := $(shell pkg-config --libs milter 2>/dev/null || echo -lmilter)
LIBS_LIB     := $(shell pkg-config --libs hiredis 2>/dev/null || echo -lhiredis) $(shell pkg-config --libs libgsasl 2>/dev/null || echo -lgsasl) -lcrypt $(shell pkg-config --libs openssl 2>/dev/null || echo -lssl -lcrypto) \
		$(shell pkg-config --libs libmaxminddb 2>/dev/null || echo -lmaxminddb)
LIBS_LIB     += $(shell pkg-config --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)
LIBS_EVENT   := $(shell pkg-config --libs libevent libevent_openssl 2>/dev/null || echo -levent -levent_openssl)
LIBS_SSL     := $(shell pkg-config --libs openssl 2>/dev/null || echo -lssl -lcrypto)
LIBS_CUNIT   := $(shell pkg-config --libs cunit 2>/dev/null || echo -lcunit)
LIBS_GMIME   := $(shell pkg-config --libs gmime-3.0 2>/dev/null || echo -lgmime-3.0 -lgio-2.0 -lgobject-2.0 -lglib-2.0)
LDFLAGS_ALL  := -pthread $(SAN) $(LDFLAGS)

LIB_SRC := $(wildcard common/*.c) $(wildcard storage-adapter/*.c) $(wildcard rules/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)
LIB     := $(BUILD)/libportcullis.a

DAEMON_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(wildcard daemon/*.c) milter/milter.c $(wildcard smtp-gateway/*.c) $(wildcard service/*.c))
CLI_OBJ    := $(patsubst %.c,$(BUILD)/%.o,$(wildcard cli/*.c))
UNIT_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(wildcard tests/unit/*.c) smtp-gateway/smtp_proto.c smtp-gateway/smtp_conf.c smtp-gateway/relay_send.c \
              smtp-gateway/smtp_sieve.c smtp-gateway/downstream.c \
              service/anvil.c service/deadline.c service/listener.c service/jobs.c service/penalty.c \
              service/conn.c service/tlsbev.c service/authcheck.c service/users.c service/userip.c)
DAEMON_OBJ += $(patsubst %.c,$(BUILD)/%.o,$(wildcard policy/*.c))
DAEMON_OBJ += $(patsubst %.c,$(BUILD)/%.o,$(wildcard pop-imap-proxy/*.c))
UNIT_OBJ   += $(BUILD)/policy/policy_proto.o $(BUILD)/policy/policy_check.o
UNIT_OBJ   += $(patsubst %.c,$(BUILD)/%.o,$(filter-out %_server.c,$(wildcard pop-imap-proxy/*.c)))
BENCH_ENGINE_OBJ := $(BUILD)/tests/bench/bench_engine.o
NULLMILTER_OBJ   := $(BUILD)/tests/bench/null_milter.o
SIEVE_CONF_OBJ   := $(BUILD)/tests/sieve/conformance.o
GEOIP_BENCH_OBJ  := $(BUILD)/tests/bench/geoip_bench.o
SIEVE_BENCH_OBJ  := $(BUILD)/tests/bench/sieve_bench.o

ASAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

.PHONY: all asan test unit integration bench run deps clean demo-conf fuzz install
.PHONY: sieve-conformance sieve-differential
all: $(BINDIR)/portcullisd $(BINDIR)/portcullis

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS_ALL) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BINDIR)/portcullisd: $(DAEMON_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_MILTER) $(LIBS_EVENT) $(LIBS_LIB) $(LIBS_GMIME)

$(BINDIR)/portcullis: $(CLI_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_LIB)

$(BINDIR)/unit-tests: $(UNIT_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_CUNIT) $(LIBS_EVENT) $(LIBS_LIB) $(LIBS_GMIME)

$(BINDIR)/mailstore-tool: $(BUILD)/tests/integration/mailstore_tool.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_LIB)

$(BINDIR)/pop3-tool: $(BUILD)/tests/integration/pop3_tool.o $(BUILD)/pop-imap-proxy/pop3_proto.o \
		$(BUILD)/tests/unit/fixture.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_LIB)

$(BINDIR)/imap-mime-tool: $(BUILD)/tests/integration/imap_mime_tool.o $(BUILD)/pop-imap-proxy/imap_mime.o \
		$(BUILD)/pop-imap-proxy/imap_bodystructure.o \
		$(BUILD)/pop-imap-proxy/imap_search.o $(BUILD)/pop-imap-proxy/imap_parser.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_LIB) $(LIBS_GMIME)

$(BINDIR)/imap-session-tool: $(BUILD)/tests/integration/imap_session_tool.o $(BUILD)/tests/unit/fixture.o \
		$(BUILD)/pop-imap-proxy/imap_proto.o $(BUILD)/pop-imap-proxy/imap_fetch.o \
		$(BUILD)/pop-imap-proxy/imap_parser.o \
		$(BUILD)/pop-imap-proxy/imap_mime.o $(BUILD)/pop-imap-proxy/imap_bodystructure.o \
		$(BUILD)/pop-imap-proxy/imap_search.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_LIB) $(LIBS_GMIME)

$(BINDIR)/bench-engine: $(BENCH_ENGINE_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_LIB)

$(BINDIR)/sieve-conformance: $(SIEVE_CONF_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_LIB)

$(BINDIR)/geoip-bench: $(GEOIP_BENCH_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_LIB)

$(BINDIR)/sieve-bench: $(SIEVE_BENCH_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_LIB)

$(BINDIR)/null-milter: $(NULLMILTER_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS_MILTER) $(LIBS_LIB)

# One sub-make for every sanitizer binary: separate sub-makes each rebuilt
# the library and raced under make -j. The tools: pop3-tool (the POP3 core
# on a loopback port, test_pop3_dovecot.py), imap-mime-tool (imap_mime /
# imap_search on a message file, test_imap_mime_dovecot.py), imap-session-tool
# (the IMAP session over stdin/stdout, test_imap_session_dovecot.py).
asan:
	$(MAKE) BUILD=build/asan BINDIR=build/asan/bin OPT="-O1 -g" SAN="$(ASAN_FLAGS)" \
	    build/asan/bin/portcullisd build/asan/bin/portcullis build/asan/bin/unit-tests \
	    build/asan/bin/mailstore-tool build/asan/bin/sieve-conformance \
	    build/asan/bin/pop3-tool build/asan/bin/imap-mime-tool build/asan/bin/imap-session-tool

deps:
	@sh scripts/deps.sh

# The whole suite runs against the sanitizer build; the release build must
# compile warning-free too.
test: deps
	$(MAKE) all
	$(MAKE) asan
	$(MAKE) unit integration BINDIR=build/asan/bin

unit:
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $(BINDIR)/unit-tests

# Pigeonhole's own test suite; fails only on a regression against the list
SIEVE_CORPUS ?= ../shared/sieve-conformance/tests
sieve-conformance:
	ASAN_OPTIONS=detect_leaks=1 $(BINDIR)/sieve-conformance -C $(SIEVE_CORPUS) -e tests/sieve/expected-results.txt

# the same 600 generated cases through sieve-test (dovecot-sieve) and us
sieve-differential:
	SIEVE_BIN=$(abspath $(BINDIR)) python3 tests/sieve/differential.py

integration:
	$(MAKE) sieve-conformance BINDIR=$(BINDIR)
	$(MAKE) sieve-differential BINDIR=$(BINDIR)
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_cli.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_postfix_milter.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_postfix_policy.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) sh tests/integration/test_miltertest.sh
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_redis_lists.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_redis_faults.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_list_bans.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_list_admin.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_redis_ratelimit.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_gateway.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_tls_auth.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_auth_guard.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_penalty_shared.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_user_apop.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_sasl.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_durability.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_passthrough_durability.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_stream.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_downstream_cache.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_downstream_faults.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_dns.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_install.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_stats.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_stats_redis.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_service.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_connid.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_spool.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_received.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_downstream_421.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_smtp_addresses.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_sieve_cli.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_sieve_milter.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_sieve_gateway.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_sieve_gateway_user.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_sieve_admin.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_mailstore_dovecot.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_pop3_dovecot.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_imap.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_proxy.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_imap_mime_dovecot.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_imap_cache.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_pop3.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_mail_clients.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_imap_session_dovecot.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_imap_dovecot_diff.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_imap_stress.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_reload.py
	PORTCULLIS_BIN=$(abspath $(BINDIR)) python3 tests/integration/test_geoip.py

bench: deps
	$(MAKE) all $(BINDIR)/bench-engine $(BINDIR)/null-milter $(BINDIR)/geoip-bench $(BINDIR)/sieve-bench
	sh tests/bench/run.sh
	python3 tests/bench/redis_bench.py
	python3 tests/bench/gateway_bench.py
	python3 tests/bench/sieve_gateway_bench.py
	python3 tests/bench/auth_bench.py --seconds 2 --repeats 2
	python3 tests/bench/mailread_bench.py
	python3 tests/bench/proxy_bench.py

run: deps
	$(MAKE) all
	sh scripts/run-demo.sh

# libFuzzer targets (clang), with ASan+UBSan; FUZZ_SECONDS each
FUZZ_SECONDS ?= 60
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -I. $(shell pkg-config --cflags $(PKGS) 2>/dev/null) -g -O1 \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Wno-unused-command-line-argument
FUZZ_LIB_SRC := $(LIB_SRC)
FUZZ_LIB_SRC += policy/policy_proto.c
fuzz:
	@command -v clang >/dev/null || { echo "make fuzz needs clang (apt-get install clang)"; exit 1; }
	@mkdir -p build/fuzz/corpus-mailstore
	@mkdir -p build/fuzz/corpus-imap build/fuzz/corpus-pop3
	@mkdir -p build/fuzz/corpus-imap-proto
	@mkdir -p build/fuzz/corpus-smtp build/fuzz/corpus-parsers build/fuzz/corpus-downstream build/fuzz/corpus-hdrparse build/fuzz/corpus-sasl
	@mkdir -p build/fuzz/corpus-readers
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-smtp tests/fuzz/fuzz_smtp.c tests/unit/fixture.c smtp-gateway/smtp_proto.c smtp-gateway/smtp_conf.c service/penalty.c \
	    $(FUZZ_LIB_SRC) $(LIBS_LIB) -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-parsers tests/fuzz/fuzz_parsers.c $(FUZZ_LIB_SRC) \
	    service/listener.c $(LIBS_EVENT) $(LIBS_LIB) -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-hdrparse tests/fuzz/fuzz_hdrparse.c common/hdrparse.c \
	    common/xmalloc.c common/log.c -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-sieve tests/fuzz/fuzz_sieve.c $(FUZZ_LIB_SRC) $(LIBS_LIB) -pthread
	@mkdir -p build/fuzz/corpus-common
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-common tests/fuzz/fuzz_common.c common/base64.c common/hash.c \
	    common/xmalloc.c common/log.c -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-downstream tests/fuzz/fuzz_downstream.c \
	    smtp-gateway/downstream.c $(FUZZ_LIB_SRC) $(LIBS_EVENT) $(LIBS_LIB) -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-mailstore tests/fuzz/fuzz_mailstore.c $(FUZZ_LIB_SRC) \
	    $(LIBS_LIB) -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-sasl tests/fuzz/fuzz_sasl.c $(FUZZ_LIB_SRC) $(LIBS_LIB) -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-imap tests/fuzz/fuzz_imap.c pop-imap-proxy/imap_parser.c common/xmalloc.c
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-pop3 tests/fuzz/fuzz_pop3.c tests/unit/fixture.c pop-imap-proxy/pop3_proto.c $(FUZZ_LIB_SRC) $(LIBS_LIB) -pthread
	clang $(FUZZ_CFLAGS) $(shell pkg-config --cflags gmime-3.0) -o build/fuzz/fuzz-imap-proto tests/fuzz/fuzz_imap_proto.c tests/unit/fixture.c pop-imap-proxy/imap_proto.c pop-imap-proxy/imap_fetch.c pop-imap-proxy/imap_parser.c pop-imap-proxy/imap_mime.c pop-imap-proxy/imap_bodystructure.c pop-imap-proxy/imap_search.c $(FUZZ_LIB_SRC) $(LIBS_LIB) $(LIBS_GMIME) -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-readers tests/fuzz/fuzz_readers.c common/dotstuff.c \
	    common/linereader.c common/xmalloc.c common/log.c -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-apop tests/fuzz/fuzz_apop.c $(FUZZ_LIB_SRC) $(LIBS_LIB) -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-userdb-proxy tests/fuzz/fuzz_userdb_proxy.c $(FUZZ_LIB_SRC) \
	    $(LIBS_LIB) -pthread
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-proxy-reply tests/fuzz/fuzz_proxy_reply.c \
	    pop-imap-proxy/proxy_reply.c common/base64.c common/xmalloc.c common/log.c -pthread
	@mkdir -p build/fuzz/corpus-smtp-sieve
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-smtp-sieve tests/fuzz/fuzz_smtp_sieve.c smtp-gateway/smtp_sieve.c \
	    smtp-gateway/downstream.c smtp-gateway/relay_send.c $(FUZZ_LIB_SRC) $(LIBS_EVENT) $(LIBS_LIB) -pthread
	build/fuzz/fuzz-smtp -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/fuzz/corpus-smtp tests/fuzz/seeds-smtp
	build/fuzz/fuzz-parsers -max_total_time=$(FUZZ_SECONDS) -max_len=2048 build/fuzz/corpus-parsers
	build/fuzz/fuzz-hdrparse -max_total_time=$(FUZZ_SECONDS) -max_len=8192 build/fuzz/corpus-hdrparse
	@mkdir -p build/fuzz/corpus-sieve
	build/fuzz/fuzz-sieve -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/fuzz/corpus-sieve tests/fuzz/seeds-sieve
	build/fuzz/fuzz-common -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/fuzz/corpus-common
	build/fuzz/fuzz-downstream -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/fuzz/corpus-downstream \
	    tests/fuzz/seeds-downstream
	build/fuzz/fuzz-mailstore -max_total_time=$(FUZZ_SECONDS) -max_len=8192 build/fuzz/corpus-mailstore
	@mkdir -p build/fuzz/corpus-mailcache
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-mailcache tests/fuzz/fuzz_mailcache.c $(FUZZ_LIB_SRC) \
	    $(LIBS_LIB) -pthread
	build/fuzz/fuzz-mailcache -max_total_time=$(FUZZ_SECONDS) -max_len=8192 build/fuzz/corpus-mailcache \
	    tests/fuzz/seeds-mailcache
	build/fuzz/fuzz-sasl -max_total_time=$(FUZZ_SECONDS) -max_len=2048 build/fuzz/corpus-sasl
	build/fuzz/fuzz-imap -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/fuzz/corpus-imap tests/fuzz/seeds-imap
	build/fuzz/fuzz-pop3 -max_total_time=$(FUZZ_SECONDS) -max_len=2048 build/fuzz/corpus-pop3 tests/fuzz/seeds-pop3
	build/fuzz/fuzz-imap-proto -max_total_time=$(FUZZ_SECONDS) -max_len=2048 build/fuzz/corpus-imap-proto tests/fuzz/seeds-imap-proto
	build/fuzz/fuzz-readers -max_total_time=$(FUZZ_SECONDS) -max_len=2048 build/fuzz/corpus-readers
	@mkdir -p build/fuzz/corpus-apop
	build/fuzz/fuzz-apop -max_total_time=$(FUZZ_SECONDS) -max_len=2048 build/fuzz/corpus-apop
	@mkdir -p build/fuzz/corpus-userdb-proxy
	build/fuzz/fuzz-userdb-proxy -max_total_time=$(FUZZ_SECONDS) -max_len=1024 build/fuzz/corpus-userdb-proxy
	@mkdir -p build/fuzz/corpus-proxy-reply
	build/fuzz/fuzz-proxy-reply -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/fuzz/corpus-proxy-reply tests/fuzz/seeds-proxy-reply
	build/fuzz/fuzz-smtp-sieve -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build/fuzz/corpus-smtp-sieve
	@mkdir -p build/fuzz/corpus-imap-mime
	clang $(FUZZ_CFLAGS) -o build/fuzz/fuzz-imap-mime tests/fuzz/fuzz_imap_mime.c pop-imap-proxy/imap_mime.c pop-imap-proxy/imap_bodystructure.c \
	    pop-imap-proxy/imap_search.c pop-imap-proxy/imap_parser.c common/xmalloc.c common/log.c $(LIBS_GMIME) -pthread
	build/fuzz/fuzz-imap-mime -max_total_time=$(FUZZ_SECONDS) -max_len=8192 build/fuzz/corpus-imap-mime tests/fuzz/seeds-imap-mime

# make install [PREFIX=/usr/local] [DESTDIR=]
PREFIX     ?= /usr/local
SBINDIR    ?= $(PREFIX)/sbin
USRBINDIR  ?= $(PREFIX)/bin
DOCDIR     ?= $(PREFIX)/share/doc/portcullis
SYSCONFDIR ?= /etc
UNITDIR    ?= /lib/systemd/system
STATEDIR   ?= /var/lib/portcullis
RUN_USER   ?= portcullis
install: all
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(USRBINDIR) $(DESTDIR)$(DOCDIR) \
	    $(DESTDIR)$(SYSCONFDIR)/portcullis $(DESTDIR)$(UNITDIR)
	install -m 755 bin/portcullisd $(DESTDIR)$(SBINDIR)/portcullisd
	install -m 755 bin/portcullis $(DESTDIR)$(USRBINDIR)/portcullis
	install -m 644 README.md LICENSE $(DESTDIR)$(DOCDIR)/ 2>/dev/null || \
	    install -m 644 README.md $(DESTDIR)$(DOCDIR)/
	@# an admin's configuration is never overwritten: the new default goes beside it
	if [ -e $(DESTDIR)$(SYSCONFDIR)/portcullis/portcullis.conf ]; then \
	    install -m 644 etc/portcullis.conf $(DESTDIR)$(SYSCONFDIR)/portcullis/portcullis.conf.default; \
	    echo "kept $(DESTDIR)$(SYSCONFDIR)/portcullis/portcullis.conf (new default: portcullis.conf.default)"; \
	else \
	    sed -e 's|^run_user = portcullis$$|run_user = $(RUN_USER)|' etc/portcullis.conf \
	        > $(DESTDIR)$(SYSCONFDIR)/portcullis/portcullis.conf; \
	    chmod 644 $(DESTDIR)$(SYSCONFDIR)/portcullis/portcullis.conf; \
	fi
	sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
	    etc/portcullis.service > $(DESTDIR)$(UNITDIR)/portcullis.service
	chmod 644 $(DESTDIR)$(UNITDIR)/portcullis.service
	install -d -m 750 $(DESTDIR)$(STATEDIR)
	@# the unprivileged user the daemon runs as (only on a real install as root)
	if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && [ -n "$(RUN_USER)" ] && ! id $(RUN_USER) >/dev/null 2>&1; then \
	    useradd --system --home-dir $(STATEDIR) --no-create-home --shell /usr/sbin/nologin $(RUN_USER); \
	fi
	if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && id $(RUN_USER) >/dev/null 2>&1; then \
	    chown $(RUN_USER): $(STATEDIR); fi

clean:
	rm -rf build bin

-include $(shell find build -name '*.d' 2>/dev/null)
