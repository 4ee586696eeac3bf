"""`infer`: classify every row of a data file with a bundle, streaming, and print the task's metrics."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

from .. import flags
from ..atomic import OutputFolder
from .app import BATCHING, INPUT, MODEL, OUTPUT, command, examples
from .common import RUN_DEVICE_HELP, STDIO, TEXT_PAIR_HELP, dataset_chunks_for
from .console import console, error_console, print_warnings, progress_bar
from ..errors import UsageError
from .exits import reports_errors
from .serving_flags import RayFlags, with_shared_ray_flags
from .tables import per_class_table, per_label_table


@command(epilog=examples(
    "roberta-deploy infer --bundle bundle --data dev.tsv --output out",
    "cat reviews.jsonl | roberta-deploy -q infer --bundle bundle --data - --output - --format csv",
    "roberta-deploy infer --bundle topics --data dev.jsonl --threshold 0.4 --output out"))
@reports_errors
@with_shared_ray_flags
def infer(
    bundle: Annotated[Path, typer.Option(help="Bundle folder written by `roberta-deploy build`.",
                                         rich_help_panel=MODEL)],
    data: Annotated[Path, typer.Option(help="TSV (label<TAB>text_a with header), CSV, JSONL, Parquet or a folder of "
                                            "Parquet files; labels optional; - reads stdin.", rich_help_panel=INPUT)],
    output: Annotated[Path, typer.Option(help="Folder for predictions and metrics.json; - writes the predictions "
                                              "to stdout (and the summary to stderr).", rich_help_panel=OUTPUT)],
    output_format: Annotated[str, typer.Option("--format", help="Predictions as jsonl (every field), csv (one "
                                                                "probability column per label) or parquet.",
                                               rich_help_panel=OUTPUT)] = "jsonl",
    batch_size: Annotated[Optional[int], typer.Option(help="Texts per engine call (default: 32, or the static batch).",
                                                      rich_help_panel=BATCHING), flags.COUNT] = None,
    max_batch_tokens: Annotated[Optional[int], typer.Option(
        help="Token budget per batch (padded length x rows); bounds memory and latency.",
        rich_help_panel=BATCHING), flags.COUNT] = None,
    bucketing: Annotated[bool, typer.Option(help="Sort by length and pad each batch only to its longest text "
                                                 "(fewer padded tokens; docs/benchmarks.md).",
                                            rich_help_panel=BATCHING)] = True,
    text_column: Annotated[Optional[str], typer.Option(help="Column holding the text (default: text_a, text, "
                                                            "sentence, review).", rich_help_panel=INPUT)] = None,
    text_pair_column: Annotated[Optional[str], typer.Option(help=TEXT_PAIR_HELP, rich_help_panel=INPUT)] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Column holding the gold label (default: label, if "
                                                             "present).", rich_help_panel=INPUT)] = None,
    label_separator: Annotated[str, typer.Option(help="Multi-label models: what separates the labels of a row in a "
                                                      "TSV/CSV cell (JSONL rows give a list).",
                                                 rich_help_panel=INPUT)] = ",",
    threshold: Annotated[float, typer.Option(help="Multi-label models: the sigmoid score from which a label is "
                                                  "predicted (between 0 and 1).", rich_help_panel=OUTPUT)] = 0.5,
    data_format: Annotated[Optional[str], typer.Option("--data-format", help="Input as tsv, csv, jsonl or parquet (default: "
                                                                             "from the extension; for stdin, from "
                                                                             "the first line).",
                                                       rich_help_panel=INPUT)] = None,
    threads: Annotated[Optional[int], typer.Option(help="Contexts running concurrently (default: for throughput on "
                                                        "this machine: one per core below 8 cores, one per 4 cores "
                                                        "above).", rich_help_panel=BATCHING), flags.THREADS] = None,
    cpu_threads: Annotated[Optional[int], typer.Option(help="Total compute threads (default: all cores).",
                                                       rich_help_panel=BATCHING), flags.THREADS] = None,
    device: Annotated[Optional[str], typer.Option(help=RUN_DEVICE_HELP, rich_help_panel=MODEL)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.", rich_help_panel=OUTPUT)] = False,
    *,
    ray_flags: RayFlags,
) -> None:
    """Classify (or score) every row of a data file; write predictions and the metrics of the bundle's task.
    With --ray, on an actor pool across a Ray cluster (the same predictions file and metrics)."""
    from ..jobs.infer import check_output_format, check_threshold, classify_and_write, infer_to_folder, predictions_file
    from ..runtime.engine import THROUGHPUT, Engine

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
        print_summary(report.summary, "stdout" if output == STDIO else output / predictions_file(output_format),
                      error_console if output == STDIO else console)
        if "ray" in report.metrics:
            ray_run = report.metrics["ray"]
            (error_console if output == STDIO else console).print(
                f"on Ray: {ray_run['actor_processes']} actor process(es) of {ray_run['actor_cpus']:g} CPU(s) on "
                f"{ray_run['nodes']} node(s)")
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
    # With predictions on stdout, the summary goes to stderr so the two never mix.
    print_summary(report.summary, "stdout" if output == STDIO else output / predictions_file(output_format),
                  error_console if output == STDIO else console)


def _infer_on_ray(bundle: Path, data: Path, output: Path, output_format: str, overwrite: bool, ray_options,
                  options: dict, reading: tuple):
    """`infer --ray`: the same checks, reading and output rules as infer, the classifying on Ray."""
    import logging
    import os

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
    with progress_bar(BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} rows/s"),
                      TimeRemainingColumn()) as progress:
        task = progress.add_task("classifying", total=rows, rate="-")

        def advance(done: int) -> None:
            progress.advance(task, done)
            speed = progress.tasks[0].speed
            progress.update(task, rate=f"{speed:,.0f}" if speed else "-")

        yield advance


def print_summary(summary, written, summary_console) -> None:
    """An InferenceSummary (jobs/infer.py): the task's score, its table, then counts and speed."""
    from ..jobs.infer import MultiLabelScore, RegressionScore, SingleLabelScore

    score = summary.score
    if isinstance(score, SingleLabelScore):
        summary_console.print(f"accuracy: {score.accuracy:.4f} ({score.correct}/{score.examples}); "
                              f"macro-F1 {score.macro_f1:.4f}")
        summary_console.print(per_class_table(score.per_class))
    elif isinstance(score, MultiLabelScore):
        summary_console.print(f"micro-F1 {score.micro_f1:.4f}, macro-F1 {score.macro_f1:.4f}, exact match "
                              f"{score.exact_match:.4f} (threshold {score.threshold})")
        summary_console.print(per_label_table(score.per_label))
    elif isinstance(score, RegressionScore):
        correlations = (f"{value:.4f}" if value is not None else "n/a (constant)"
                        for value in (score.pearson, score.spearman))
        summary_console.print("pearson {}, spearman {}, mse {:.4g}".format(*correlations, score.mse))
    speed = f" ({summary.texts_per_second:.1f} texts/s)" if summary.texts_per_second else ""
    summary_console.print(f"classified {summary.examples} texts in {summary.elapsed_seconds:.2f}s{speed}; "
                          f"{summary.truncated} truncated at {summary.max_seq_length} tokens; wrote {written}")
