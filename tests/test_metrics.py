"""Per-class metrics, checked against counts worked out by hand."""

import pytest

from roberta_deploy.metrics import classification_metrics, per_class_markdown


def test_per_class_precision_recall_f1_and_confusion():
    gold = [0, 0, 0, 1, 1, 2]
    predicted = [0, 1, 0, 1, 0, 1]  # class 2 is never predicted
    metrics = classification_metrics(gold, predicted, ["neg", "pos", "mixed"])
    assert metrics["confusion_matrix"]["values"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    assert (metrics["correct"], metrics["accuracy"]) == (3, 0.5)
    neg, pos, mixed = (metrics["per_class"][name] for name in ("neg", "pos", "mixed"))
    assert (neg["precision"], neg["recall"], neg["support"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert (pos["precision"], pos["recall"]) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert pos["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert mixed == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.4 + 0) / 3)
    table = per_class_markdown(metrics)
    assert "| pos | 0.3333 | 0.5000 | 0.4000 | 2 |" in table and "| mixed | 0 | 1 | 0 |" in table
