"""Help and flags without surprises: our text is never read as markup, flags without a value show none, -h,
an Examples section and panels in every command's help, -q/-v after the command name, `-` for stdin in
every data flag, and progress lines that print no markup tags."""

import io
import os
import re
import subprocess
import sys

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from roberta_deploy.cli import app
from roberta_deploy.cli.app import PANELS
from roberta_deploy.cli.console import progress_bar

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)


def help_of(*args, width=200):
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": str(width)}, terminal_width=width)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", ["serve", "deploy"])
def test_the_ray_install_command_keeps_its_brackets(command):
    text = help_of(command)
    assert "pip install 'roberta-deploy[ray]'" in " ".join(text.split()).replace("│ ", "").replace(" │", "") \
        or "'roberta-deploy[ray]'" in text
    assert "pip install 'roberta-deploy'" not in text


def test_the_console_never_reads_markup_in_help_it_did_not_write():
    text = help_of("finetune")
    # [CLS]/[SEP] would vanish as unknown style tags if help were read as markup.
    assert "[CLS]/[SEP]" in text


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_flags_without_a_value_show_no_type(command):
    text = help_of(*([command] if command else []))
    assert "<bool>" not in text
    for line in text.splitlines():
        if "--quiet" in line or "--verbose" in line:
            assert "<int>" not in line and "<bool>" not in line, line


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_short_help_examples_and_panels(command):
    short = runner.invoke(app, [command, "-h"], env={"COLUMNS": "200"}, terminal_width=200)
    assert short.exit_code == 0 and short.output == help_of(command)
    text = help_of(command)
    examples = text[text.index("Examples:"):]
    assert "$ roberta-deploy" in examples and command in examples
    panels = re.findall(r"╭─ (.+?) ─", text)
    assert "Options" not in panels, f"{command}: options outside the named panels"
    assert set(panels) - {"Arguments"} <= set(PANELS), panels
    assert "Global options" in panels


def test_usage_names_arguments_in_capitals():
    assert "inspect [OPTIONS] BUNDLE" in help_of("inspect")
    assert "perf [OPTIONS] [BUNDLES...]" in help_of("perf")


@pytest.mark.parametrize("command", ["infer", "perf"])
def test_device_help_names_no_flag_the_command_lacks(command):
    text = " ".join(help_of(command).split())
    assert "build --backend torch" in text  # where such a bundle comes from: another command's flag, named so
    assert "--backend" not in text.replace("build --backend", "")


def test_global_flags_work_after_the_command_name(tmp_path):
    missing = tmp_path / "nothing"
    for args in (["inspect", str(missing), "-q"], ["inspect", "-v", str(missing)], ["-q", "inspect", str(missing)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 3, result.output  # the bundle is missing: the flags themselves were accepted
        assert "No such option" not in result.output
    both = runner.invoke(app, ["-q", "inspect", str(missing), "-v"])
    assert both.exit_code == 2 and "error: -v and -q contradict each other (fix: pass one)" in both.output


def test_progress_lines_print_their_text_not_style_tags():
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=100)
    with progress_bar(console=console, transient=False) as progress:
        task = progress.add_task("classifying [1/2]", total=2)
        progress.advance(task, 2)
    assert "classifying [1/2]" in output.getvalue() and "[progress." not in output.getvalue()


def test_every_data_flag_reads_stdin(monkeypatch, tmp_path):
    """`-` reaches each command's job as a file holding what stdin held (the job is replaced by a recorder)."""
    import roberta_deploy.jobs.evaluate as evaluate_job
    import roberta_deploy.jobs.run_all as run_job

    seen = {}

    def record(name):
        def job(options, on_step=None):
            seen[name] = options.data.read_text(encoding="utf-8")
            raise typer.Exit(0)
        return job

    monkeypatch.setattr(evaluate_job, "evaluate", record("eval"))
    monkeypatch.setattr(run_job, "run_pipeline", record("run"))
    rows = "label\ttext_a\n1\t酒店很干净\n"
    for command in (["eval", "--output", str(tmp_path / "e")], ["run", "--output", str(tmp_path / "r")]):
        result = runner.invoke(app, [*command, "--data", "-"], input=rows)
        assert result.exit_code == 0, result.output
    assert seen == {"eval": rows, "run": rows}
    both = runner.invoke(app, ["eval", "--output", str(tmp_path / "e"), "--data", "-", "--calibration-data", "-"])
    assert both.exit_code == 2 and "--data and --calibration-data cannot both read stdin" in both.output


def test_perf_reads_its_data_from_stdin(bundle_factory, samples_tsv):
    result = subprocess.run([sys.executable, "-m", "roberta_deploy", "-q", "perf", str(bundle_factory()), "--data", "-",
                             "--duration", "0.3", "--warmup", "0", "--batch-size", "4"],
                            input=samples_tsv.read_text(encoding="utf-8"), capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, COLUMNS="80"))
    assert result.returncode == 0, result.stderr
    assert "texts/s" in result.stdout or "throughput" in result.stdout.lower()
