#!/bin/sh
# Sendmail-style milter run: start portcullisd with a lab config, load the
# lists, drive it with miltertest(8) and milter_sendmail.lua.
#
#   sh tests/integration/test_miltertest.sh   (POSIX sh; make integration runs it so)
#   env: PORTCULLIS_BIN (default <repo>/bin), KEEP_LAB=1 keeps the lab dir
#
# Prints the Lua cases, a sanitizer check of the daemon's log, then a last
# line "N passed, N failed"; exits 1 on any failure.  Loopback only.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${PORTCULLIS_BIN:-$repo/bin}
lab_py() { /usr/bin/python3 "$here/lab.py" "$@"; }

die() { echo "test_miltertest: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

for exe in portcullisd portcullis; do
	[ -x "$bin/$exe" ] || die "$bin/$exe is missing: build with make first"
done
command -v miltertest >/dev/null || die "miltertest is not installed (apt-get install miltertest)"

t0=$(date +%s.%N)
dir=$(mktemp -d /tmp/portcullis-mt.XXXXXX) || die "mktemp failed"
chmod 755 "$dir"
mkdir -p "$dir/lists" "$dir/state"
conf=$dir/portcullis.cf
log=$dir/portcullisd.log
pid=

stop_daemon() {
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null
	# libmilter may take ~5 s to leave after SIGTERM; then SIGKILL
	for _ in $(seq 1 120); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "test_miltertest: portcullisd still running 6 s after SIGTERM; SIGKILL" >&2
		kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null
	st=$?
	if [ "$st" -gt 128 ]; then
		echo "WARNING: portcullisd was killed by signal $((st - 128)) instead of" \
			"exiting on SIGTERM; LeakSanitizer cannot run at exit"
	fi
	pid=
}
cleanup() {
	stop_daemon
	if [ "${KEEP_LAB:-}" = 1 ]; then
		echo "test_miltertest: kept $dir" >&2
	else
		rm -rf "$dir"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP
trap 'exit 141' PIPE

port=$(lab_py free-port) || die "no free port"
lab_py daemon-config "$port" "$dir" >"$conf" || die "cannot write $conf"

cli() {
	"$bin/portcullis" -c "$conf" "$@" || die "portcullis $* failed (exit $?)"
}
cli kill add host:bad.host.test --reason "miltertest kill by host"
cli kill add host:.evil.test --reason "miltertest kill by host suffix"
cli accept add host:good.host.test --reason "miltertest accept by host"

"$bin/portcullisd" -c "$conf" -f >>"$log" 2>&1 </dev/null &
pid=$!
if ! lab_py wait-port "$port" 10 "$pid"; then
	echo "--- portcullisd.log" >&2
	tail -n 30 "$log" >&2
	die "portcullisd did not listen on 127.0.0.1:$port"
fi

out=$dir/miltertest.out
miltertest -D port="$port" -s "$here/milter_sendmail.lua" >"$out" 2>&1
mt_rc=$?
stop_daemon
grep -v -E '^[0-9]+ passed, [0-9]+ failed$' "$out"

counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
if [ -n "$counts" ]; then
	passed=${counts%% passed*}
	failed=${counts#*, }
	failed=${failed%% failed}
else
	echo "FAIL miltertest ended without a summary (exit $mt_rc)"
	passed=0
	failed=1
fi
if [ "$mt_rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
	echo "FAIL miltertest exited $mt_rc"
	failed=$((failed + 1))
fi

if reports=$(lab_py sanitizer-scan "$log"); then
	echo "ok   no sanitizer reports in portcullisd.log"
	passed=$((passed + 1))
else
	echo "FAIL sanitizer reports in portcullisd.log:"
	echo "$reports" | head -n 40
	failed=$((failed + 1))
fi
if [ "$failed" -ne 0 ]; then
	echo "--- portcullisd.log (last 30 lines)"
	tail -n 30 "$log"
fi

awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "took %.1fs\n", b - a }'
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
