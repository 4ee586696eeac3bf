"""Counts and durations are checked by one rule per kind, declared beside the option it checks: zero,
negative, NaN, infinity and more threads than cores are one-line usage errors before any work, and a
count or number option without a declared check fails here."""

import math
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from roberta_deploy import flags
from roberta_deploy.cli import app
from roberta_deploy.cli.exits import reports_errors
from roberta_deploy.errors import UsageError
from roberta_deploy.flags import check_flags
from roberta_deploy.machine import available_cores

# Numeric options that are not counts or durations, and why.
NOT_COUNTS = {
    "--port": "0 picks a free port; the server checks the range when it binds",
    "--grpc-port": "0 picks a free port; ServeOptions checks the range and that it is not --port",
    "--seed": "any integer seeds the generators",
    "--threshold": "a probability between 0 and 1, checked by jobs/infer.check_threshold",
    "--verbose": "a count of -v flags, never a value",
}


@pytest.mark.parametrize("check, value, message", [
    (flags.COUNT, 0, "--x 0 must be a positive integer"),
    (flags.COUNT, 2**40, "--x 1099511627776 must be a positive integer"),
    (flags.COUNT, 1.5, "--x 1.5 must be a positive integer"),
    (flags.THREADS, -1, "--x -1 must be a positive integer"),
    (flags.COUNT_OR_ZERO, -1, "--x -1 must be zero or a positive integer"),
    (flags.SECONDS, math.nan, "--x nan is not a finite number"),
    (flags.SECONDS, math.inf, "--x inf is not a finite number"),
    (flags.SECONDS, -0.5, "--x -0.5 must be at least 0"),
    (flags.SECONDS, 90_000.0, "--x 90000.0 is longer than a day"),
    (flags.POSITIVE, 0.0, "--x 0.0 must be greater than 0"),
    (flags.NON_NEGATIVE, math.nan, "--x nan is not a finite number"),
    (flags.NON_NEGATIVE, -1.0, "--x -1.0 must be at least 0"),
])
def test_out_of_range_values_are_usage_errors(check, value, message):
    with pytest.raises(UsageError) as caught:
        check.require(value, "--x")
    assert caught.value.problem == message and caught.value.fix


def test_thread_counts_stop_at_the_cores_this_process_may_use():
    cores = available_cores()
    flags.THREADS.require(cores, "--threads")
    with pytest.raises(UsageError, match=f"--cpu-threads {cores + 1} is more than the {cores} cores"):
        flags.THREADS.require(cores + 1, "--cpu-threads")


def test_values_in_range_and_flags_left_off_pass():
    checks = {"batch_size": flags.COUNT, "duration": flags.SECONDS, "iterations": flags.COUNT_OR_ZERO,
              "lr": flags.POSITIVE}
    check_flags({"batch_size": None, "duration": 0.0, "iterations": 0, "lr": 1e-5, "seed": -3}, checks)


def test_a_check_follows_its_option_whatever_the_parameter_is_called(capsys):
    """The check is declared beside the option, so renaming the parameter keeps it; the error names the flag."""
    probe = typer.Typer()

    @probe.command()
    @reports_errors
    def anything(renamed: Annotated[int, typer.Option("--batch-size"), flags.COUNT] = 1,
                 other: Annotated[int, typer.Option("--other")] = 1) -> None:
        print(f"ran with {renamed}")

    runner = CliRunner()
    assert runner.invoke(probe, ["--batch-size", "2"]).output == "ran with 2\n"
    result = runner.invoke(probe, ["--batch-size", "0"])
    assert result.exit_code == 2 and "ran with" not in result.output
    assert "error: --batch-size 0 must be a positive integer" in capsys.readouterr().err + result.output


def _numeric_options():
    import click

    root = typer.main.get_command(app)
    ctx = click.Context(root)
    for name, command in root.commands.items():
        for param in command.get_params(ctx):
            if param.param_type_name != "option" or getattr(param, "is_flag", False) or getattr(param, "count", False):
                continue
            annotation = param.type_descriptor.annotation
            if annotation in (int, float):
                yield name, command, param


def test_every_count_and_number_option_declares_its_check():
    """A new int or float option must say how it is checked (or why it is not: NOT_COUNTS)."""
    unchecked = []
    options = list(_numeric_options())
    assert len(options) > 30  # the walk found the commands' options
    for name, command, param in options:
        flag = max(param.opts, key=len)
        function = command.callback
        import inspect

        parameters = inspect.signature(function, eval_str=True).parameters
        declared = flags.checks_of({param.name: parameters[param.name].annotation}) if param.name in parameters else {}
        if not declared and flag not in NOT_COUNTS:
            unchecked.append(f"{name} {flag}")
    assert not unchecked, f"options without a flags.Check beside them: {unchecked}"


@pytest.mark.parametrize("args, message", [
    (["infer", "--bundle", "b", "--data", "d", "--output", "o", "--batch-size", "0"], "--batch-size 0"),
    (["perf", "b", "--duration", "nan"], "--duration nan is not a finite number"),
    (["serve", "--bundle", "b", "--max-concurrent-requests", "0"], "--max-concurrent-requests 0"),
    (["finetune", "--train", "t", "--dev", "d", "--output", "o", "--lr", "0"], "--lr 0.0 must be greater than 0"),
])
def test_commands_refuse_out_of_range_values_before_any_work(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
