"""infer: a data file through a bundle -> predictions.jsonl and metrics.json, every row counted."""

from __future__ import annotations

import collections
import contextlib
import csv
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TextIO

import numpy as np

from ..atomic import OutputFolder
from ..data import Dataset
from ..errors import UsageError
from ..data import LABEL_SEPARATOR
from ..metrics import classification_metrics, multilabel_metrics, regression_metrics
from ..runtime.batcher import Batcher
from ..runtime.engine import Engine
from ..runtime.results import Predictions
from ..tasks import DEFAULT_THRESHOLD, MULTI_LABEL, REGRESSION

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
    with Batcher(engine) as batcher:  # this job's own: started (contexts warmed up) here, closed when done
        predictions = batcher.run(dataset.inputs, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                  bucketing=bucketing, on_batch_done=on_batch_done)
    predictions = replace(predictions, threshold=threshold)
    elapsed = time.perf_counter() - started
    metrics = summarize(predictions, dataset.labels, dataset.source, dataset.text_pairs is not None, elapsed)
    metrics.update(run_settings(engine, batch_size, bucketing))
    return InferenceReport(predictions, metrics)


def classify_and_write(engine: Engine, chunks: Iterable[Dataset], handle: TextIO, output_format: str = "jsonl", *,
                       batch_size: int | None = None, max_batch_tokens: int | None = None, bucketing: bool = True,
                       on_batch_done: Callable[[int], None] | None = None,
                       threshold: float = DEFAULT_THRESHOLD) -> InferenceReport:
    """Classify a file chunk after chunk (data.read_dataset_chunks) and write each chunk's prediction rows
    to `handle` as soon as it is done, while the engine already works on the next one.

    Memory stays flat whatever the file's size: of the whole file only what the metrics need is kept
    (logits, truncation, gold labels: a few bytes a row), never its texts. elapsed_seconds covers reading,
    classifying and writing, which overlap.
    """
    check_threshold(threshold)
    started = time.perf_counter()
    waiting: collections.deque[Dataset] = collections.deque()  # chunks handed to the batcher, not yet written
    done: list[Predictions] = []
    gold: list | None = None
    source, text_pairs = None, False

    def inputs_of_chunks() -> Iterator[list]:
        for dataset in chunks:
            waiting.append(dataset)
            yield dataset.inputs

    def rows() -> Iterator[dict]:
        nonlocal gold, source, text_pairs
        first_index = 0
        with contextlib.closing(batcher.run_chunks(inputs_of_chunks(), batch_size=batch_size,
                                                   max_batch_tokens=max_batch_tokens, bucketing=bucketing,
                                                   on_batch_done=on_batch_done)) as results:
            for predictions in results:
                dataset = waiting.popleft()
                predictions = replace(predictions, threshold=threshold)
                done.append(predictions)
                source, text_pairs = dataset.source, dataset.text_pairs is not None
                if dataset.labels is not None:
                    gold = gold if gold is not None else []
                    gold.extend(dataset.labels)
                yield from prediction_rows(predictions, dataset, first_index)
                first_index += len(dataset)

    # The stream is closed at once on an error (a full disk), not when the traceback lets go of it: until
    # then the batcher counts the run as live and closing the batcher would wait for it.
    with Batcher(engine) as batcher, contextlib.closing(rows()) as stream:
        write_predictions(handle, stream, output_format, engine.label_names)
    first = done[0]
    predictions = replace(first, logits=np.concatenate([chunk.logits for chunk in done]),
                          truncated=np.concatenate([chunk.truncated for chunk in done]),
                          token_lengths=np.concatenate([chunk.token_lengths for chunk in done]))
    metrics = summarize(predictions, gold, source, text_pairs, time.perf_counter() - started)
    metrics.update(run_settings(engine, batch_size, bucketing))
    return InferenceReport(predictions, metrics)


def run_settings(engine: Engine, batch_size: int | None, bucketing: bool) -> dict:
    return {"bundle": str(engine.bundle_dir), "backend": engine.backend, "precision": engine.precision,
            "batch_size": batch_size or engine.default_batch_size(), "bucketing": bucketing,
            "max_seq_length": engine.max_seq_length}


def summarize(predictions: Predictions, gold: list | None, source: str, text_pairs: bool,
              elapsed_seconds: float) -> dict:
    """The metrics of one file: `gold` labels (None when it has none) against the predictions."""
    count = len(predictions)
    metrics: dict = {
        "data": source,
        "task": predictions.kind,
        "text_pairs": text_pairs,
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
    if gold is not None:
        metrics.update(task_metrics(predictions, gold))
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


def prediction_rows(predictions: Predictions, dataset: Dataset, first_index: int = 0) -> Iterator[dict]:
    """One dict per input row, in input order, with what the task predicts: the label, its name, its
    score (softmax probability) and every probability (single-label); the labels over the threshold and
    every sigmoid score (multi-label); the score (regression). Then whether the text was truncated, and
    the gold label when the data has one. first_index: the index of the dataset's first row in its file
    (a chunk's offset)."""
    # Python lists, converted once: indexing numpy per row and per value cost more than the JSON.
    kind = predictions.kind
    labels = predictions.labels.tolist()
    scores = (predictions.probabilities if kind not in (MULTI_LABEL, REGRESSION) else predictions.scores).tolist()
    truncated = predictions.truncated.tolist()
    names = predictions.label_names
    chosen = predictions.label_sets.tolist() if kind == MULTI_LABEL else None
    for index, text in enumerate(dataset.texts):
        row = {"index": first_index + index, "line": dataset.line_numbers[index], "text": text}
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


def infer_to_folder(engine: Engine, chunks: Iterable[Dataset], output: OutputFolder, output_format: str = "jsonl", *,
                    batch_size: int | None = None, max_batch_tokens: int | None = None, bucketing: bool = True,
                    on_batch_done: Callable[[int], None] | None = None,
                    threshold: float = DEFAULT_THRESHOLD) -> InferenceReport:
    """predictions.jsonl (or .csv): one line per input row, in input order, streamed as chunks finish;
    metrics.json: the summary. `output` is reserved (checked and locked) by the caller before the work;
    on any error or signal its staging folder goes, so nothing half-written remains."""
    check_output_format(output_format)
    with output.staging() as work:
        with open(work / predictions_file(output_format), "w", encoding="utf-8", newline="") as handle:
            report = classify_and_write(engine, chunks, handle, output_format, batch_size=batch_size,
                                        max_batch_tokens=max_batch_tokens, bucketing=bucketing,
                                        on_batch_done=on_batch_done, threshold=threshold)
        (work / METRICS_FILE).write_text(json.dumps(report.metrics, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return report
