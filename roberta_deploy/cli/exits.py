"""How the command line ends: typed errors to one line and an exit code, Ctrl-C to 130, SIGTERM to 143,
every exit bounded in time."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import signal
import sys
import threading
from typing import Callable

import typer
from rich.text import Text

from ..errors import RobertaDeployError
from ..interrupts import Terminated, raise_if_stopped, received_stop_signal
from ..flags import check_flags, checks_of
from .console import error_console

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_GRACE_S = 20.0  # once a command is done, how long the interpreter's own exit may take


def reports_errors(command: Callable) -> Callable:
    """Check the counts and durations the command declares beside its options (`flags.COUNT` and the like in
    each option's Annotated metadata), then run the command; turn library errors into `error: ... (fix: ...)`
    on stderr and the error's exit code, Ctrl-C into 130 and SIGTERM into 143, after the command's outputs and
    workers were cleaned up."""
    parameters = inspect.signature(command, eval_str=True).parameters
    checks = checks_of({name: parameter.annotation for name, parameter in parameters.items()})
    flag_names = {name: option_flag(parameters[name].annotation) for name in checks}

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            check_flags(kwargs, checks, flag_names)
            result = command(*args, **kwargs)
            raise_if_stopped()  # a signal a library swallowed after the last commit still ends with its code
            return result
        except RobertaDeployError as error:
            error_console.print(Text.assemble(("error:", "red"), " ", error.one_line()))
            code = error.exit_code
        except KeyboardInterrupt:
            code = stopped_by(signal.SIGINT)
        except Terminated:
            code = stopped_by(signal.SIGTERM)
        except Exception:
            # A library that runs our Python from native code can wrap the stop signal's exception in its own: torch's
            # ONNX tracer turned a Terminated raised inside a warning it was showing into a RuntimeError (CI, `run`
            # stopped while exporting). After a stop signal any such error is that signal's exit, not a traceback.
            stopped = received_stop_signal()
            if stopped is None:
                raise
            code = stopped_by(stopped)
        # Raised here, not inside the except blocks, where the Exit would carry the error as its __context__, and
        # with it the frames that hold the command's engines, into the interpreter's exit: engines are freed
        # while their libraries still run, not during finalization (where OpenVINO's can abort the process).
        if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
            end_within(EXIT_GRACE_S, code)
        raise typer.Exit(code)

    return wrapper


def stopped_by(sig: int) -> int:
    """Say that the command was stopped (its outputs were already cleaned up); the exit code for `sig`."""
    interrupted = sig == signal.SIGINT
    error_console.print(f"{'interrupted' if interrupted else 'terminated'}; no partial output was left")
    return EXIT_INTERRUPTED if interrupted else EXIT_TERMINATED


def option_flag(annotation) -> str | None:
    """The first long flag a typer.Option in `annotation`'s metadata declares (None: --parameter-name)."""
    for item in getattr(annotation, "__metadata__", ()):
        if not hasattr(item, "param_decls"):
            continue
        # In Annotated form Typer reads a first positional "--flag" (stored as the default) as a declaration.
        first = [item.default] if isinstance(getattr(item, "default", None), str) else []
        for declaration in [*first, *(item.param_decls or ())]:
            if declaration.startswith("--"):
                return declaration.split("/")[0]
    return None


def exit_now(code: int) -> None:
    """End a stopped command with `code` once its outputs were cleaned up and its workers joined, without the
    interpreter's finalization. A Ctrl-C that reached Python code run from C (PyRun_String, as some libraries
    do while they import) leaves CPython's "KeyboardInterrupt went unhandled" flag set even after we caught it,
    and the interpreter's exit then kills the process with SIGINT: exit status -2 instead of 130 (1 in 6
    interrupted `export` runs)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def end_within(seconds: float, code: int) -> None:
    """End the process with `code` if its exit takes longer than `seconds` from now.

    After Ctrl-C or SIGTERM our outputs are cleaned up and our workers joined, but the interpreter's exit
    still waits for other libraries' threads: `import openvino` sends a telemetry event from a thread pool
    (forking a child to do it), and a Ctrl-C landing inside an import left that thread blocked on an import
    lock for good, so the process never exited (2 of 60 interrupted `infer` runs, stacks in docs/benchmarks.md).
    A daemon timer still runs while the interpreter waits for those threads. Called on Ctrl-C and SIGTERM
    at once, and by main() for every exit.
    """
    timer = threading.Timer(seconds, os._exit, args=(code,))
    timer.daemon = True
    timer.start()

