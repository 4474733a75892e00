#!/bin/sh
# Install the Debian packages Portcullis needs to build and test, if missing.
# Safe to run again: it installs only what is absent. Needs root to install.
set -e
pkgs="make gcc libc6-dev pkg-config libmilter-dev libcunit1-dev libhiredis-dev libevent-dev libcrypt-dev libssl-dev libgsasl-dev gsasl openssl postfix miltertest swaks libnet-ssleay-perl curl redis-server dnsmasq-base python3 python3-prometheus-client dovecot-imapd libmaxminddb-dev tor-geoipdb libmaxmind-db-writer-perl libpcre2-dev dovecot-sieve"
# dovecot-pop3d: the POP3 core is compared with Dovecot's pop3 on one store (tests/integration/test_pop3_dovecot.py)
pkgs="$pkgs dovecot-pop3d"
# isync (mbsync) and mutt: real IMAP clients syncing and reading through the IMAP door (tests/integration/test_imap.py)
pkgs="$pkgs isync mutt"
# libgmime-3.0-dev: the MIME parser behind IMAP FETCH/SEARCH (pop-imap-proxy/imap_mime.c)
pkgs="$pkgs libgmime-3.0-dev"
# fetchmail: a real POP3 client against the POP3 door (tests/integration/test_pop3.py)
pkgs="$pkgs fetchmail"
# strace: holds the pid file's write to show it is never seen empty (tests/integration/test_cli.py PidFile)
pkgs="$pkgs strace"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "deps: missing packages:$missing" >&2
	echo "deps: run 'make deps' as root (or apt-get install them)" >&2
	exit 1
fi
echo "deps: installing missing packages:$missing"
export DEBIAN_FRONTEND=noninteractive
# Postfix asks how to configure itself: we run private instances only.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "deps: done"
