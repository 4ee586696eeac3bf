"""Metrics of each task: accuracy, per-class precision/recall/F1, macro-F1 and the confusion matrix
(single-label); micro/macro F1, per-label scores and exact match (multi-label); Pearson, Spearman and
MSE (regression)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_metrics(gold: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray,
                           label_names: Sequence[str]) -> dict:
    """gold, predicted: int label ids (n,). A class never predicted has precision 0 (and never seen,
    recall 0), as scikit-learn reports with zero_division=0; macro-F1 averages over every label."""
    gold = np.asarray(gold, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    count = len(label_names)
    confusion = np.zeros((count, count), dtype=np.int64)
    np.add.at(confusion, (gold, predicted), 1)
    true_positives = np.diag(confusion).astype(np.float64)
    predicted_totals = confusion.sum(axis=0).astype(np.float64)
    gold_totals = confusion.sum(axis=1).astype(np.float64)
    precision = np.divide(true_positives, predicted_totals, out=np.zeros(count), where=predicted_totals > 0)
    recall = np.divide(true_positives, gold_totals, out=np.zeros(count), where=gold_totals > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(count), where=both > 0)
    correct = int(true_positives.sum())
    return {
        "accuracy": correct / len(gold) if len(gold) else 0.0,
        "correct": correct,
        "macro_f1": float(f1.mean()) if count else 0.0,
        "per_class": {name: {"precision": float(precision[index]), "recall": float(recall[index]),
                             "f1": float(f1[index]), "support": int(gold_totals[index])}
                      for index, name in enumerate(label_names)},
        "confusion_matrix": {"rows": "gold", "columns": "predicted", "labels": list(label_names),
                             "values": confusion.tolist()},
    }


def per_class_markdown(metrics: dict) -> str:
    """The per-class table and the confusion matrix as markdown."""
    names = metrics["confusion_matrix"]["labels"]
    lines = ["| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, row in metrics["per_class"].items():
        lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |")
    lines.append(f"| macro | | | {metrics['macro_f1']:.4f} | {sum(r['support'] for r in metrics['per_class'].values())} |")
    lines += ["", "| gold \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, values in zip(names, metrics["confusion_matrix"]["values"]):
        lines.append(f"| {name} | " + " | ".join(str(value) for value in values) + " |")
    return "\n".join(lines) + "\n"


def multilabel_metrics(gold: np.ndarray, predicted: np.ndarray, label_names: Sequence[str]) -> dict:
    """gold, predicted: bool (n, labels), a label set per row. Micro scores pool every (row, label)
    decision, macro scores average the per-label F1; exact match is the share of rows whose whole set is
    right (scikit-learn's accuracy_score on label indicators). Zero divisions give 0, as zero_division=0."""
    gold = np.asarray(gold, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    true_positives = (gold & predicted).sum(axis=0).astype(np.float64)
    predicted_totals = predicted.sum(axis=0).astype(np.float64)
    gold_totals = gold.sum(axis=0).astype(np.float64)
    precision = _ratio(true_positives, predicted_totals)
    recall = _ratio(true_positives, gold_totals)
    f1 = _ratio(2 * precision * recall, precision + recall)
    micro_precision = _ratio(true_positives.sum(), predicted_totals.sum())
    micro_recall = _ratio(true_positives.sum(), gold_totals.sum())
    return {
        "exact_match": float((gold == predicted).all(axis=1).mean()) if len(gold) else 0.0,
        "micro_precision": float(micro_precision), "micro_recall": float(micro_recall),
        "micro_f1": float(_ratio(2 * micro_precision * micro_recall, micro_precision + micro_recall)),
        "macro_f1": float(f1.mean()) if len(label_names) else 0.0,
        "per_label": {name: {"precision": float(precision[index]), "recall": float(recall[index]),
                             "f1": float(f1[index]), "support": int(gold_totals[index])}
                      for index, name in enumerate(label_names)},
    }


def regression_metrics(gold: Sequence[float] | np.ndarray, predicted: Sequence[float] | np.ndarray) -> dict:
    """Pearson and Spearman correlation (ties ranked by their average, as scipy does) and mean squared
    and absolute error. A constant series has no correlation: reported as None."""
    gold = np.asarray(gold, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    return {"pearson": _pearson(gold, predicted), "spearman": _pearson(_average_ranks(gold), _average_ranks(predicted)),
            "mse": float(np.mean((gold - predicted) ** 2)) if len(gold) else 0.0,
            "mae": float(np.mean(np.abs(gold - predicted))) if len(gold) else 0.0}


def _ratio(numerator, denominator):
    numerator, denominator = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _pearson(first: np.ndarray, second: np.ndarray) -> float | None:
    if len(first) < 2:
        return None
    first, second = first - first.mean(), second - second.mean()
    scale = np.sqrt((first ** 2).sum() * (second ** 2).sum())
    return float((first * second).sum() / scale) if scale > 0 else None


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2
    return ranks


def task_metrics_markdown(metrics: dict) -> str:
    """The per-label table of multi-label metrics, or nothing for other tasks."""
    if "per_label" not in metrics:
        return ""
    lines = ["| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, row in metrics["per_label"].items():
        lines.append(f"| {name} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |")
    lines.append(f"| micro | {metrics['micro_precision']:.4f} | {metrics['micro_recall']:.4f} | "
                 f"{metrics['micro_f1']:.4f} | |")
    lines.append(f"| macro | | | {metrics['macro_f1']:.4f} | |")
    return "\n".join(lines) + "\n"
