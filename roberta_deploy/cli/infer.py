"""`infer`: classify every row of a data file with a bundle, streaming, and print the task's metrics."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Optional

import typer

from .app import app
from .common import DEVICE_HELP, STDIO, TEXT_PAIR_HELP, dataset_chunks_for
from .console import console, error_console, print_warnings, status_console
from .exits import reports_errors
from .serving_flags import RayFlags, with_shared_ray_flags
from .tables import per_class_table, per_label_table


@app.command()
@reports_errors
@with_shared_ray_flags
def infer(
    bundle: Path = typer.Option(..., help="Bundle folder written by `roberta-deploy build`."),
    data: Path = typer.Option(..., help="TSV (label<TAB>text_a with header), CSV, JSONL, Parquet or a folder of Parquet "
                                           "files; labels optional; - reads stdin."),
    output: Path = typer.Option(..., help="Folder for predictions and metrics.json; - writes the predictions to "
                                          "stdout (and the summary to stderr)."),
    output_format: str = typer.Option("jsonl", "--format", help="Predictions as jsonl (every field), csv (one "
                                                                "probability column per label) or parquet."),
    batch_size: Optional[int] = typer.Option(None, help="Texts per engine call (default: 32, or the static batch)."),
    max_batch_tokens: Optional[int] = typer.Option(None, help="Token budget per batch (padded length x rows); bounds memory and latency."),
    bucketing: bool = typer.Option(True, help="Sort by length and pad each batch only to its longest text (1.5x fewer padded tokens on ChnSentiCorp)."),
    text_column: Optional[str] = typer.Option(None, help="Column holding the text (default: text_a, text, sentence, review)."),
    text_pair_column: Optional[str] = typer.Option(None, help=TEXT_PAIR_HELP),
    label_column: Optional[str] = typer.Option(None, help="Column holding the gold label (default: label, if present)."),
    label_separator: str = typer.Option(",", help="Multi-label models: what separates the labels of a row in a TSV/CSV "
                                                  "cell (JSONL rows give a list)."),
    threshold: float = typer.Option(0.5, help="Multi-label models: the sigmoid score from which a label is predicted."),
    data_format: Optional[str] = typer.Option(None, "--data-format", help="Input as tsv, csv, jsonl or parquet (default: from the "
                                                                          "extension; for stdin, from the first line)."),
    threads: Optional[int] = typer.Option(None, help="Contexts running concurrently (default: for throughput on this "
                                                     "machine: one per core below 8 cores, one per 4 cores above)."),
    cpu_threads: Optional[int] = typer.Option(None, help="Total compute threads (default: all cores)."),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP + " Default: the device the bundle was built for."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    *,
    ray_flags: RayFlags,
) -> None:
    """Classify (or score) every row of a data file; write predictions and the metrics of the bundle's task.
    With --ray, on an actor pool across a Ray cluster (the same predictions file and metrics)."""
    from ..atomic import OutputFolder
    from ..errors import UsageError
    from ..runtime.engine import THROUGHPUT, Engine
    from ..jobs.infer import (check_output_format, check_threshold, classify_and_write, infer_to_folder,
                        predictions_file)

    check_output_format(output_format)
    check_threshold(threshold)
    if output == STDIO and output_format == "parquet":
        raise UsageError("--format parquet cannot be written to stdout", "give --output a folder")
    ray_options = ray_flags.options()
    if ray_options is not None:
        for flag, value in (("--cpu-threads", cpu_threads), ("--device", device)):
            if value is not None:
                raise UsageError(f"{flag} does not apply with --ray: each actor computes on --replica-cpus threads "
                                 "on its node's CPU", f"leave {flag} off, or size actors with --replica-cpus")
        report, max_seq_length = _infer_on_ray(bundle, data, output, output_format, overwrite, ray_options,
                                               dict(contexts=threads, batch_size=batch_size,
                                                    max_batch_tokens=max_batch_tokens, bucketing=bucketing,
                                                    threshold=threshold),
                                               (text_column, label_column, data_format, text_pair_column,
                                                label_separator))
        _print_summary(report.metrics, output, output_format, max_seq_length)
        return
    # The output is checked and locked before the engine loads: an output on top of an input, a folder
    # of someone else's files or a second writer is refused before any work.
    reserved = (contextlib.nullcontext() if output == STDIO
                else OutputFolder(output, overwrite=overwrite, inputs=(bundle, data)))
    with reserved as output_folder, contextlib.ExitStack() as stack:
        # Closing the engine stops and joins its batcher's workers, on Ctrl-C and SIGTERM too: a worker
        # left inside the engine at interpreter exit aborts the process (exit 134).
        engine = stack.enter_context(Engine.load(bundle, contexts=threads, cpu_threads=cpu_threads,
                                                 hint=THROUGHPUT, device=device))
        print_warnings(engine.warnings)
        # Read, classified and written a chunk at a time: memory stays flat however big the file is.
        rows, chunks = stack.enter_context(dataset_chunks_for(engine, data, text_column, label_column, data_format,
                                                              text_pair_column, label_separator))
        with rows_progress(rows) as advance:
            options = dict(batch_size=batch_size, max_batch_tokens=max_batch_tokens, bucketing=bucketing,
                           on_batch_done=advance, threshold=threshold)
            if output == STDIO:
                report = classify_and_write(engine, chunks(), sys.stdout, output_format, **options)
                sys.stdout.flush()
            else:
                report = infer_to_folder(engine, chunks(), output_folder, output_format, **options)
    _print_summary(report.metrics, output, output_format, engine.max_seq_length)


def _infer_on_ray(bundle: Path, data: Path, output: Path, output_format: str, overwrite: bool, ray_options,
                  options: dict, reading: tuple):
    """`infer --ray`: the same checks, reading and output rules as infer, the classifying on Ray."""
    import logging
    import os

    from ..atomic import OutputFolder
    from ..jobs.infer_ray import BundleSummary, classify_on_ray, infer_on_ray_to_folder
    from ..logs import third_party_output_wanted

    if not third_party_output_wanted():  # Ray's advice and execution logs, unless -v
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    reserved = (contextlib.nullcontext() if output == STDIO
                else OutputFolder(output, overwrite=overwrite, inputs=(bundle, data)))
    with reserved as output_folder, contextlib.ExitStack() as stack:
        summary = BundleSummary.read(bundle)  # the engines load on the actors; the driver reads the manifest
        rows, chunks = stack.enter_context(dataset_chunks_for(summary, data, *reading))
        with rows_progress(rows) as advance:
            if output == STDIO:
                report = classify_on_ray(summary, chunks(), sys.stdout, output_format, ray_options,
                                         on_rows_done=advance, **options)
                sys.stdout.flush()
            else:
                report = infer_on_ray_to_folder(summary, chunks(), output_folder, output_format, ray_options,
                                                on_rows_done=advance, **options)
    return report, summary.max_seq_length


@contextlib.contextmanager
def rows_progress(rows: int):
    """The one progress bar of infer, whatever runs the engine: rows done of all, rows/s, time left. Yields
    advance(rows)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]} rows/s"), TimeRemainingColumn(), console=status_console,
                  transient=True) as progress:
        task = progress.add_task("classifying", total=rows, rate="-")

        def advance(done: int) -> None:
            progress.advance(task, done)
            speed = progress.tasks[0].speed
            progress.update(task, rate=f"{speed:,.0f}" if speed else "-")

        yield advance


def _print_summary(metrics: dict, output: Path, output_format: str, max_seq_length: int) -> None:
    from ..jobs.infer import predictions_file

    # With predictions on stdout, the summary goes to stderr so the two never mix.
    summary_console = error_console if output == STDIO else console
    if "accuracy" in metrics:
        summary_console.print(f"accuracy: {metrics['accuracy']:.4f} ({metrics['correct']}/{metrics['examples']}); "
                              f"macro-F1 {metrics['macro_f1']:.4f}")
        summary_console.print(per_class_table(metrics))
    elif "micro_f1" in metrics:
        summary_console.print(f"micro-F1 {metrics['micro_f1']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, exact match "
                              f"{metrics['exact_match']:.4f} (threshold {metrics['threshold']})")
        summary_console.print(per_label_table(metrics))
    elif "pearson" in metrics:
        summary_console.print("pearson {}, spearman {}, mse {:.4g}".format(
            *(f"{metrics[key]:.4f}" if metrics[key] is not None else "n/a (constant)" for key in ("pearson", "spearman")),
            metrics["mse"]))
    written = "stdout" if output == STDIO else output / predictions_file(output_format)
    summary_console.print(f"classified {metrics['examples']} texts in {metrics['elapsed_seconds']:.2f}s "
                          f"({metrics['texts_per_second']:.1f} texts/s); {metrics['truncated']} truncated at "
                          f"{max_seq_length} tokens; wrote {written}")
    if "ray" in metrics:
        ray_run = metrics["ray"]
        summary_console.print(f"on Ray: {ray_run['actor_processes']} actor process(es) of {ray_run['actor_cpus']:g} "
                              f"CPU(s) on {ray_run['nodes']} node(s)")

