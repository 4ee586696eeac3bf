"""text-embeddings-inference's classifier and reranker API: POST /predict, POST /rerank and the x-*-time headers.

/predict body: {"inputs": "text" | ["text", ...] | [["text"], ["text", "text_pair"], ...], "truncate": bool,
"truncation_direction": "right" | "left", "raw_scores": bool}. Answer: [{"score", "label"}] sorted by score
for one input; one such list per input for a batch. Scores are the softmax over labels, or the sigmoid of a one-logit model, as TEI computes them.
/rerank body: {"query", "texts": [...], "raw_scores", "return_text", "truncate", "truncation_direction"}, for
a one-logit model (a cross-encoder). Answer: [{"index", "score", "text"?}], highest score first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendError, EmptyRequestError, InputDataError
from ..tasks import SIGMOID, apply_function
from .options import Limits
from .payload import check_texts, optional_bool, ranked_labels, request_inputs, tei_scores

EXAMPLE = '{"inputs": "酒店很干净"}'
RERANK_EXAMPLE = '{"query": "哪家酒店安静", "texts": ["隔音很好", "太吵了"]}'


@dataclass(frozen=True)
class PredictRequest:
    texts: list  # a text, or a (text, text_pair) tuple, per input
    batch: bool  # answer one list per input, even for a batch of one
    truncate: bool | None  # None: the server's --auto-truncate
    raw_scores: bool
    truncation_direction: str = "right"  # which end of a long text is cut: "right" or "left", as TEI's


def parse_predict(body: Any, limits: Limits) -> PredictRequest:
    inputs = request_inputs(body, EXAMPLE)
    if isinstance(inputs, str):
        texts, batch = [inputs], False
    else:
        texts, batch = [_sequence(item, index) for index, item in enumerate(inputs)], True
    raw_scores = optional_bool(body.get("raw_scores"), "raw_scores")
    return PredictRequest(texts=check_texts(texts, limits, "inputs"), batch=batch,
                          truncate=optional_bool(body.get("truncate"), "truncate"), raw_scores=bool(raw_scores),
                          truncation_direction=truncation_direction(body))


def truncation_direction(body: dict) -> str:
    """TEI's `truncation_direction`: "right" (the default) or "left", either capitalized, as its router reads it."""
    direction = body.get("truncation_direction")
    if direction is None:
        return "right"
    if direction not in ("right", "Right", "left", "Left"):
        raise InputDataError(f"`truncation_direction` {json.dumps(direction, ensure_ascii=False)} is not right or left",
                             'send "truncation_direction": "left" to keep the end of a long text, or leave it out')
    return direction.lower()


def _sequence(item: Any, index: int) -> Any:
    """["text"] is a text and ["text", "text_pair"] a pair, as in TEI's batches; a bare string is a text
    (a batch of strings, which TEI reads only as one pair when it holds two)."""
    if isinstance(item, list):
        if len(item) == 1:
            return item[0]
        if len(item) == 2:
            return (item[0], item[1])
        raise InputDataError(f"`inputs` item {index} holds {len(item)} texts",
                             'send one text per input as "text" or ["text"], or a pair as ["text", "text_pair"]')
    return item


def format_predict(request: PredictRequest, logits: np.ndarray, label_names: tuple[str, ...]) -> list:
    scores = logits if request.raw_scores else tei_scores(logits)
    answers = [ranked_labels(row, label_names) for row in scores]
    return answers if request.batch else answers[0]


@dataclass(frozen=True)
class RerankRequest:
    query: str
    texts: list[str]
    raw_scores: bool
    return_text: bool
    truncate: bool | None  # None: the server's --auto-truncate
    truncation_direction: str = "right"

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(self.query, text) for text in self.texts]


def parse_rerank(body: Any, limits: Limits, label_count: int) -> RerankRequest:
    if not isinstance(body, dict) or "query" not in body or "texts" not in body:
        raise InputDataError("the request needs `query` and `texts`", f"send a JSON object such as {RERANK_EXAMPLE}")
    query, texts = body["query"], body["texts"]
    if not isinstance(query, str):
        raise InputDataError(f"`query` is {type(query).__name__}, not a string", f"send {RERANK_EXAMPLE}")
    if not isinstance(texts, list):
        raise InputDataError(f"`texts` is {type(texts).__name__}, not a list of strings", f"send {RERANK_EXAMPLE}")
    if not texts:
        raise EmptyRequestError("`texts` cannot be empty", "send at least one text to rank against the query")
    if label_count != 1:
        # TEI's own status for this: 424, a backend that cannot do what was asked.
        raise BackendError(f"model is not a re-ranker model (it has {label_count} labels, a re-ranker one score)",
                           "send text pairs to /predict instead, or serve a one-logit cross-encoder")
    direction = truncation_direction(body)
    checked = check_texts([(query, text) for text in texts], limits, "texts")
    return RerankRequest(query=query, texts=[text for _, text in checked],
                         raw_scores=bool(optional_bool(body.get("raw_scores"), "raw_scores")),
                         return_text=bool(optional_bool(body.get("return_text"), "return_text")),
                         truncate=optional_bool(body.get("truncate"), "truncate"), truncation_direction=direction)


def format_rerank(request: RerankRequest, logits: np.ndarray) -> list[dict]:
    """Highest score first; equal scores in TEI's order (a stable ascending sort, reversed)."""
    scores = (logits if request.raw_scores else apply_function(logits, SIGMOID))[:, 0].tolist()
    if any(score != score for score in scores):
        raise BackendError("score is NaN", "rebuild the bundle at fp32 and report the model")
    ranks = [{"index": index, **({"text": request.texts[index]} if request.return_text else {}), "score": score}
             for index, score in enumerate(scores)]
    return sorted(ranks, key=lambda rank: rank["score"])[::-1]


def timing_headers(timings, total_s: float, compute_tokens: int) -> dict[str, str]:
    """Milliseconds as integers, as text-embeddings-inference sends them; total_s is the server's whole request."""
    return {"x-compute-type": "cpu", "x-compute-tokens": str(int(compute_tokens)),
            "x-tokenization-time": _ms(timings.tokenization_s), "x-queue-time": _ms(timings.queue_s),
            "x-inference-time": _ms(timings.inference_s), "x-total-time": _ms(total_s)}


def _ms(seconds: float) -> str:
    return str(int(round(seconds * 1000)))
