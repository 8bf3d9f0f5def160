"""Stopping cleanly: SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closed terminal) only set a flag, which
the training loop checks between episodes before it saves and exits 128 + the signal's number.

pong_pg.py imports this module before anything else, so that a stop at any moment of start-up ends
the same clean way (a module of its own, because it must load in a few milliseconds: no numpy).
Output that cannot be written (a full disk, a closed pipe) must not stop training either:
OutputThatNeverStops drops it.
"""
import atexit
import contextlib
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
    def arrived(cls):
        """Whether a stop signal has arrived (the loops and watching check it between steps)."""
        return cls.signum is not None

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


class OutputThatNeverStops:
    """sys.stdout or sys.stderr, such that output which cannot be written (a full disk under
    `> train.log`, a closed pipe) is dropped instead of raising: a print must never end a night of
    training. What the stream takes again once the disk has room is written as usual."""

    def __init__(self, stream):
        self.stream, self.failed = stream, False

    def write(self, text):
        try:
            return self.stream.write(text)
        except (OSError, ValueError):                  # ENOSPC, EPIPE, EIO; ValueError: the stream is closed
            self.failed = True
            return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except (OSError, ValueError):
            self.failed = True

    def __getattr__(self, name):                       # isatty, fileno, encoding, ...: the stream's own
        return getattr(self.stream, name)

    @classmethod
    def install(cls):
        """Wrap sys.stdout and sys.stderr (once). At exit, a stream that still cannot be written is
        pointed at the null device, so that Python's own last flush cannot fail the exit code."""
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None and not isinstance(stream, cls):
                setattr(sys, name, cls(stream))
        atexit.register(cls.quiet_at_exit)

    @staticmethod
    def quiet_at_exit():
        for stream in (sys.stdout, sys.stderr):
            if not isinstance(stream, OutputThatNeverStops):
                continue
            stream.flush()
            if stream.failed:
                try:
                    stream.stream.flush()
                except (OSError, ValueError):
                    with contextlib.suppress(OSError, ValueError, AttributeError):
                        null = os.open(os.devnull, os.O_WRONLY)
                        os.dup2(null, stream.stream.fileno())
                        os.close(null)
