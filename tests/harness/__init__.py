"""tests/harness: the one set of helpers every integration test and bench uses.

    ports     free_port(), free_ports(n), port_accepts(), wait_port(), ipv6_loopback_usable()
    util      HarnessError, wait_until(), file/log readers, pid helpers, cleanup on exit
    daemon    Daemon: portcullisd (or any binary under PORTCULLIS_BIN) with a config
              from keyword overrides, readiness wait, log capture, sanitizer-log scan,
              clean stop with a timeout; BIN, exe(), run_bin(), SANITIZER_RE
    fakesmtp  Wire (server side of a socket), FakeSMTP: a scriptable, recording SMTP server
    client    SmtpClient (smtplib, bound to a source address, never raises), make_message()
    postfix   Lab: a private Postfix + smtp-sink (+ portcullisd as a milter); Postfix
    dovecot   Dovecot: a private Dovecot (IMAP, POP3, optional TLS) on a given Maildir store
    load      Load: N SMTP clients sending verified messages; Killer: SIGKILLs the worker
    runner    main(): run the module's unittest cases, print "N passed, N failed" last

A test file finds the package with

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from harness import daemon, ports, runner      # (tests/ on the path)

Environment: PORTCULLIS_BIN (directory of portcullisd and portcullis, default <repo>/bin),
KEEP_LAB=1 (keep every temporary directory), LAB_VERBOSE=1 (print SMTP steps).
"""
