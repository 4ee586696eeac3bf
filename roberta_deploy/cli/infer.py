"""`infer`: classify every row of a data file with a bundle, streaming, and print the task's metrics."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TimeElapsedColumn

from .. import flags
from ..atomic import OutputFolder
from .app import BATCHING, INPUT, MODEL, OUTPUT, command, examples
from .common import RUN_DEVICE_HELP, STDIO, TEXT_PAIR_HELP, dataset_chunks_for
from .console import console, error_console, print_warnings, progress_bar
from .exits import reports_errors
from .tables import per_class_table, per_label_table


@command(epilog=examples(
    "roberta-deploy infer --bundle bundle --data dev.tsv --output out",
    "cat reviews.jsonl | roberta-deploy -q infer --bundle bundle --data - --output - --format csv",
    "roberta-deploy infer --bundle topics --data dev.jsonl --threshold 0.4 --output out"))
@reports_errors
def infer(
    bundle: Annotated[Path, typer.Option(help="Bundle folder written by `roberta-deploy build`.",
                                         rich_help_panel=MODEL)],
    data: Annotated[Path, typer.Option(help="TSV (label<TAB>text_a with header), CSV or JSONL; labels optional; "
                                            "- reads stdin.", rich_help_panel=INPUT)],
    output: Annotated[Path, typer.Option(help="Folder for predictions and metrics.json; - writes the predictions "
                                              "to stdout (and the summary to stderr).", rich_help_panel=OUTPUT)],
    output_format: Annotated[str, typer.Option("--format", help="Predictions as jsonl (every field) or csv (one "
                                                                "probability column per label).",
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
    data_format: Annotated[Optional[str], typer.Option("--data-format", help="Input as tsv, csv or jsonl (default: "
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
) -> None:
    """Classify (or score) every row of a data file; write predictions and the metrics of the bundle's task."""
    from ..jobs.infer import check_output_format, check_threshold, classify_and_write, infer_to_folder, predictions_file
    from ..runtime.engine import THROUGHPUT, Engine

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
        with progress_bar(BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as progress:
            task = progress.add_task("classifying", total=rows)
            options = dict(batch_size=batch_size, max_batch_tokens=max_batch_tokens, bucketing=bucketing,
                           on_batch_done=lambda done: progress.advance(task, done), threshold=threshold)
            if output == STDIO:
                report = classify_and_write(engine, chunks(), sys.stdout, output_format, **options)
                sys.stdout.flush()
            else:
                report = infer_to_folder(engine, chunks(), output_folder, output_format, **options)
    # With predictions on stdout, the summary goes to stderr so the two never mix.
    print_summary(report.summary, "stdout" if output == STDIO else output / predictions_file(output_format),
                  error_console if output == STDIO else console)


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
