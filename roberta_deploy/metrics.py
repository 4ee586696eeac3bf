"""Classification metrics beside accuracy: per-class precision, recall and F1, macro-F1, confusion matrix."""

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
