"""The shared main() of every test file: run the cases, print "N passed, N
failed" as the last line, exit status 1 on any failure.

    if __name__ == "__main__":
        sys.exit(runner.main())                     # every TestCase in __main__
        sys.exit(runner.main(cases=[T01, T02]))     # these, in this order

Names on the command line (Class or Class.test_name) run just those.  After
the run every harness Daemon still running is stopped; a sanitizer report in
any daemon's log, or a problem returned by final_checks(), counts as a
failure; the daemons' directories are removed unless the run failed
(or KEEP_LAB=1).  suite: a TestSuite, or f(names or None) -> tests, instead of
cases.  require: binaries under PORTCULLIS_BIN that must exist; tools:
absolute paths of other programs that must exist.
"""

import os
import sys
import time
import unittest

from . import daemon


class CountingResult(unittest.TextTestResult):
    """Counts tests that passed, and failing test ids once each (a test that
    fails and then errors in tearDown is one failure)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.passed = 0

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1

    def failed_ids(self):
        """A failing setUpClass/tearDownClass counts as one failure."""
        ids = set()
        for t, _ in self.failures + self.errors:
            t = getattr(t, "test_case", t)
            ids.add(t.id() if hasattr(t, "id") else str(t))
        ids.update(t.id() for t in self.unexpectedSuccesses)
        return ids


def main(argv=None, cases=None, suite=None, module="__main__", require=("portcullisd", "portcullis"),
         tools=(), always=(), final_checks=None, cleanup=None, verbosity=2):
    argv = sys.argv[1:] if argv is None else argv
    miss = daemon.missing(require) + [t for t in tools if not os.access(t, os.X_OK)]
    if miss:
        print("missing: %s (run make first / install the package)" % ", ".join(miss),
              file=sys.stderr)
        print("0 passed, 1 failed", flush=True)
        return 1
    mod = sys.modules[module]
    names = [a for a in argv if not a.startswith("-")]
    if "-q" in argv:
        verbosity = 1
    loader = unittest.TestLoader()
    given, suite = suite, unittest.TestSuite()
    if names and given is not None and callable(given):
        suite.addTests(given(names))
    elif names:
        for n in names:
            suite.addTests(loader.loadTestsFromName(n, mod))
        for cls in always:
            suite.addTests(loader.loadTestsFromTestCase(cls))
    elif given is not None:
        suite.addTests(given(None) if callable(given) else given)
    elif cases is not None:
        for cls in cases:
            suite.addTests(loader.loadTestsFromTestCase(cls))
    else:
        suite.addTests(loader.loadTestsFromModule(mod))
    t0 = time.monotonic()
    result = None
    problems = []
    try:
        result = unittest.TextTestRunner(stream=sys.stdout, verbosity=verbosity,
                                         resultclass=CountingResult).run(suite)
        if final_checks is not None:
            problems += list(final_checks())
    finally:
        if cleanup is not None:
            cleanup()
        for name, path, bad in daemon.sweep():
            problems.append("sanitizer report in %s (%s): %s" % (name, path, bad[:3]))
    for p in problems:
        print("FAIL (final check): %s" % p)
    failed = len(result.failed_ids()) + len(problems)
    # the directories of a failing run stay for reading (KEEP_LAB=1: always)
    keep = bool(failed) or os.environ.get("KEEP_LAB") == "1"
    for d in daemon.DAEMONS:
        if keep and d.own_dir and os.path.isdir(d.dir):
            sys.stderr.write("kept %s (%s: config, log, state)\n" % (d.dir, d.name))
        d.close(keep=keep)
    print("%d skipped; %.1fs (PORTCULLIS_BIN=%s)" % (len(result.skipped),
                                                    time.monotonic() - t0, daemon.BIN))
    print("%d passed, %d failed" % (result.passed, failed), flush=True)
    return 1 if failed or not result.wasSuccessful() else 0
