"""Stopping cleanly: SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closed terminal) only set a flag, which
the training loop checks between episodes before it saves and exits 128 + the signal's number.

pong_pg.py imports this module before anything else, so that a stop at any moment of start-up ends
the same clean way (a module of its own, because it must load in a few milliseconds: no numpy).
"""
import os
import signal
import sys


class Stop:
    """The signal that asked us to stop (SIGINT, SIGTERM, SIGHUP), or None. Training checks it between
    episodes, then saves and exits 128 + the signal's number. Caught before anything else loads, so
    that a stop at any moment of start-up ends the same clean way."""
    signum = None
    SIGNALS = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])

    @classmethod
    def handler(cls, signum, frame):
        cls.signum = signum
        if signum == getattr(signal, "SIGHUP", None):
            cls.silence_closed_terminal()

    @staticmethod
    def silence_closed_terminal():
        """After SIGHUP the terminal may be gone, and writing to it fails: print to nowhere instead."""
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            try:
                if stream.isatty():
                    setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 (replaces the stream for good)
            except (OSError, ValueError):
                pass

    @classmethod
    def catch(cls):
        """From now on the stop signals set Stop.signum. A SIGHUP that is ignored already (nohup)
        stays ignored."""
        for signum in cls.SIGNALS:
            if signum == getattr(signal, "SIGHUP", None) and signal.getsignal(signum) == signal.SIG_IGN:
                continue
            signal.signal(signum, cls.handler)
