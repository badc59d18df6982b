"""Ctrl-C and SIGTERM that no library can swallow.

scvi-tools' and Lightning's training loops catch exceptions around their steps, and a JAX callback
can swallow a KeyboardInterrupt: a command could then go on, save a model and exit 0 after the user
pressed Ctrl-C. :func:`watching` records every SIGINT/SIGTERM in a flag besides raising
KeyboardInterrupt, and :func:`check_interrupt`, called before anything is saved, raises again if
one was seen, so an interrupted command saves nothing and the CLI's boundary reports "interrupted"
(exit 130) whatever exception the library turned the interrupt into. A leaf module: it imports
nothing of ours.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

_STATE: dict[str, Any] = {"hit": False, "said": False, "signal": None}


def interrupted() -> bool:
    """Whether a SIGINT or SIGTERM arrived while :func:`watching` was active."""
    return _STATE["hit"]


def interrupt_signal() -> str | None:
    """The name of the last signal :func:`watching` recorded (``SIGINT``, ``SIGTERM``), or None."""
    return _STATE["signal"]


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if an interrupt arrived, even if a library swallowed it."""
    if _STATE["hit"]:
        raise KeyboardInterrupt


def announce() -> None:
    """Write "interrupted" on stderr, once per :func:`watching` block however many boundaries see it."""
    if not _STATE["said"]:
        _STATE["said"] = True
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()


def _handler(signum: int, frame: Any) -> None:
    _STATE["hit"], _STATE["signal"] = True, signal.Signals(signum).name
    if frame is not None and "gc_callback" in frame.f_code.co_name:
        # raised inside a garbage-collector callback (JAX registers one) the exception would only be
        # printed as "ignored": deliver the signal again once the callback has returned
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def watching() -> Iterator[None]:
    """Record SIGINT/SIGTERM (and raise KeyboardInterrupt on them) for the duration of the block; the
    flag starts clear. In a thread other than the main one, signals cannot be handled: a no-op."""
    _STATE.update(hit=False, said=False, signal=None)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
