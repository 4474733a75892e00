#!/usr/bin/python3
"""SASL on GNU SASL, with GNU SASL's own command-line client (gsasl) as the
real peer, plus a hand-made SCRAM client (python hashlib) for what gsasl
will not do on purpose:
    T01Scram      gsasl --smtp -m PLAIN, LOGIN, CRAM-MD5 log in (and not with
                  a wrong password); -m SCRAM-SHA-256 logs in over STARTTLS and
                  without TLS; a wrong password is 535 and pays the penalty
                  (auth_failure_delay); a tampered ClientProof is 535; an
                  unknown user gets a salt and a 535 like anyone; the users
                  file holds Dovecot's {SCRAM-SHA-256}4096,salt,StoredKey,
                  ServerKey (checked against PBKDF2 here) and no plaintext
                  equivalent; a user without SCRAM keys (made before SCRAM)
                  still logs in with PLAIN, not SCRAM, until `user passwd`
    T02External   tls_verify_client = optional, auth_mechanisms with
                  EXTERNAL: a client certificate whose subject CN, or whose
                  subjectAltName email, is a user logs in with gsasl -m
                  EXTERNAL; EHLO offers EXTERNAL only with a verified
                  certificate; without one AUTH EXTERNAL is 504; a verified
                  certificate of nobody in the users file is 535
Reuses test_smtp_tls_auth's work area, daemon launcher and smtplib client.
Run:  python3 tests/integration/test_smtp_sasl.py [Class[.test]]...
Environment: PORTCULLIS_BIN (default <repo>/bin), KEEP_LAB=1.  Last line
"N passed, N failed"; exit status 1 on a failure or a sanitizer report.
"""
import base64
import hashlib
import hmac
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_smtp_tls_auth as tls  # noqa: E402  (work area, Daemon, Client, main)

USER = tls.USER
PASSWORD = tls.PASSWORD
W = None


def setUpModule():
    global W
    W = tls.Work()
    tls.W = W


def daemon(name, **conf):
    conf.setdefault("users", "file:" + os.path.join(W.dir, "users-" + name))
    d = tls.Daemon(W, name, **conf)
    W.add_user(d.conf, USER, PASSWORD)
    return d


def gsasl(port, mech, user=None, password=None, tls_mode="--starttls", cert=None, key=None,
          timeout=30):
    """gsasl as an SMTP client: (exit status, seconds, output)"""
    argv = ["gsasl", "--smtp", "--mechanism", mech, "--verbose", "--no-cb",
            "--x509-ca-file=", "--hostname", tls.MYHOSTNAME, tls_mode]
    if user is not None:
        argv += ["--authentication-id", user]
    if password is not None:
        argv += ["--password", password]
    if cert:
        argv += ["--x509-cert-file", cert, "--x509-key-file", key]
    argv += ["127.0.0.1", str(port)]
    t0 = time.monotonic()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    return p.returncode, time.monotonic() - t0, "$ %s\n%s" % (" ".join(argv), out)


def scram_client(c, user, password, tamper=False):
    """RFC 5802/7677 by hand over a tls.Client: the final reply (code, text)"""
    cnonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = "n=%s,r=%s" % (user.replace("=", "=3D").replace(",", "=2C"), cnonce)
    code, text = c.cmd("AUTH SCRAM-SHA-256 " + tls.b64("n,," + first_bare))
    if code != 334:
        return code, text
    sf = base64.b64decode(text).decode()
    f = dict(kv.split("=", 1) for kv in sf.split(","))
    if not f["r"].startswith(cnonce):
        return 0, "server nonce does not extend ours: " + sf
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(f["s"]),
                                 int(f["i"]))
    ckey = hmac.new(salted, b"Client Key", "sha256").digest()
    stored = hashlib.sha256(ckey).digest()
    without_proof = "c=biws,r=" + f["r"]
    am = ("%s,%s,%s" % (first_bare, sf, without_proof)).encode()
    sig = hmac.new(stored, am, "sha256").digest()
    proof = bytearray(a ^ b for a, b in zip(ckey, sig))
    if tamper:
        proof[0] ^= 1
    code, text = c.cmd(tls.b64(without_proof + ",p=" + base64.b64encode(bytes(proof)).decode()))
    if code != 334:
        return code, text
    skey = hmac.new(salted, b"Server Key", "sha256").digest()
    want = "v=" + base64.b64encode(hmac.new(skey, am, "sha256").digest()).decode()
    if base64.b64decode(text).decode() != want:
        return 0, "server signature wrong: " + text
    return c.cmd("")


class Case(tls.Case):
    def assertGsasl(self, res, ok, what):
        rc, _, out = res
        if (rc == 0) != ok:
            self.fail("%s: gsasl exited %d, want %s\n%s" % (what, rc, "0" if ok else "!= 0",
                                                               out[-3000:]))


# ============================================================ T01 SCRAM
class T01Scram(Case):
    @classmethod
    def setUpClass(cls):
        cls.users = os.path.join(W.dir, "users-scram")
        cls.d = daemon("scram", smtp_listen="auto", auth_failure_delay="1s",
                       auth_failure_delay_max="2s", auth_failure_ban="0")
        cls.d.start()

    def test_gsasl_scram_over_starttls(self):
        self.mark(self.d)
        res = gsasl(self.d.ports["smtp"], "SCRAM-SHA-256", USER, PASSWORD)
        self.assertGsasl(res, True, "SCRAM-SHA-256 over STARTTLS")
        self.assertRegex(self.log_since(self.d), r"AUTH SCRAM-SHA-256 as alice@example\.com")

    def test_gsasl_plain_login_cram_md5(self):
        # the other mechanisms through the same layer, same peer
        for mech in ("PLAIN", "LOGIN", "CRAM-MD5"):
            with self.subTest(mech=mech):
                self.mark(self.d)
                self.assertGsasl(gsasl(self.d.ports["smtp"], mech, USER, PASSWORD), True, mech)
                self.assertRegex(self.log_since(self.d), r"AUTH %s as alice@example\.com" % mech)
                self.assertGsasl(gsasl(self.d.ports["smtp"], mech, USER, "nope"), False,
                                 mech + " wrong password")

    def test_gsasl_scram_without_tls(self):
        # no plaintext equivalent crosses the wire: offered before TLS too
        with tls.Client(self.d.ports["smtp"]) as c:
            _, _, mechs = c.ehlo()
        self.assertIn("SCRAM-SHA-256", mechs)
        self.assertNotIn("PLAIN", mechs)
        res = gsasl(self.d.ports["smtp"], "SCRAM-SHA-256", USER, PASSWORD, "--no-starttls")
        self.assertGsasl(res, True, "SCRAM-SHA-256 without TLS")

    def test_gsasl_wrong_password_535_after_the_penalty(self):
        self.mark(self.d)
        res = gsasl(self.d.ports["smtp"], "SCRAM-SHA-256", USER, PASSWORD + "!")
        self.assertGsasl(res, False, "wrong password")
        self.assertGreaterEqual(res[1], 0.9, "the 535 did not wait auth_failure_delay")
        log = self.log_since(self.d)
        self.assertRegex(log, r"AUTH failed for alice@example\.com; reason=auth-failed")
        # the same through our own client: the reply is 535 5.7.8
        with tls.Client(self.d.ports["smtp"]) as c:
            c.ehlo()
            self.assertReply(scram_client(c, USER, "guess"), 535, "5.7.8", c, "wrong password")
        # a success forgets the penalty
        self.assertGsasl(gsasl(self.d.ports["smtp"], "SCRAM-SHA-256", USER, PASSWORD), True,
                         "right password after failures")

    def test_tampered_proof_535(self):
        with tls.Client(self.d.ports["smtp"]) as c:
            c.ehlo()
            self.assertReply(scram_client(c, USER, PASSWORD, tamper=True), 535, "5.7.8", c,
                             "tampered proof")
        with tls.Client(self.d.ports["smtp"]) as c:
            c.ehlo()
            self.assertReply(scram_client(c, USER, PASSWORD), 235, "2.7.0", c,
                             "python SCRAM client, right password")

    def test_unknown_user_looks_like_anyone(self):
        salts = []
        for _ in range(2):
            with tls.Client(self.d.ports["smtp"]) as c:
                c.ehlo()
                code, text = c.cmd("AUTH SCRAM-SHA-256 " + tls.b64("n,,n=nobody@example.com,r=abc"))
                self.assertEqual(code, 334, c.transcript())
                salts.append(dict(kv.split("=", 1) for kv in
                                  base64.b64decode(text).decode().split(","))["s"])
                self.assertReply(c.cmd("*"), 501, "5.7.0", c, "cancel")
        self.assertEqual(salts[0], salts[1], "an unknown user's salt changes between tries")
        self.assertEqual(len(base64.b64decode(salts[0])), 16)
        with tls.Client(self.d.ports["smtp"]) as c:
            c.ehlo()
            self.assertReply(scram_client(c, "nobody@example.com", PASSWORD), 535, "5.7.8", c,
                             "unknown user")

    def test_base64_errors_and_cancel(self):
        with tls.Client(self.d.ports["smtp"]) as c:
            c.ehlo()
            self.assertReply(c.cmd("AUTH SCRAM-SHA-256"), 334, None, c, "no initial response")
            self.assertReply(c.cmd("not base64!"), 501, "5.5.2", c, "garbage")
            self.assertReply(c.cmd("AUTH SCRAM-SHA-256 =="), 501, "5.5.2", c, "bad initial")
            # the session goes on
            self.assertReply(scram_client(c, USER, PASSWORD), 235, "2.7.0", c, "then a login")

    def test_users_file_holds_dovecot_scram_keys(self):
        with open(self.users) as f:
            line = [l for l in f if l.startswith(USER + ":")][0]
        m = re.search(r"scram_sha_256=\{SCRAM-SHA-256\}(\d+),([A-Za-z0-9+/=]+),"
                      r"([A-Za-z0-9+/=]+),([A-Za-z0-9+/=]+)(\s|$)", line)
        self.assertIsNotNone(m, line)
        it, salt, stored, server = int(m.group(1)), *(base64.b64decode(m.group(k))
                                                     for k in (2, 3, 4))
        self.assertGreaterEqual(it, 4096)
        salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, it)
        self.assertEqual(stored, hashlib.sha256(hmac.new(salted, b"Client Key",
                                                         "sha256").digest()).digest())
        self.assertEqual(server, hmac.new(salted, b"Server Key", "sha256").digest())
        # never the password, never the salted password (a plaintext equivalent)
        self.assertNotIn(PASSWORD, line)
        self.assertNotIn(base64.b64encode(salted).decode(), line)
        self.assertNotIn(salted.hex(), line)

    def test_user_without_scram_keys_until_passwd(self):
        users = os.path.join(W.dir, "users-old")
        d = daemon("old", smtp_listen="auto", users="file:" + users, auth_failure_delay="0")
        # as a pre-SCRAM portcullis wrote it
        with open(users) as f:
            text = f.read()
        with open(users, "w") as f:
            f.write(re.sub(r"scram_sha_256=\S+ ?", "", text))
        d.start()
        try:
            self.assertGsasl(gsasl(d.ports["smtp"], "SCRAM-SHA-256", USER, PASSWORD), False,
                             "SCRAM for a user without keys")
            with tls.Client(d.ports["smtp"]) as c:
                c.ehlo()
                c.starttls()
                c.ehlo()
                self.assertReply(c.auth_plain(USER, PASSWORD), 235, "2.7.0", c,
                                 "PLAIN for a user without SCRAM keys")
            p = tls.run([os.path.join(tls.BIN, "portcullis"), "-c", d.conf, "user", "passwd",
                         USER, "--password-stdin"], stdin=None, input=PASSWORD + "\n")
            self.assertEqual(p.returncode, 0, p.stderr)
            with open(users) as f:
                self.assertIn("scram_sha_256={SCRAM-SHA-256}4096,", f.read())
            # the daemon picks the changed file up by itself
            ok = False
            for _ in range(30):
                if gsasl(d.ports["smtp"], "SCRAM-SHA-256", USER, PASSWORD)[0] == 0:
                    ok = True
                    break
                time.sleep(0.3)
            self.assertTrue(ok, "SCRAM after user passwd:\n%s" % d.log_text()[-2000:])
        finally:
            d.stop()


# ========================================================= T02 EXTERNAL
def make_user_certs(d, ca_crt, ca_key):
    """client certs under the test CA: CN = the user; CN other + SAN email =
    the user; CN of nobody. {name: (crt, key)}"""
    out = {}
    for name, subj, ext in (("cn", "/CN=" + USER, None),
                            ("san", "/CN=Alice Example", "subjectAltName=email:" + USER),
                            ("nobody", "/CN=nobody@example.com", None)):
        key, csr, crt = (os.path.join(d, "ext-%s.%s" % (name, s)) for s in ("key", "csr", "crt"))
        argv = ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", subj, "-keyout", key,
                "-out", csr]
        if ext:
            argv += ["-addext", ext]
        tls.openssl(*argv)
        tls.openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                    "-CAcreateserial", "-days", "2", "-copy_extensions", "copy", "-out", crt)
        os.chmod(key, 0o644)
        out[name] = (crt, key)
    return out


class T02External(Case):
    @classmethod
    def setUpClass(cls):
        cls.certs = make_user_certs(W.dir, W.pki["ca.crt"], W.pki["ca.key"])
        cls.d = daemon("external", smtp_listen="auto", smtps_listen="auto",
                       tls_client_ca_file=W.pki["ca.crt"], tls_verify_client="optional",
                       auth_mechanisms="PLAIN LOGIN SCRAM-SHA-256 EXTERNAL",
                       auth_failure_delay="0")
        cls.d.start()

    def test_gsasl_external_with_cn_certificate(self):
        self.mark(self.d)
        crt, key = self.certs["cn"]
        self.assertGsasl(gsasl(self.d.ports["smtp"], "EXTERNAL", cert=crt, key=key), True,
                         "EXTERNAL, CN = user")
        self.assertRegex(self.log_since(self.d), r"AUTH EXTERNAL as alice@example\.com")

    def test_gsasl_external_with_san_email_certificate(self):
        crt, key = self.certs["san"]
        self.assertGsasl(gsasl(self.d.ports["smtp"], "EXTERNAL", cert=crt, key=key), True,
                         "EXTERNAL, subjectAltName email = user")

    def test_external_offered_only_with_a_verified_certificate(self):
        crt, key = self.certs["cn"]
        with tls.Client(self.d.ports["smtp"], cert=crt, key=key) as c:
            c.ehlo()
            c.starttls()
            _, _, mechs = c.ehlo()
            self.assertIn("EXTERNAL", mechs, c.transcript())
            self.assertReply(c.cmd("AUTH EXTERNAL ="), 235, "2.7.0", c, "EXTERNAL")
        with tls.Client(self.d.ports["smtp"]) as c:
            _, _, mechs = c.ehlo()
            self.assertNotIn("EXTERNAL", mechs, "EXTERNAL before TLS")
            c.starttls()
            _, _, mechs = c.ehlo()
            self.assertNotIn("EXTERNAL", mechs, "EXTERNAL without a client certificate")
            self.assertReply(c.cmd("AUTH EXTERNAL ="), 504, "5.5.4", c, "no certificate")
        # a certificate under a CA we do not trust never gets this far
        rogue = (W.pki["rogue.crt"], W.pki["rogue.key"])
        self.assertGsasl(gsasl(self.d.ports["smtp"], "EXTERNAL", cert=rogue[0], key=rogue[1]),
                         False, "rogue CA")

    def test_certificate_of_nobody_535(self):
        crt, key = self.certs["nobody"]
        with tls.Client(self.d.ports["smtps"], implicit_tls=True, cert=crt, key=key) as c:
            c.ehlo()
            self.assertReply(c.cmd("AUTH EXTERNAL ="), 535, "5.7.8", c, "cert of nobody")
        # asking to act as another user is refused too
        crt, key = self.certs["cn"]
        with tls.Client(self.d.ports["smtps"], implicit_tls=True, cert=crt, key=key) as c:
            c.ehlo()
            self.assertReply(c.cmd("AUTH EXTERNAL " + tls.b64("bob@example.com")), 535, "5.7.8",
                             c, "authzid of another user")


CASES = [T01Scram, T02External]


if __name__ == "__main__":
    sys.exit(tls.main(cases=CASES, tools=(shutil.which("gsasl") or "/usr/bin/gsasl",)))
