"""What a command does to the process it runs in, for as long as it runs: the library's log
messages on stderr, and SIGTERM / SIGHUP stopping it as Ctrl-C does. Process-wide state is
the command's to change (a library call never changes it), and it is restored after."""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading


@contextlib.contextmanager
def library_messages(quiet=False):
    """Show the library's messages (logging.getLogger("xpnn"): early stopping and the like)
    on stderr while a command runs, as `xpnn: message`; with --quiet only warnings. The
    Solver's epoch lines are left out: the command prints them itself (or, --quiet, not)."""
    logger = logging.getLogger("xpnn")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("xpnn: %(message)s"))
    handler.addFilter(lambda record: not hasattr(record, "printed"))
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


STOP_SIGNALS = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM (`kill`, a job's time limit) and SIGHUP (a closed terminal) raise
    KeyboardInterrupt inside, so that a command stops as on Ctrl-C, keeping what it saved and
    saying how to go on; yields the list that receives the signal's number (a second signal
    changes nothing). Only where they have their default action: `nohup`'s SIG_IGN, or an
    embedding program's own handler, keeps its say; the handlers are restored after."""
    received = []

    def stop(signum, frame):
        if not received:
            received.append(signum)
            raise KeyboardInterrupt
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {number: signal.signal(number, stop) for number in STOP_SIGNALS
                    if signal.getsignal(number) is signal.SIG_DFL}
    try:
        yield received
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
