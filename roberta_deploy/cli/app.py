"""The one Typer app of the command line, its global options (-q/-v before or after the command name) and
how help reads: our text is never parsed as markup, flags without a value show none, options sit in panels
(PANELS), and every command ends with an Examples section (`examples`)."""

from __future__ import annotations

import logging
import re
import sys
from typing import Annotated

import click
import typer
import typer.core
from rich.markup import escape
from rich.text import Text

from .. import __version__
from ..errors import EXIT_CODES
from .console import console, error_console, set_quiet

# The help panels options sit in, in the order a reader needs them.
INPUT, MODEL, SERVER, BATCHING, LIMITS, OUTPUT, RAY, GLOBAL = (
    "Input", "Model", "Server", "Batching", "Limits", "Output", "Ray", "Global options")
PANELS = (INPUT, MODEL, SERVER, BATCHING, LIMITS, OUTPUT, RAY, GLOBAL)
EXAMPLES_HEADING = "Examples:"

QUIET_HELP = "Print results and errors only: no steps, no progress bars."
VERBOSE_HELP = ("Log what the library does to stderr; -v also lets OpenVINO, NNCF, ONNX Runtime and transformers "
                "print their own progress and advice, -vv adds debug detail.")


def examples(*commands: str) -> str:
    """A command's epilog: shell lines a user can paste (shown as they are, brackets included)."""
    return "\n".join([EXAMPLES_HEADING, *(f"  $ {command}" for command in commands)])


def _remember(name: str):
    """A global flag's callback: note its value in the context's meta, shared by the group and the command."""
    def callback(ctx: click.Context, param: click.Parameter, value):
        if value:
            ctx.meta[name] = max(ctx.meta.get(name, 0), int(value)) if name == "verbose" else True
        return value
    return callback


def _global_flag_params() -> list[click.Parameter]:
    """-q and -v as Typer builds them, for each command to accept after its name too (not passed to it)."""
    probe = typer.Typer()

    @probe.command()
    def flags(verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, expose_value=False,
                                                   callback=_remember("verbose"), help=VERBOSE_HELP,
                                                   rich_help_panel=GLOBAL)] = 0,
              quiet: Annotated[bool, typer.Option("--quiet", "-q", expose_value=False, callback=_remember("quiet"),
                                                  help=QUIET_HELP, rich_help_panel=GLOBAL)] = False) -> None:
        """Only its parameters are used."""

    return [param for param in typer.main.get_command(probe).params if param.name in ("verbose", "quiet")]


def apply_global_flags(ctx: click.Context) -> None:
    """-q and -v, wherever they were given; both at once is a one-line usage error. The logging set up for -v
    is undone when the command returns (`_restore_logging`), so a command run in-process (tests, a notebook)
    leaves no handler writing to a stream that is closed afterwards."""
    quiet, verbose = ctx.meta.get("quiet", False), ctx.meta.get("verbose", 0)
    if verbose and quiet:
        error_console.print(Text.assemble(("error:", "red"), " -v and -q contradict each other (fix: pass one)"))
        raise typer.Exit(2)
    set_quiet(quiet)
    if verbose:
        # The application configures logging; the library only logs (and lets third-party output
        # through when its own logger is enabled at INFO, see roberta_deploy.logs).
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s", force=True)


def _plain_help(command: click.Command) -> None:
    """Our help texts as literal text: escaped once for Typer's rich markup (so `pip install
    'roberta-deploy[ray]'` keeps its brackets), and flags that take no value shown without a type."""
    if getattr(command, "_help_is_plain", False):
        return
    command._help_is_plain = True
    command.help = escape(command.help) if command.help else command.help
    command.epilog = escape(command.epilog) if command.epilog else command.epilog
    for param in command.params:
        if getattr(param, "help", None):
            param.help = escape(param.help)
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.metavar = ""
            if getattr(param, "secondary_opts", None) or param.count:
                param.show_default = False  # --bucketing/--no-bucketing says it; "[default: 0]" says nothing


def _restore_logging(handlers: list[logging.Handler], level: int) -> None:
    root = logging.getLogger()
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


class Command(typer.core.TyperCommand):
    """Every command: accepts the global flags after its name, reads its help as plain text, and shows its
    usage with argument names in capitals (`inspect [OPTIONS] BUNDLE`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params.extend(_global_flag_params())

    def format_help(self, ctx, formatter):
        _plain_help(self)
        return super().format_help(ctx, formatter)

    def get_help_option(self, ctx: click.Context):
        option = super().get_help_option(ctx)
        if option is not None:
            option.rich_help_panel = GLOBAL
            option.metavar = ""
        return option

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = (param.metavar or param.name).upper() + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def invoke(self, ctx: click.Context):
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            apply_global_flags(ctx)
            return super().invoke(ctx)
        finally:
            _restore_logging(handlers, level)


class Group(typer.core.TyperGroup):
    def get_help_option(self, ctx: click.Context):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def format_help(self, ctx, formatter):
        _plain_help(self)
        for command in self.commands.values():
            _plain_help(command)
        return super().format_help(ctx, formatter)


app = typer.Typer(cls=Group, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="rich",
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Export, build, evaluate, benchmark and run BERT-family text classifiers on "
                       "OpenVINO, ONNX Runtime and PyTorch.",
                  epilog="Exit codes: " + "; ".join(f"{code} {re.split('[:;(]', meaning)[0].strip()}"
                                                    for code, meaning in EXIT_CODES.items())
                  + ".")


def command(name: str | None = None, **settings):
    """app.command with this CLI's command class: what every command module registers with."""
    return app.command(name, cls=Command, **settings)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"roberta-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, callback=_remember("verbose"),
                                         help=VERBOSE_HELP)] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", callback=_remember("quiet"), help=QUIET_HELP)] = False,
) -> None:
    """Export, build, evaluate, benchmark and run BERT-family text classifiers on OpenVINO, ONNX Runtime and
    PyTorch. -q and -v go before or after the command name."""
