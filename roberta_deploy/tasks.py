"""What a sequence classifier computes: one label, several labels, or a score, for a text or a text pair.

The task is read from the checkpoint's config at export (`problem_type`, `num_labels`), recorded in
every manifest, and read back by each later stage; nothing downstream guesses it. Scores follow the
rule of transformers' text-classification pipeline, so a one-logit cross-encoder (no problem_type)
gives a sigmoid relevance and a model fine-tuned as `regression` its raw value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ModelLoadError
from .precision import TOLERANCES

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
TASKS = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)
SOFTMAX, SIGMOID, NONE = "softmax", "sigmoid", "none"
DEFAULT_THRESHOLD = 0.5  # a label is predicted when its sigmoid score is at least this


@dataclass(frozen=True)
class Task:
    kind: str  # one of TASKS
    num_labels: int  # outputs per text
    problem_type: str | None = None  # as the checkpoint's config.json says (None: transformers decides by num_labels)
    text_pairs: bool | None = None  # fine-tuned on text pairs; None when unknown

    @classmethod
    def from_config(cls, problem_type: str | None, num_labels: int, text_pairs: bool | None = None) -> "Task":
        """transformers' own rule (BertForSequenceClassification.forward): an unset problem_type with one
        label trains as regression; otherwise as single-label classification."""
        if problem_type is not None and problem_type not in TASKS:
            raise ModelLoadError(f"the checkpoint's problem_type {problem_type!r} is unknown",
                                 f"set problem_type in config.json to one of {', '.join(TASKS)}")
        kind = problem_type or (REGRESSION if num_labels == 1 else SINGLE_LABEL)
        if kind == REGRESSION and num_labels != 1:
            raise ModelLoadError(f"a regression head with {num_labels} outputs is not supported",
                                 "export a regression model with num_labels 1 (one score per text)")
        return cls(kind, num_labels, problem_type, text_pairs)

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Task":
        """The task an export or bundle recorded; manifests written before tasks existed are single-label."""
        num_labels = len(manifest["labels"])
        return cls(manifest.get("task") or SINGLE_LABEL, num_labels, manifest.get("problem_type"),
                   manifest.get("text_pairs"))

    def to_manifest(self) -> dict:
        return {"task": self.kind, "problem_type": self.problem_type, "text_pairs": self.text_pairs}

    @property
    def score_function(self) -> str:
        """What turns logits into scores, as transformers' pipeline chooses it."""
        if self.problem_type == REGRESSION:
            return NONE
        if self.kind == MULTI_LABEL or self.num_labels == 1:
            return SIGMOID
        return SOFTMAX

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return apply_function(logits, self.score_function)


def apply_function(logits: np.ndarray, function: str) -> np.ndarray:
    """float32 logits (n, labels) -> scores (n, labels): softmax over labels, sigmoid per label, or as they are."""
    logits = np.asarray(logits, dtype=np.float32)
    if function == SOFTMAX:
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if function == SIGMOID:
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def schema_problem(manifest: dict) -> str | None:
    """What is wrong with a manifest's task keys (all optional), or None."""
    task = manifest.get("task")
    if task is not None and task not in TASKS:
        return f"task {task!r} is not one of {', '.join(TASKS)}"
    problem_type = manifest.get("problem_type")
    if problem_type is not None and problem_type not in TASKS:
        return f"problem_type {problem_type!r} is not one of {', '.join(TASKS)}"
    if manifest.get("text_pairs") is not None and not isinstance(manifest["text_pairs"], bool):
        return "text_pairs must be true, false or null"
    if task == REGRESSION and len(manifest["labels"]) != 1:
        return "a regression model has exactly one label"
    return None


def agreement_text(check: dict) -> str:
    """The task's agreement figure of a check, for messages."""
    if "max_abs_score_diff" in check:
        return f"max score difference {check['max_abs_score_diff']:.3g} (tolerance {check['score_tolerance']:.3g})"
    return f"label agreement {check['label_agreement']:.4f}"


def compare_with_reference(task: "Task", built: np.ndarray, reference: np.ndarray, precision: str,
                           threshold: float = DEFAULT_THRESHOLD) -> dict:
    """A bundle's logits against the fp32 reference's on the same inputs, by the task's own measure.

    Every task must keep each logit within its precision's tolerance (precision.TOLERANCES). Then
    single-label reports how many top labels agree; multi-label how many label decisions over the
    threshold agree (a decision can only flip where the fp32 logit lies within the bound of the
    threshold's); regression must also keep every score within the same tolerance of the fp32 score.
    """
    tolerance = TOLERANCES[precision]
    difference = float(np.abs(built - reference).max(initial=0.0))
    bound = tolerance.bound(reference)
    check = {"passed": bool(difference <= bound), "max_abs_logit_diff": difference, "tolerance": bound}
    if task.kind == MULTI_LABEL:
        built_sets, reference_sets = task.scores(built) >= threshold, task.scores(reference) >= threshold
        check["label_agreement"] = float((built_sets == reference_sets).mean())
        check["label_set_agreement"] = float((built_sets == reference_sets).all(axis=1).mean())
        check["threshold"] = threshold
    elif task.kind == REGRESSION:
        built_scores, reference_scores = task.scores(built)[:, 0], task.scores(reference)[:, 0]
        score_difference = float(np.abs(built_scores - reference_scores).max(initial=0.0))
        score_bound = tolerance.bound(reference_scores)
        check.update({"max_abs_score_diff": score_difference, "score_tolerance": score_bound,
                      "passed": bool(check["passed"] and score_difference <= score_bound)})
        check["scores_within_tolerance"] = float(np.mean(np.abs(built_scores - reference_scores) <= score_bound))
    else:
        check["label_agreement"] = float((built.argmax(1) == reference.argmax(1)).mean())
    return check
