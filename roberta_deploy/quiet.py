"""Silencing chatty build libraries (NNCF's progress bars and logger, ONNX Runtime's root-logger advice)
for the calling thread only.

The library must not print, but it also must not change what the rest of the process sees: a server
may log from other threads while a build runs. So instead of lowering a logger's level, filtering the
root logger for everyone or swapping sys.stdout, records and writes are dropped only when they come
from the thread that asked for quiet.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Iterator

from .logs import third_party_output_wanted

_lock = threading.Lock()
_quiet_threads: dict[int, int] = {}  # thread ident -> nesting depth
_installed: dict[str, object] = {}  # stream name -> the stream it wraps, while any thread is quiet


class _QuietForSomeThreads:
    """Stands in for sys.stdout/sys.stderr: drops writes from quiet threads, passes every other through."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        if threading.get_ident() in _quiet_threads:
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _FromThread(logging.Filter):
    def __init__(self, ident: int, below: int):
        super().__init__()
        self.ident, self.below = ident, below

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.thread == self.ident and record.levelno < self.below)


@contextlib.contextmanager
def quiet_in_this_thread(logger_names: tuple[str, ...] = (), below: int = logging.ERROR) -> Iterator[None]:
    """Drop this thread's records below `below` on `logger_names` ("" is the root logger) and its writes to
    stdout/stderr; other threads are untouched. Nests, and works from several threads at once. Nothing is
    dropped when the application wants that output (roberta_deploy's logger enabled at INFO, e.g. `-v`)."""
    if third_party_output_wanted():
        yield
        return
    ident = threading.get_ident()
    # The logger's own filter sees records logged on it; its handlers' filters also see its children's.
    loggers = [logging.getLogger(name or None) for name in logger_names]
    loggers += [handler for logger in loggers for handler in logger.handlers]
    record_filter = _FromThread(ident, below)
    with _lock:
        _quiet_threads[ident] = _quiet_threads.get(ident, 0) + 1
        for name in ("stdout", "stderr"):
            if name not in _installed:
                _installed[name] = getattr(sys, name)
                setattr(sys, name, _QuietForSomeThreads(_installed[name]))
    for filterer in loggers:
        filterer.addFilter(record_filter)
    try:
        yield
    finally:
        for filterer in loggers:
            filterer.removeFilter(record_filter)
        with _lock:
            _quiet_threads[ident] -= 1
            if not _quiet_threads[ident]:
                del _quiet_threads[ident]
            if not _quiet_threads:  # the last quiet thread puts the streams back, unless someone replaced them
                for name, stream in list(_installed.items()):
                    if isinstance(getattr(sys, name), _QuietForSomeThreads):
                        setattr(sys, name, stream)
                    del _installed[name]
