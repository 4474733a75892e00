"""A private Dovecot (dovecot-imapd, dovecot-pop3d) on loopback, for the
differential tests and the benches that compare Portcullis with Dovecot on
the same Maildir store.

    dc = Dovecot(workdir, store="/path/store", protocols=("imap", "pop3"),
                 users={"u@example.com": "{PLAIN}pw"}, tls=(cert, key),
                 env={"TZ": "UTC"})    # env: added to dovecot's environment
    dc.start()            # waits until every listener accepts
    dc.imap_port, dc.imaps_port, dc.pop3_port, dc.pop3s_port   (0: not enabled)
    dc.imap(user, pw)     # a logged-in imaplib.IMAP4
    dc.pids()             # the master and its children (imap, pop3, auth ...)
    dc.stop()

The store is Maildir++ as the gateway writes it: STORE/DOMAIN/LOCAL/Maildir,
the layout `mail_location = maildir:STORE/%d/%n/Maildir` gives. Passwords are
passwd-file entries in any Dovecot scheme ({PLAIN}x, {CRYPT}$y$..., the
{SCRAM-SHA-256}... keys Portcullis' users file holds). Mail is read as the
store's owner (the user "nobody" when the tests run as root). Everything this
class starts is stopped at interpreter exit and on SIGTERM/SIGHUP (harness.util).
"""

import imaplib
import os
import pwd
import shutil
import subprocess

from . import util
from .ports import free_port, port_accepts
from .util import HarnessError, wait_until

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def installed(protocols=("imap",)):
    """True when the dovecot binary and each protocol's package are there"""
    if not os.access(DOVECOT, os.X_OK):
        return False
    libexec = "/usr/lib/dovecot"
    return all(os.path.exists(os.path.join(libexec, p)) for p in protocols)


class Dovecot:
    def __init__(self, workdir, store=None, protocols=("imap",), users=None, tls=None,
                 mechanisms="plain login", extra_conf="", name="dovecot", env=None):
        self.base = os.path.join(workdir, name)
        self.store = store or os.path.join(self.base, "store")
        self.protocols = tuple(protocols)
        self.users = dict(users or {})
        self.tls = tls                   # (cert_file, key_file) or None
        self.mechanisms = mechanisms
        self.extra_conf = extra_conf
        self.env = dict(os.environ, **env) if env else None
        self.log = os.path.join(self.base, "dovecot.log")
        self.proc = None
        pw = pwd.getpwnam("nobody") if os.getuid() == 0 else pwd.getpwuid(os.getuid())
        self.mail_user = pw.pw_name
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        want = lambda p, t: free_port() if p in self.protocols and (t or tls) else 0  # noqa
        self.imap_port = want("imap", True)
        self.imaps_port = want("imap", False)
        self.pop3_port = want("pop3", True)
        self.pop3s_port = want("pop3", False)

    def config(self):
        b = self.base
        internal = ""
        if os.getuid() != 0:
            internal = "default_internal_user = %s\ndefault_login_user = %s\n" % (
                self.mail_user, self.mail_user)
        if self.tls:
            ssl = "ssl = yes\nssl_cert = <%s\nssl_key = <%s\n" % self.tls
        else:
            ssl = "ssl = no\n"
        listeners = ""
        for proto, plain, tls in (("imap", self.imap_port, self.imaps_port),
                                  ("pop3", self.pop3_port, self.pop3s_port)):
            if proto not in self.protocols:
                continue
            listeners += """service {p}-login {{
  inet_listener {p} {{
    address = 127.0.0.1
    port = {plain}
  }}
  inet_listener {p}s {{
    address = 127.0.0.1
    port = {tls}
  }}
}}
""".format(p=proto, plain=plain, tls=tls)
        return """# private Dovecot (tests/harness/dovecot.py): loopback only
protocols = {protocols}
listen = 127.0.0.1
base_dir = {b}/run
state_dir = {b}/state
log_path = {b}/dovecot.log
{ssl}disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
mail_location = maildir:{store}/%d/%n/Maildir
mail_uid = {uid}
mail_gid = {gid}
first_valid_uid = {uid}
last_valid_uid = 0
first_valid_gid = 0
{internal}
namespace inbox {{
  inbox = yes
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {b}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid}
}}
{listeners}{extra}
""".format(b=b, protocols=" ".join(self.protocols), ssl=ssl, mechanisms=self.mechanisms,
           store=self.store, uid=self.uid, gid=self.gid, internal=internal,
           listeners=listeners, extra=self.extra_conf)

    def ports(self):
        return [p for p in (self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port) if p]

    def start(self):
        util.register(self)
        for d in ("run", "state"):
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
        os.makedirs(self.store, exist_ok=True)
        os.chmod(self.base, 0o755)
        if os.getuid() == 0:
            for top, dirs, files in os.walk(self.store):
                for n in [top] + [os.path.join(top, x) for x in dirs + files]:
                    os.lchown(n, self.uid, self.gid)
        with open(os.path.join(self.base, "passwd"), "w") as f:
            for u, secret in self.users.items():
                f.write("%s:%s\n" % (u, secret))
        conf = os.path.join(self.base, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(self.config())
        with open(os.path.join(self.base, "dovecot.err"), "w") as err:
            self.proc = subprocess.Popen([DOVECOT, "-F", "-c", conf], stdout=subprocess.DEVNULL,
                                         stderr=err, stdin=subprocess.DEVNULL, env=self.env)
        try:
            wait_until(lambda: self.proc.poll() is not None or
                       all(port_accepts("127.0.0.1", p) for p in self.ports()),
                       20, what="dovecot listening")
        except HarnessError:
            self.close()
            raise
        if self.proc.poll() is not None:
            raise HarnessError("dovecot exited: %s %s" % (
                util.read(os.path.join(self.base, "dovecot.err")), util.tail(self.log)))
        return self

    def pids(self):
        if self.proc is None:
            return []
        return [self.proc.pid] + util.proc_children(self.proc.pid)

    def imap(self, user, password, tls=False):
        if tls:
            c = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, timeout=15)
        else:
            c = imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=15)
        typ, _ = c.login(user, password)
        if typ != "OK":
            raise HarnessError("dovecot login %s: %s" % (user, typ))
        return c

    def maildir(self, user, folder="INBOX"):
        local, domain = user.split("@")
        md = os.path.join(self.store, domain, local, "Maildir")
        return md if folder == "INBOX" else os.path.join(md, "." + folder)

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self):
        self.stop()
        util.unregister(self)
