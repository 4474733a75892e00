#!/bin/sh
# tests/bench/run.sh - the benchmarks behind `make bench` (not run by CI).
# Run from the repository root after the binaries are built:
#   1. bin/bench-engine (if built): the rule engine alone, prints its figures
#   2. bin/geoip-bench (if built): GeoIP lookups on the country database
#      `make run` builds from tor-geoipdb (built into build/ here if absent)
#   3. bin/sieve-bench (if built): Sieve evaluations per second, a 100-rule
#      server script on a 20 KB message, one core
#   4. tests/bench/postfix_throughput.py: Postfix + smtp-sink + smtp-source,
#      no milter / bin/null-milter / bin/portcullisd (needs root)
# Extra arguments are passed to postfix_throughput.py (e.g. --repeats 1).
# Exits non-zero as soon as a step fails.
set -eu

cd "$(dirname "$0")/../.."
BIN=${PORTCULLIS_BIN:-bin}

if [ -x "$BIN/bench-engine" ]; then
	echo "== engine: $BIN/bench-engine"
	"$BIN/bench-engine" || { echo "bench: $BIN/bench-engine failed" >&2; exit 1; }
	echo
else
	echo "== engine: $BIN/bench-engine not built, skipped"
fi

if [ -x "$BIN/geoip-bench" ]; then
	geo=build/GeoIP-country.mmdb
	if [ ! -s "$geo" ] || [ /usr/share/tor/geoip -nt "$geo" ]; then
		mkdir -p build
		perl scripts/geoip-mmdb.pl "$geo" /usr/share/tor/geoip /usr/share/tor/geoip6 ||
			{ echo "bench: cannot build $geo (make deps: tor-geoipdb)" >&2; exit 1; }
	fi
	echo "== GeoIP: $BIN/geoip-bench $geo"
	"$BIN/geoip-bench" "$geo" || { echo "bench: $BIN/geoip-bench failed" >&2; exit 1; }
	echo
else
	echo "== GeoIP: $BIN/geoip-bench not built, skipped"
fi

if [ -x "$BIN/sieve-bench" ]; then
	echo "== Sieve: $BIN/sieve-bench"
	"$BIN/sieve-bench" 1 || { echo "bench: $BIN/sieve-bench failed" >&2; exit 1; }
	echo
else
	echo "== Sieve: $BIN/sieve-bench not built, skipped"
fi

echo "== Postfix throughput: python3 tests/bench/postfix_throughput.py $*"
python3 tests/bench/postfix_throughput.py "$@" || {
	echo "bench: postfix_throughput.py failed" >&2
	exit 1
}
