"""`eval` and `run`: accuracy across precisions, and the whole pipeline in one output folder."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import flags
from ..defaults import DEFAULT_BACKEND, DEFAULT_MAX_SEQ_LENGTH, DEMO_MODEL_DIR, DEMO_SAMPLES_PATH
from ..jobs.deploy_report import interval_text
from .app import BATCHING, INPUT, MODEL, OUTPUT, command, examples
from .common import BACKEND_HELP, DEVICE_HELP, EVAL_QUANTIZATION_HELP, TEXT_PAIR_HELP, parse_int_list, stdin_for
from .console import console, step_printer
from .exits import reports_errors
from .tables import per_class_table, task_eval_table


RUNS_DIR = Path("runs")  # where `run` writes when --output is left off; runs/latest names the newest


def link_latest(output: Path) -> None:
    """runs/latest -> the run just written (a relative symbolic link, swapped in with one rename)."""
    latest = output.parent / "latest"
    if latest.exists() and not latest.is_symlink():
        return  # a folder of the user's own called latest: left alone
    staging = output.parent / f".latest-{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(output.name)
    os.replace(staging, latest)


@command("eval", epilog=examples(
    "roberta-deploy eval --output eval-out",
    "roberta-deploy eval --model ckpt --data dev.tsv --precisions fp32,int8 --batch-sizes 1,32 --output eval-out"))
@reports_errors
@stdin_for("data", "calibration_data")
def evaluate_command(
    model: Annotated[str, typer.Option(help="Checkpoint folder or hub id.", rich_help_panel=MODEL)]
        = str(DEMO_MODEL_DIR),
    data: Annotated[Path, typer.Option(help="Labelled texts; every row is scored; - reads stdin.",
                                       rich_help_panel=INPUT)] = DEMO_SAMPLES_PATH,
    output: Annotated[Path, typer.Option(help="Folder for the export, bundles and accuracy.md/json.",
                                         rich_help_panel=OUTPUT)] = ...,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP, rich_help_panel=MODEL)] = DEFAULT_BACKEND,
    device: Annotated[str, typer.Option(help=DEVICE_HELP, rich_help_panel=MODEL)] = "cpu",
    precisions: Annotated[Optional[str], typer.Option(help="Comma-separated precisions (default: fp32 and the faster "
                                                           "ones the backend runs well here); fp32 is always the "
                                                           "reference.", rich_help_panel=MODEL)] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes; results must not depend on them.",
                                             rich_help_panel=BATCHING)] = "1,32",
    max_seq_length: Annotated[int, typer.Option(help="Longest input in tokens.", rich_help_panel=MODEL),
                              flags.COUNT] = DEFAULT_MAX_SEQ_LENGTH,
    calibration_data: Annotated[Optional[Path], typer.Option(help="int8 calibration texts (default: bundled "
                                                                  "samples).", rich_help_panel=INPUT)] = None,
    quantization: Annotated[str, typer.Option(help=EVAL_QUANTIZATION_HELP, rich_help_panel=MODEL)] = "static",
    bucketing: Annotated[bool, typer.Option(help="Length-bucketed batches (see infer).",
                                            rich_help_panel=BATCHING)] = True,
    text_column: Annotated[Optional[str], typer.Option(help="Text column name.", rich_help_panel=INPUT)] = None,
    text_pair_column: Annotated[Optional[str], typer.Option(help=TEXT_PAIR_HELP, rich_help_panel=INPUT)] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column name.", rich_help_panel=INPUT)] = None,
    threshold: Annotated[float, typer.Option(help="Multi-label models: the sigmoid score from which a label is "
                                                  "predicted.", rich_help_panel=OUTPUT)] = 0.5,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.", rich_help_panel=OUTPUT)] = False,
) -> None:
    """Accuracy table (or the task's measures) across precisions and batch sizes (builds what it needs)."""
    from ..jobs.evaluate import ACCURACY_MARKDOWN, EvalOptions, evaluate
    from ..jobs.report import REPORT_HTML
    from ..precision import parse_precision_list

    report = evaluate(EvalOptions(
        model=model, data=data, output=output, backend=backend, device=device,
        precisions=tuple(parse_precision_list(precisions)) if precisions else None,
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"), max_seq_length=max_seq_length,
        calibration_data=calibration_data, bucketing=bucketing, overwrite=overwrite,
        text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
        threshold=threshold, quantization=quantization), on_step=step_printer())
    if report.task != "single_label_classification":
        console.print(task_eval_table(report, data, backend))
        console.print(f"wrote {output / ACCURACY_MARKDOWN} and {output / REPORT_HTML}")
        return
    int8_mode = f", int8 {report.int8_quantization}" if report.int8_quantization else ""
    table = Table(title=f"accuracy on {data} ({report.rows[0].examples} texts, {backend} on {report.device}{int8_mode})")
    for column in ("precision", "batch", "accuracy (95% interval)", "macro-F1", "correct", "agreement w/ fp32",
                   "disagree / McNemar p", "max |diff| vs fp32", "truncated"):
        table.add_column(column, justify="right")
    for row in report.rows:
        paired, details = row.paired_vs_fp32, row.details
        table.add_row(row.precision, str(row.batch_size), interval_text(row.accuracy_interval, "{:.4f}")
                      or f"{details['accuracy']:.4f}", f"{details['macro_f1']:.4f}",
                      f"{details['correct']}/{row.examples}", f"{row.agreement_with_fp32:.4f}",
                      f"{paired['disagreements']} / {paired['mcnemar_exact_p']:.3f}" if paired else "",
                      f"{row.max_abs_logit_diff_vs_fp32:.3g}", str(row.truncated))
    console.print(table)
    largest_batch = max(row.batch_size for row in report.rows)
    for row in report.rows:
        if row.batch_size == largest_batch:
            console.print(per_class_table(row.details, title=f"{row.precision} per class (batch {largest_batch})"))
    console.print(f"wrote {output / ACCURACY_MARKDOWN} and {output / REPORT_HTML}")



@command(epilog=examples(
    "roberta-deploy run",
    "roberta-deploy run --model ckpt --data test.tsv --calibration-data train.tsv --output runs/reference",
    "roberta-deploy run --backend onnxruntime --precisions fp32,int8 --no-sweep --output runs/ort"))
@reports_errors
@stdin_for("data", "calibration_data")
def run(
    model: Annotated[str, typer.Option(help="Checkpoint folder or hub id (default: the bundled demo model).",
                                       rich_help_panel=MODEL)] = str(DEMO_MODEL_DIR),
    data: Annotated[Path, typer.Option(help="Labelled texts (default: the bundled sample reviews); - reads stdin.",
                                       rich_help_panel=INPUT)] = DEMO_SAMPLES_PATH,
    output: Annotated[Optional[Path], typer.Option(help="Folder for everything (default: runs/run-<time>; runs/latest "
                                                        "then links to the newest run).",
                                                   rich_help_panel=OUTPUT)] = None,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP, rich_help_panel=MODEL)] = DEFAULT_BACKEND,
    device: Annotated[str, typer.Option(help=DEVICE_HELP, rich_help_panel=MODEL)] = "cpu",
    precisions: Annotated[Optional[str], typer.Option(help="Comma-separated (default: fp32 and the faster ones the "
                                                           "backend runs well here, as OpenVINO reports it for this "
                                                           "CPU).", rich_help_panel=MODEL)] = None,
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes for the accuracy table; the largest is used for "
                                                  "throughput.", rich_help_panel=BATCHING)] = "1,32",
    max_seq_length: Annotated[int, typer.Option(help="Longest input in tokens.", rich_help_panel=MODEL),
                              flags.COUNT] = DEFAULT_MAX_SEQ_LENGTH,
    calibration_data: Annotated[Optional[Path], typer.Option(help="int8 calibration texts (default: bundled "
                                                                  "samples).", rich_help_panel=INPUT)] = None,
    quantization: Annotated[str, typer.Option(help=EVAL_QUANTIZATION_HELP, rich_help_panel=MODEL)] = "static",
    perf_seconds: Annotated[float, typer.Option(help="Timed seconds per perf measurement.",
                                                rich_help_panel=BATCHING), flags.SECONDS] = 3.0,
    sweep: Annotated[bool, typer.Option(help="Also measure throughput per batch size and per sequence length (a "
                                             "quarter of --perf-seconds each) for the charts in report.html.",
                                        rich_help_panel=OUTPUT)] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.", rich_help_panel=OUTPUT)] = False,
) -> None:
    """The whole pipeline: export, build fp32 and the fast precisions, eval, perf, summary.md and report.html."""
    from ..jobs.report import REPORT_HTML
    from ..jobs.run_all import SUMMARY_MARKDOWN, RunOptions, run_pipeline
    from ..precision import parse_precision_list

    default_output = output is None
    output = output or RUNS_DIR / time.strftime("run-%Y%m%d-%H%M%S")
    summary = run_pipeline(RunOptions(
        model=model, data=data, output=output, backend=backend, device=device,
        precisions=tuple(parse_precision_list(precisions)) if precisions else None,
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"), max_seq_length=max_seq_length,
        calibration_data=calibration_data, perf_seconds=perf_seconds, sweep=sweep, overwrite=overwrite,
        quantization=quantization),
        on_step=step_printer())
    table = Table(title=f"{summary['backend']}: {summary['examples']} texts from {data}")
    for column in ("precision", "accuracy", "agreement w/ fp32", "batch-1 p50 ms", "batch-1 p99 ms",
                   "texts/s batched (interval)"):
        table.add_column(column, justify="right")
    for row in summary["rows"]:
        table.add_row(row["precision"], f"{row['accuracy']:.4f}", f"{row['agreement_with_fp32']:.4f}",
                      f"{row['latency_p50_ms_batch1']:.2f}", f"{row['latency_p99_ms_batch1']:.2f}",
                      interval_text(row.get("throughput_interval"), "{:,.1f}")
                      or f"{row['throughput_texts_per_second']:.1f}")
    console.print(table)
    if default_output:
        link_latest(output)
    console.print(f"wrote {output / SUMMARY_MARKDOWN} and {output / REPORT_HTML}")
