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
from .tables import per_class_table, per_label_table


@app.command()
@reports_errors
def infer(
    bundle: Path = typer.Option(..., help="Bundle folder written by `roberta-deploy build`."),
    data: Path = typer.Option(..., help="TSV (label<TAB>text_a with header), CSV or JSONL; labels optional; - reads stdin."),
    output: Path = typer.Option(..., help="Folder for predictions and metrics.json; - writes the predictions to "
                                          "stdout (and the summary to stderr)."),
    output_format: str = typer.Option("jsonl", "--format", help="Predictions as jsonl (every field) or csv "
                                                                "(one probability column per label)."),
    batch_size: Optional[int] = typer.Option(None, help="Texts per engine call (default: 32, or the static batch)."),
    max_batch_tokens: Optional[int] = typer.Option(None, help="Token budget per batch (padded length x rows); bounds memory and latency."),
    bucketing: bool = typer.Option(True, help="Sort by length and pad each batch only to its longest text (1.5x fewer padded tokens on ChnSentiCorp)."),
    text_column: Optional[str] = typer.Option(None, help="Column holding the text (default: text_a, text, sentence, review)."),
    text_pair_column: Optional[str] = typer.Option(None, help=TEXT_PAIR_HELP),
    label_column: Optional[str] = typer.Option(None, help="Column holding the gold label (default: label, if present)."),
    label_separator: str = typer.Option(",", help="Multi-label models: what separates the labels of a row in a TSV/CSV "
                                                  "cell (JSONL rows give a list)."),
    threshold: float = typer.Option(0.5, help="Multi-label models: the sigmoid score from which a label is predicted."),
    data_format: Optional[str] = typer.Option(None, "--data-format", help="Input as tsv, csv or jsonl (default: from the "
                                                                          "extension; for stdin, from the first line)."),
    threads: Optional[int] = typer.Option(None, help="Contexts running concurrently (default: for throughput on this "
                                                     "machine: one per core below 8 cores, one per 4 cores above)."),
    cpu_threads: Optional[int] = typer.Option(None, help="Total compute threads (default: all cores)."),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP + " Default: the device the bundle was built for."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Classify (or score) every row of a data file; write predictions and the metrics of the bundle's task."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from ..atomic import OutputFolder
    from ..runtime.engine import THROUGHPUT, Engine
    from ..jobs.infer import (check_output_format, check_threshold, classify_and_write, infer_to_folder,
                        predictions_file)

    check_output_format(output_format)
    check_threshold(threshold)
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
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=status_console, transient=True) as progress:
            task = progress.add_task("classifying", total=rows)
            options = dict(batch_size=batch_size, max_batch_tokens=max_batch_tokens, bucketing=bucketing,
                           on_batch_done=lambda done: progress.advance(task, done), threshold=threshold)
            if output == STDIO:
                report = classify_and_write(engine, chunks(), sys.stdout, output_format, **options)
                sys.stdout.flush()
            else:
                report = infer_to_folder(engine, chunks(), output_folder, output_format, **options)
    # With predictions on stdout, the summary goes to stderr so the two never mix.
    summary_console = error_console if output == STDIO else console
    metrics = report.metrics
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
                          f"{engine.max_seq_length} tokens; wrote {written}")

