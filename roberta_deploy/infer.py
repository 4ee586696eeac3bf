"""infer: a data file through a bundle -> predictions.jsonl and metrics.json, every row counted."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_directory
from .data import Dataset
from .runtime.engine import Engine, Predictions

PREDICTIONS_FILE = "predictions.jsonl"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class InferenceReport:
    predictions: Predictions
    metrics: dict


def classify_dataset(engine: Engine, dataset: Dataset, *, batch_size: int | None = None,
                     max_batch_tokens: int | None = None, bucketing: bool = True,
                     on_batch_done: Callable[[int], None] | None = None) -> InferenceReport:
    """Classify every row of `dataset` (the last partial batch included) and compute its metrics."""
    from .runtime.batch_queue import InferenceQueue

    started = time.perf_counter()
    predictions = InferenceQueue(engine).run(dataset.texts, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
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
        gold = np.asarray(dataset.labels)
        correct = int((predictions.labels == gold).sum())
        labels = len(predictions.label_names)
        confusion = np.zeros((labels, labels), dtype=np.int64)
        np.add.at(confusion, (gold, predictions.labels), 1)
        metrics.update({"accuracy": correct / count, "correct": correct,
                        "confusion_matrix": {"rows": "gold", "columns": "predicted", "values": confusion.tolist()}})
    return metrics


def write_inference_outputs(report: InferenceReport, dataset: Dataset, output: Path, overwrite: bool = False) -> None:
    """predictions.jsonl: one line per input row, in input order; metrics.json: the summary."""
    predictions = report.predictions
    probabilities = predictions.probabilities
    with atomic_directory(output, overwrite=overwrite) as work:
        with open(work / PREDICTIONS_FILE, "w", encoding="utf-8") as handle:
            for index, text in enumerate(dataset.texts):
                label = int(predictions.labels[index])
                row = {"index": index, "line": dataset.line_numbers[index], "text": text, "label": label,
                       "label_name": predictions.label_names[label],
                       "probabilities": [round(float(value), 6) for value in probabilities[index]],
                       "truncated": bool(predictions.truncated[index])}
                if dataset.labels is not None:
                    row["gold"] = dataset.labels[index]
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        (work / METRICS_FILE).write_text(json.dumps(report.metrics, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
