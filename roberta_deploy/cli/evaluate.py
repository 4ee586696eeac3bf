"""`eval` and `run`: accuracy across precisions, and the whole pipeline in one output folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..defaults import DEFAULT_BACKEND, DEFAULT_MAX_SEQ_LENGTH, DEMO_MODEL_DIR, DEMO_SAMPLES_PATH
from ..jobs.deploy_report import interval_text
from .app import app
from .common import BACKEND_HELP, DEVICE_HELP, TEXT_PAIR_HELP, parse_int_list
from .console import console, step_printer
from .exits import reports_errors
from .tables import per_class_table, task_eval_table


@app.command("eval")
@reports_errors
def evaluate_command(
    model: str = typer.Option(str(DEMO_MODEL_DIR), help="Checkpoint folder or hub id."),
    data: Path = typer.Option(DEMO_SAMPLES_PATH, help="Labelled texts; every row is scored."),
    output: Path = typer.Option(..., help="Folder for the export, bundles and accuracy.md/json."),
    backend: str = typer.Option(DEFAULT_BACKEND, help=BACKEND_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    precisions: Optional[str] = typer.Option(None, help="Comma-separated precisions (default: fp32 and the faster ones "
                                                        "the backend runs well here); fp32 is always the reference."),
    batch_sizes: str = typer.Option("1,32", help="Comma-separated batch sizes; results must not depend on them."),
    max_seq_length: int = typer.Option(DEFAULT_MAX_SEQ_LENGTH, help="Longest input in tokens."),
    calibration_data: Optional[Path] = typer.Option(None, help="int8 calibration texts (default: bundled samples)."),
    bucketing: bool = typer.Option(True, help="Length-bucketed batches (see infer)."),
    text_column: Optional[str] = typer.Option(None, help="Text column name."),
    text_pair_column: Optional[str] = typer.Option(None, help=TEXT_PAIR_HELP),
    label_column: Optional[str] = typer.Option(None, help="Label column name."),
    threshold: float = typer.Option(0.5, help="Multi-label models: the sigmoid score from which a label is predicted."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
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
        threshold=threshold), on_step=step_printer())
    if report["task"] != "single_label_classification":
        console.print(task_eval_table(report, data, backend))
        console.print(f"wrote {output / ACCURACY_MARKDOWN} and {output / REPORT_HTML}")
        return
    table = Table(title=f"accuracy on {data} ({report['rows'][0]['examples']} texts, {backend} on {report['device']})")
    for column in ("precision", "batch", "accuracy (95% interval)", "macro-F1", "correct", "agreement w/ fp32",
                   "disagree / McNemar p", "max |diff| vs fp32", "truncated"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        paired = row.get("paired_vs_fp32")
        table.add_row(row["precision"], str(row["batch_size"]), interval_text(row.get("accuracy_interval"), "{:.4f}")
                      or f"{row['accuracy']:.4f}", f"{row['macro_f1']:.4f}",
                      f"{row['correct']}/{row['examples']}", f"{row['agreement_with_fp32']:.4f}",
                      f"{paired['disagreements']} / {paired['mcnemar_exact_p']:.3f}" if paired else "",
                      f"{row['max_abs_logit_diff_vs_fp32']:.3g}", str(row["truncated"]))
    console.print(table)
    largest_batch = max(row["batch_size"] for row in report["rows"])
    for row in report["rows"]:
        if row["batch_size"] == largest_batch:
            console.print(per_class_table(row, title=f"{row['precision']} per class (batch {largest_batch})"))
    console.print(f"wrote {output / ACCURACY_MARKDOWN} and {output / REPORT_HTML}")



@app.command()
@reports_errors
def run(
    model: str = typer.Option(str(DEMO_MODEL_DIR), help="Checkpoint folder or hub id (default: the bundled demo model)."),
    data: Path = typer.Option(DEMO_SAMPLES_PATH, help="Labelled texts (default: the bundled sample reviews)."),
    output: Optional[Path] = typer.Option(None, help="Folder for everything (default: runs/run-<time>)."),
    backend: str = typer.Option(DEFAULT_BACKEND, help=BACKEND_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    precisions: Optional[str] = typer.Option(None, help="Comma-separated (default: fp32 and the faster ones the backend runs well here, as OpenVINO reports it for this CPU)."),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes for the accuracy table; the largest is used for throughput."),
    max_seq_length: int = typer.Option(DEFAULT_MAX_SEQ_LENGTH, help="Longest input in tokens."),
    calibration_data: Optional[Path] = typer.Option(None, help="int8 calibration texts (default: bundled samples)."),
    perf_seconds: float = typer.Option(3.0, help="Timed seconds per perf measurement."),
    sweep: bool = typer.Option(True, help="Also measure throughput per batch size and per sequence length (a quarter "
                                          "of --perf-seconds each) for the charts in report.html."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """The whole pipeline: export, build fp32 and the fast precisions, eval, perf, summary.md and report.html."""
    from ..jobs.report import REPORT_HTML
    from ..jobs.run_all import SUMMARY_MARKDOWN, RunOptions, run_pipeline
    from ..precision import parse_precision_list

    output = output or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    summary = run_pipeline(RunOptions(
        model=model, data=data, output=output, backend=backend, device=device,
        precisions=tuple(parse_precision_list(precisions)) if precisions else None,
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"), max_seq_length=max_seq_length,
        calibration_data=calibration_data, perf_seconds=perf_seconds, sweep=sweep, overwrite=overwrite),
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
    console.print(f"wrote {output / SUMMARY_MARKDOWN} and {output / REPORT_HTML}")
