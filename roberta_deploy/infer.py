"""infer: a data file through a bundle -> predictions.jsonl and metrics.json, every row counted."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

import numpy as np

from .atomic import OutputFolder
from .data import Dataset
from .errors import UsageError
from .metrics import classification_metrics
from .runtime.engine import Engine
from .runtime.results import Predictions

PREDICTIONS_FILE = "predictions.jsonl"  # with --format csv: predictions.csv
METRICS_FILE = "metrics.json"
OUTPUT_FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("index", "line", "text", "label", "label_name", "score", "truncated", "gold")


def predictions_file(output_format: str) -> str:
    return f"predictions.{output_format}"


def check_output_format(output_format: str) -> str:
    if output_format not in OUTPUT_FORMATS:
        raise UsageError(f"--format {output_format!r} is not a predictions format",
                         "use --format jsonl or --format csv (the input's format is --data-format)")
    return output_format


@dataclass(frozen=True)
class InferenceReport:
    predictions: Predictions
    metrics: dict


def classify_dataset(engine: Engine, dataset: Dataset, *, batch_size: int | None = None,
                     max_batch_tokens: int | None = None, bucketing: bool = True,
                     on_batch_done: Callable[[int], None] | None = None) -> InferenceReport:
    """Classify every row of `dataset` (the last partial batch included) and compute its metrics."""
    started = time.perf_counter()
    predictions = engine.batcher.run(dataset.texts, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                     bucketing=bucketing, on_batch_done=on_batch_done)
    elapsed = time.perf_counter() - started
    metrics = summarize(predictions, dataset, elapsed)
    metrics.update({"bundle": str(engine.bundle_dir), "backend": engine.backend, "precision": engine.precision,
                    "batch_size": batch_size or engine.default_batch_size(), "bucketing": bucketing,
                    "max_seq_length": engine.max_seq_length})
    return InferenceReport(predictions, metrics)


def summarize(predictions: Predictions, dataset: Dataset, elapsed_seconds: float) -> dict:
    count = len(dataset)
    metrics: dict = {
        "data": dataset.source,
        "examples": count,
        "truncated": int(predictions.truncated.sum()),
        "predicted_label_counts": {name: int((predictions.labels == index).sum())
                                   for index, name in enumerate(predictions.label_names)},
        "elapsed_seconds": round(elapsed_seconds, 4),
        "texts_per_second": round(count / elapsed_seconds, 2) if elapsed_seconds > 0 else None,
    }
    if dataset.labels is not None:
        metrics.update(classification_metrics(dataset.labels, predictions.labels, predictions.label_names))
    return metrics


def prediction_rows(predictions: Predictions, dataset: Dataset) -> Iterator[dict]:
    """One dict per input row, in input order: the label, its name, its score (softmax probability),
    every probability, whether the text was truncated, and the gold label when the data has one."""
    # Python lists, converted once: indexing numpy per row and per value cost more than the JSON.
    labels = predictions.labels.tolist()
    probabilities = predictions.probabilities.tolist()
    truncated = predictions.truncated.tolist()
    names = predictions.label_names
    for index, text in enumerate(dataset.texts):
        label = labels[index]
        row = {"index": index, "line": dataset.line_numbers[index], "text": text, "label": label,
               "label_name": names[label], "score": round(probabilities[index][label], 6),
               "probabilities": [round(value, 6) for value in probabilities[index]],
               "truncated": truncated[index]}
        if dataset.labels is not None:
            row["gold"] = dataset.labels[index]
        yield row


def write_predictions(handle: TextIO, rows: Iterator[dict], output_format: str, label_names: Sequence[str]) -> None:
    """jsonl: every field; csv: the fields of CSV_COLUMNS, then `probability_<label>` per label."""
    if output_format == "jsonl":
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    writer = None
    for row in rows:
        if writer is None:
            probability_columns = [f"probability_{name}" for name in label_names]
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow([column for column in CSV_COLUMNS if column in row] + probability_columns)
        writer.writerow([row[column] for column in CSV_COLUMNS if column in row] + row["probabilities"])


def write_inference_outputs(report: InferenceReport, dataset: Dataset, output: OutputFolder,
                            output_format: str = "jsonl") -> None:
    """predictions.jsonl (or .csv): one line per input row, in input order; metrics.json: the summary.

    `output` is reserved (checked and locked) by the caller before the work; rows are streamed.
    """
    check_output_format(output_format)
    with output.staging() as work:
        with open(work / predictions_file(output_format), "w", encoding="utf-8", newline="") as handle:
            write_predictions(handle, prediction_rows(report.predictions, dataset), output_format,
                              report.predictions.label_names)
        (work / METRICS_FILE).write_text(json.dumps(report.metrics, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
