"""Stop signals that are never lost between the moment they arrive and the moment work becomes permanent.

Python runs a signal handler between bytecodes of the main thread, and an exception raised inside a weakref
callback or a __del__ (the import system runs both) is printed as "Exception ignored" and dropped: a Ctrl-C that
lands there lets the command run on, write its output and exit 0. So the command line's handlers note the signal
here as well as raising it, and the places that make work permanent (atomic.py's commits) call `raise_if_stopped`,
which raises it again: after Ctrl-C or SIGTERM nothing is committed, whether or not the first raise got through.
A signal that lands while a module is being imported is not raised there at all but sent again a moment later.
"""

from __future__ import annotations

import os
import signal
import threading

_received: int | None = None  # the first stop signal this process was sent, once handlers are installed
_raised = False  # whether it was raised: a re-delivery scheduled before then is not sent after it
REDELIVERY_S = 0.1  # how soon a signal that landed inside an import is sent again


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so outputs and workers are cleaned up."""


def _stop(signum, frame) -> None:
    global _received
    if _received is None:
        _received = signum
    if _inside_import(frame):
        # An exception raised while a module initializes can abort the process from native code (torch's
        # import, interrupted, ended in SIGABRT) or be dropped by the import system; the signal is sent again
        # shortly, until it lands outside every import.
        timer = threading.Timer(REDELIVERY_S, _redeliver, args=(signum,))
        timer.daemon = True
        timer.start()
        return
    _raise(signum)


def _redeliver(signum: int) -> None:
    if not _raised:  # raise_if_stopped may have raised it meanwhile; a second one would cut into the cleanup
        os.kill(os.getpid(), signum)


def _raise(signum: int) -> None:
    global _raised
    _raised = True
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _inside_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def install_stop_handlers() -> None:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM raises Terminated in the main thread; both are remembered."""
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)


def received_stop_signal() -> int | None:
    """The first stop signal this process was sent (SIGINT or SIGTERM), or None."""
    return _received


def raise_if_stopped() -> None:
    """Raise the stop signal this process was sent, if any (a no-op where no handler was installed)."""
    if _received is not None:
        _raise(_received)
