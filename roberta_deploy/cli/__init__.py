"""The `roberta-deploy` command line: one Typer app (app.py), one module per command group, the consoles
(console.py) and the exits (exits.py). The only layer that prints, draws progress, and turns typed errors
into one-line messages and exit codes. Heavy libraries load inside each command."""

from __future__ import annotations

# Each module registers its commands on the app; imported in the order `--help` lists them.
from . import build, infer, evaluate, perf, finetune, distill, serve, deploy  # noqa: F401,I001
from .app import app
from ..interrupts import install_stop_handlers
from .exits import EXIT_GRACE_S, EXIT_INTERRUPTED, EXIT_TERMINATED, end_within, exit_now

__all__ = ["app", "main"]


def main() -> None:
    # Ctrl-C and SIGTERM unwind alike (outputs cleaned up, workers joined) and are remembered (interrupts.py).
    install_stop_handlers()
    try:
        app()
    except SystemExit as ended:
        # Whatever the outcome, the exit itself is bounded too: a signal can land inside a weakref callback
        # of the import system, where Python ignores the exception and the import lock may stay taken,
        # so that another library's thread (OpenVINO's telemetry) waits for it, and the exit for that thread.
        code = ended.code if isinstance(ended.code, int) else 0 if ended.code is None else 1
        end_within(EXIT_GRACE_S, code)
        if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
            exit_now(code)
        raise
