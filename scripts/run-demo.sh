#!/bin/sh
# Run portcullisd in the foreground on the demo configuration, with its state
# (lists, pid file) under ./run. Ctrl-C stops it.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$top/run"
echo "portcullisd: milter on inet:127.0.0.1:8891, lists in $top/run/lists"
echo "  attach Postfix:  postconf -e 'smtpd_milters = inet:127.0.0.1:8891' 'milter_default_action = tempfail'"
echo "  kill list:       bin/portcullis -c etc/portcullis.conf.demo -o state_dir=$top/run kill add 192.0.2.1"
echo "  dry run:         bin/portcullis -c etc/portcullis.conf.demo -o state_dir=$top/run explain --client 198.51.100.7 --from a@example.org --rcpt b@example.net"
exec "$top/bin/portcullisd" -c "$top/etc/portcullis.conf.demo" -o "state_dir=$top/run" -f
