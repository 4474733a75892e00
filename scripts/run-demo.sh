#!/bin/sh
# Run portcullisd in the foreground on the demo configuration, with its state
# (lists, users, Maildir store, pid file) under ./run. Ctrl-C stops it.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
conf="$top/etc/portcullis.conf.demo"
pc="$top/bin/portcullis -c $conf -o state_dir=$top/run"
mkdir -p "$top/run"
if ! $pc user list 2>/dev/null | grep -q '^demo@example.com$'; then
	echo "demo-password" | $pc user add demo@example.com --password-stdin >/dev/null
	echo "created user demo@example.com (password: demo-password)"
fi
cat <<EOT
portcullisd: SMTP gateway on 127.0.0.1:2525, milter on 127.0.0.1:8891, state in $top/run
  send a message:  swaks --server 127.0.0.1:2525 --to demo@example.com --from you@example.org
  it lands in:     $top/run/mail/example.com/demo/Maildir/new/
  kill list:       $pc kill add 192.0.2.1
  dry run:         $pc explain --client 198.51.100.7 --from a@example.org --rcpt b@example.net
  attach Postfix:  postconf -e 'smtpd_milters = inet:127.0.0.1:8891' 'milter_default_action = tempfail'
EOT
exec "$top/bin/portcullisd" -c "$conf" -o "state_dir=$top/run" -f
