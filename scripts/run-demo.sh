#!/bin/sh
# Run portcullisd in the foreground on the demo configuration, with its state
# (lists, users, Maildir store, pid file) under ./run. Ctrl-C stops it.
set -e
top=$(cd "$(dirname "$0")/.." && pwd)
conf="$top/etc/portcullis.conf.demo"
pc="$top/bin/portcullis -c $conf -o state_dir=$top/run"
mkdir -p "$top/run"
# the client's country: a MaxMind-format database built from Debian's
# tor-geoipdb (IPFire Location data, CC BY-SA 4.0), rebuilt when that updates
geo="$top/run/GeoIP-country.mmdb"
if [ ! -s "$geo" ] || [ /usr/share/tor/geoip -nt "$geo" ] || [ /usr/share/tor/geoip6 -nt "$geo" ]; then
	if [ ! -r /usr/share/tor/geoip ] || [ ! -r /usr/share/tor/geoip6 ]; then
		echo "run-demo: /usr/share/tor/geoip{,6} missing: run 'make deps' (tor-geoipdb)" >&2
		exit 1
	fi
	t0=$(date +%s)
	perl "$top/scripts/geoip-mmdb.pl" "$geo" /usr/share/tor/geoip /usr/share/tor/geoip6
	echo "built $geo from tor-geoipdb in $(( $(date +%s) - t0 ))s (IPFire Location data, CC BY-SA 4.0)"
fi
# the demo's TLS certificate (STARTTLS, STLS, pop3s, imaps): self-signed, for loopback
if [ ! -s "$top/run/demo-cert.pem" ] || [ ! -s "$top/run/demo-key.pem" ]; then
	openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=mx.example.com \
	    -keyout "$top/run/demo-key.pem" -out "$top/run/demo-cert.pem" 2>/dev/null
	echo "made a self-signed demo certificate in $top/run/demo-cert.pem"
fi
if ! $pc user list 2>/dev/null | grep -q '^demo@example.com$'; then
	echo "demo-password" | $pc user add demo@example.com --password-stdin >/dev/null
	echo "created user demo@example.com (password: demo-password)"
fi
cat <<EOT
portcullisd: SMTP gateway on 127.0.0.1:2525, POP3 on 127.0.0.1:1110 (pop3s 1995),
IMAP on 127.0.0.1:1143 (imaps 1993), milter on 127.0.0.1:8891, state in $top/run
  send a message:  swaks --server 127.0.0.1:2525 --to demo@example.com --from you@example.org
  it lands in:     $top/run/mail/example.com/demo/Maildir/new/
  read it (IMAP):  curl -k --ssl-reqd -u demo@example.com:demo-password 'imap://127.0.0.1:1143/INBOX/;UID=1'
  read it (POP3):  curl -k --ssl-reqd -u demo@example.com:demo-password pop3://127.0.0.1:1110/1
  kill list:       $pc kill add 192.0.2.1
  by country:      $pc kill add country:XX   (client countries from $geo)
  dry run:         $pc explain --client 198.51.100.7 --from a@example.org --rcpt b@example.net
  attach Postfix:  postconf -e 'smtpd_milters = inet:127.0.0.1:8891' 'milter_default_action = tempfail'
EOT
exec "$top/bin/portcullisd" -c "$conf" -o "state_dir=$top/run" -f
