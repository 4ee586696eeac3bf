"""The command line's consoles: one factory, so every command honours -q, -v and NO_COLOR alike, and none
parses markup in text it did not write (a fix such as pip install 'roberta-deploy[ray]' keeps its brackets,
and so do user paths)."""

from __future__ import annotations

import sys
import time
from typing import Callable

from rich.console import Console
from rich.progress import Progress, ProgressColumn, TextColumn
from rich.text import Text

# Off a terminal, tables take their natural width instead of squeezing figures into 80 columns, and lines
# are never hard-wrapped: piped output stays greppable.
PIPE_WIDTH = 1000


def make_console(stderr: bool = False) -> Console:
    """A console that never reads markup (style comes from Text spans we build) and never hard-wraps.
    NO_COLOR and a dumb terminal are honoured by rich itself."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, markup=False, highlight=False, soft_wrap=True,
                   width=None if stream.isatty() else PIPE_WIDTH)


console = make_console()  # results, on stdout
status_console = make_console(stderr=True)  # steps and progress; -q hides them
error_console = make_console(stderr=True)  # errors and warnings; never hidden


def set_quiet(quiet: bool) -> None:
    status_console.quiet = quiet


def print_warnings(warnings) -> None:
    """Things the library says once and the user should see (not errors; -q does not hide them)."""
    for warning in warnings:
        error_console.print(f"warning: {warning}")


def step_printer(prefix: str = "") -> Callable[[str], None]:
    """Print each step with the seconds since the command started, on the status console (-q hides it)."""
    started = time.perf_counter()
    return lambda message: status_console.print(
        Text.assemble((f"{time.perf_counter() - started:6.1f}s", "dim"), f" {prefix}{message}"))


def progress_bar(*columns: ProgressColumn, console: Console | None = None, transient: bool = True) -> Progress:
    """A progress display whose first column is the task's description, shown as it is (never read as markup:
    rich's "[progress.description]" style tag would otherwise print literally on our markup-free consoles)."""
    return Progress(TextColumn("{task.description}", markup=False), *columns, console=console or status_console,
                    transient=transient)
