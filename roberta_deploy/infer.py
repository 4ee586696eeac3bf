"""infer: a data file through a bundle -> predictions.jsonl and metrics.json, every row counted."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

import numpy as np

from .atomic import OutputFolder
from .data import Dataset
from .errors import UsageError
from .data import LABEL_SEPARATOR
from .metrics import classification_metrics, multilabel_metrics, regression_metrics
from .runtime.engine import Engine
from .runtime.results import Predictions
from .tasks import DEFAULT_THRESHOLD, MULTI_LABEL, REGRESSION

PREDICTIONS_FILE = "predictions.jsonl"  # with --format csv: predictions.csv
METRICS_FILE = "metrics.json"
OUTPUT_FORMATS = ("jsonl", "csv")
CSV_COLUMNS = ("index", "line", "text", "text_pair", "label", "label_name", "labels", "score", "truncated", "gold")


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


def check_threshold(threshold: float) -> float:
    if not 0 < threshold < 1:
        raise UsageError(f"--threshold {threshold} is not between 0 and 1",
                         f"pass the sigmoid score a label needs, e.g. --threshold {DEFAULT_THRESHOLD}")
    return threshold


def classify_dataset(engine: Engine, dataset: Dataset, *, batch_size: int | None = None,
                     max_batch_tokens: int | None = None, bucketing: bool = True,
                     on_batch_done: Callable[[int], None] | None = None,
                     threshold: float = DEFAULT_THRESHOLD) -> InferenceReport:
    """Classify (or score) every row of `dataset` (the last partial batch included) and compute the
    metrics of the bundle's task; multi-label decisions take `threshold`."""
    check_threshold(threshold)
    started = time.perf_counter()
    predictions = engine.batcher.run(dataset.inputs, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                     bucketing=bucketing, on_batch_done=on_batch_done)
    predictions = replace(predictions, threshold=threshold)
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
        "task": predictions.kind,
        "text_pairs": dataset.text_pairs is not None,
        "examples": count,
        "truncated": int(predictions.truncated.sum()),
        "elapsed_seconds": round(elapsed_seconds, 4),
        "texts_per_second": round(count / elapsed_seconds, 2) if elapsed_seconds > 0 else None,
    }
    if predictions.kind == MULTI_LABEL:
        metrics["threshold"] = predictions.threshold
        metrics["predicted_label_counts"] = dict(zip(predictions.label_names,
                                                     predictions.label_sets.sum(axis=0).tolist()))
    elif predictions.kind != REGRESSION:
        metrics["predicted_label_counts"] = {name: int((predictions.labels == index).sum())
                                             for index, name in enumerate(predictions.label_names)}
    if dataset.labels is not None:
        metrics.update(task_metrics(predictions, dataset.labels))
    return metrics


def task_metrics(predictions: Predictions, gold: list) -> dict:
    """The metrics of the predictions' task against gold labels as data.read_dataset reads them."""
    if predictions.kind == MULTI_LABEL:
        return multilabel_metrics(label_indicators(gold, len(predictions.label_names)), predictions.label_sets,
                                  predictions.label_names)
    if predictions.kind == REGRESSION:
        return regression_metrics(gold, predictions.values)
    return classification_metrics(gold, predictions.labels, predictions.label_names)


def label_indicators(label_sets: Sequence[Sequence[int]], count: int) -> np.ndarray:
    """Label id tuples per row -> bool (rows, count)."""
    indicators = np.zeros((len(label_sets), count), dtype=bool)
    for row, labels in enumerate(label_sets):
        indicators[row, list(labels)] = True
    return indicators


def prediction_rows(predictions: Predictions, dataset: Dataset) -> Iterator[dict]:
    """One dict per input row, in input order, with what the task predicts: the label, its name, its
    score (softmax probability) and every probability (single-label); the labels over the threshold and
    every sigmoid score (multi-label); the score (regression). Then whether the text was truncated, and
    the gold label when the data has one."""
    # Python lists, converted once: indexing numpy per row and per value cost more than the JSON.
    kind = predictions.kind
    labels = predictions.labels.tolist()
    scores = (predictions.probabilities if kind not in (MULTI_LABEL, REGRESSION) else predictions.scores).tolist()
    truncated = predictions.truncated.tolist()
    names = predictions.label_names
    chosen = predictions.label_sets.tolist() if kind == MULTI_LABEL else None
    for index, text in enumerate(dataset.texts):
        row = {"index": index, "line": dataset.line_numbers[index], "text": text}
        if dataset.text_pairs is not None:
            row["text_pair"] = dataset.text_pairs[index]
        if kind == REGRESSION:
            row["score"] = round(scores[index][0], 6)
        elif kind == MULTI_LABEL:
            row["labels"] = [name for name, on in zip(names, chosen[index]) if on]
            row["scores"] = [round(value, 6) for value in scores[index]]
        else:
            label = labels[index]
            row.update({"label": label, "label_name": names[label], "score": round(scores[index][label], 6),
                        "probabilities": [round(value, 6) for value in scores[index]]})
        row["truncated"] = truncated[index]
        if dataset.labels is not None:
            row["gold"] = list(dataset.labels[index]) if kind == MULTI_LABEL else dataset.labels[index]
        yield row


def write_predictions(handle: TextIO, rows: Iterator[dict], output_format: str, label_names: Sequence[str]) -> None:
    """jsonl: every field; csv: the fields of CSV_COLUMNS present, then `probability_<label>` per label
    (`score_<label>` for multi-label); lists are joined with data.LABEL_SEPARATOR."""
    if output_format == "jsonl":
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    writer = None
    for row in rows:
        per_label = row.get("probabilities", row.get("scores"))
        if writer is None:
            prefix = "probability" if "probabilities" in row else "score"
            per_label_columns = [f"{prefix}_{name}" for name in label_names] if per_label is not None else []
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow([column for column in CSV_COLUMNS if column in row] + per_label_columns)
        values = [row[column] for column in CSV_COLUMNS if column in row]
        values = [LABEL_SEPARATOR.join(str(item) for item in value) if isinstance(value, list) else value
                  for value in values]
        writer.writerow(values + (per_label or []))


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
