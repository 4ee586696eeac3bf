"""text-embeddings-inference's classifier API: POST /predict and the x-*-time headers.

Body: {"inputs": "text" | ["text", ...] | [["text"], ...], "truncate": bool, "raw_scores": bool}.
Answer: [{"score", "label"}] sorted by score for one input; one such list per input for a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputDataError
from .options import Limits
from .payload import check_texts, optional_bool, ranked_labels, request_inputs, softmax

EXAMPLE = '{"inputs": "酒店很干净"}'


@dataclass(frozen=True)
class PredictRequest:
    texts: list[str]
    batch: bool  # answer one list per input, even for a batch of one
    truncate: bool | None  # None: the server's --auto-truncate
    raw_scores: bool


def parse_predict(body: Any, limits: Limits) -> PredictRequest:
    inputs = request_inputs(body, EXAMPLE)
    if isinstance(inputs, str):
        texts, batch = [inputs], False
    else:
        texts, batch = [_single_text(item, index) for index, item in enumerate(inputs)], True
    raw_scores = optional_bool(body.get("raw_scores"), "raw_scores")
    return PredictRequest(texts=check_texts(texts, limits, "inputs"), batch=batch,
                          truncate=optional_bool(body.get("truncate"), "truncate"), raw_scores=bool(raw_scores))


def _single_text(item: Any, index: int) -> Any:
    if isinstance(item, list):
        if len(item) != 1:
            raise InputDataError(f"`inputs` item {index} holds {len(item)} texts; text pairs are not supported",
                                 "send one text per input, as [\"text\"] or \"text\"")
        return item[0]
    return item


def format_predict(request: PredictRequest, logits: np.ndarray, label_names: tuple[str, ...]) -> list:
    scores = logits if request.raw_scores else softmax(logits)
    answers = [ranked_labels(row, label_names) for row in scores]
    return answers if request.batch else answers[0]


def timing_headers(timings, total_s: float, compute_tokens: int) -> dict[str, str]:
    """Milliseconds as integers, as text-embeddings-inference sends them; total_s is the server's whole request."""
    return {"x-compute-type": "cpu", "x-compute-tokens": str(int(compute_tokens)),
            "x-tokenization-time": _ms(timings.tokenization_s), "x-queue-time": _ms(timings.queue_s),
            "x-inference-time": _ms(timings.inference_s), "x-total-time": _ms(total_s)}


def _ms(seconds: float) -> str:
    return str(int(round(seconds * 1000)))
