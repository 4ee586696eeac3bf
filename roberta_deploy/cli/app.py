"""The one Typer app of the command line and its global options; each command module registers on it."""

from __future__ import annotations

import logging
import sys

import typer

from .. import __version__
from ..errors import EXIT_CODES
from .console import console, set_quiet

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Export, build, evaluate, benchmark and run BERT-family text classifiers on "
                       "OpenVINO and ONNX Runtime.",
                  epilog="Exit codes: " + "; ".join(f"{code} {meaning.split(':')[0]}" for code, meaning in EXIT_CODES.items())
                  + ".")


def _print_version(value: bool) -> None:
    if value:
        console.print(f"roberta-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                help="Log what the library does to stderr; -v also lets OpenVINO, NNCF, ONNX Runtime "
                                     "and transformers print their own progress and advice, -vv adds debug detail."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print results and errors only: no steps, no progress bars."),
) -> None:
    """Export, build, evaluate, benchmark and run BERT-family text classifiers on OpenVINO and ONNX Runtime."""
    if verbose and quiet:
        raise typer.BadParameter("-v and -q contradict each other; pass one")
    set_quiet(quiet)
    if verbose:
        # The application configures logging; the library only logs (and lets third-party output
        # through when its own logger is enabled at INFO, see roberta_deploy.logs).
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s", force=True)

