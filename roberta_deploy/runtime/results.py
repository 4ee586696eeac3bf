"""What the runtime hands back: predictions for many texts, one text, one request, one batch."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..tasks import DEFAULT_THRESHOLD, MULTI_LABEL, REGRESSION, SINGLE_LABEL, SOFTMAX, Task, apply_function


@dataclass(frozen=True)
class Prediction:
    """One text's result."""

    label: int
    label_name: str
    logits: np.ndarray  # float32 (labels,)
    probabilities: np.ndarray  # float32 (labels,)
    truncated: bool  # the text was cut at max_seq_length
    token_length: int  # tokens used, specials included
    scores: np.ndarray | None = None  # float32 (labels,): the task's scores (softmax, sigmoid, or the value)
    predicted_labels: tuple[str, ...] = ()  # multi-label: every label whose score reaches the threshold
    value: float | None = None  # regression: the score


@dataclass(frozen=True)
class Predictions:
    logits: np.ndarray  # float32 (n, labels)
    truncated: np.ndarray  # bool (n,): text was cut at max_seq_length
    token_lengths: np.ndarray  # int64 (n,): tokens used, specials included
    label_names: tuple[str, ...]
    task: Task | None = None  # from the bundle's manifest; None reads as single-label
    threshold: float = DEFAULT_THRESHOLD  # multi-label: a label is predicted at a score of at least this

    @property
    def kind(self) -> str:
        return self.task.kind if self.task is not None else SINGLE_LABEL

    # Computed once: callers read them per row, and an argmax over every row per read is quadratic.
    @functools.cached_property
    def labels(self) -> np.ndarray:
        """int64 (n,): the best label (for multi-label the highest-scoring one)."""
        return self.logits.argmax(axis=1)

    @functools.cached_property
    def probabilities(self) -> np.ndarray:
        return apply_function(self.logits, SOFTMAX)

    @functools.cached_property
    def scores(self) -> np.ndarray:
        """float32 (n, labels): softmax (single-label), sigmoid (multi-label, one-logit models) or the
        logits themselves (regression), as transformers' pipeline scores them."""
        return self.task.scores(self.logits) if self.task is not None else apply_function(self.logits, SOFTMAX)

    @functools.cached_property
    def label_sets(self) -> np.ndarray:
        """bool (n, labels): multi-label decisions, score >= threshold."""
        return self.scores >= self.threshold

    @property
    def values(self) -> np.ndarray:
        """float32 (n,): regression scores."""
        return self.scores[:, 0]

    def __len__(self) -> int:
        return len(self.logits)

    def __getitem__(self, index: int) -> Prediction:
        logits = self.logits[index]
        label = int(logits.argmax())
        scores = self.scores[index]
        chosen = tuple(name for name, score in zip(self.label_names, scores) if score >= self.threshold) \
            if self.kind == MULTI_LABEL else ()
        return Prediction(label=label, label_name=self.label_names[label], logits=logits,
                          probabilities=apply_function(logits, SOFTMAX), truncated=bool(self.truncated[index]),
                          token_length=int(self.token_lengths[index]), scores=scores, predicted_labels=chosen,
                          value=float(scores[0]) if self.kind == REGRESSION else None)


@dataclass(frozen=True)
class RequestTimings:
    """Where one request's time went, in seconds."""

    tokenization_s: float  # encoding its texts, on the submitting thread
    queue_s: float  # from enqueued until its first row entered a batch
    inference_s: float  # engine time of the batches that held its rows (summed when it spans several)
    total_s: float  # from submit() until its result was set


@dataclass(frozen=True)
class RequestResult:
    """One submitted request: its texts' logits in the order given."""

    logits: np.ndarray  # float32 (n, labels)
    truncated: np.ndarray  # bool (n,)
    token_lengths: np.ndarray  # int64 (n,)
    compute_tokens: int  # padded tokens computed for this request's rows
    timings: RequestTimings
    label_names: tuple[str, ...] = ()
    task: Task | None = None

    def predictions(self) -> Predictions:
        return Predictions(logits=self.logits, truncated=self.truncated, token_lengths=self.token_lengths,
                           label_names=self.label_names, task=self.task)


@dataclass(frozen=True)
class BatchStats:
    """One batch an engine context computed (handed to batch listeners, e.g. for metrics)."""

    rows: int  # texts in the batch (filler rows of static engines not counted)
    padded_length: int  # tokens every row was padded to
    tokens: int  # rows x padded_length
    inference_s: float  # engine time of this batch
    context: int  # which worker ran it
    real_tokens: int = 0  # the texts' own tokens (tokens - real_tokens is padding)


@dataclass(frozen=True)
class BatcherStats:
    """Counters since start (a snapshot)."""

    requests: int  # online requests accepted
    texts: int  # texts accepted, online and offline
    batches: int  # batches computed
    dropped: int  # requests cancelled by their caller before they reached the engine
    failed: int  # batches whose engine call raised
    rejected: int  # submits refused because the queue was full
    listener_errors: int  # batch listeners that raised (ignored otherwise)
