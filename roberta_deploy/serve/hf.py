"""Hugging Face's text-classification task shape at POST /, as `InferenceClient.text_classification` sends it.

Body: {"inputs": "text" | ["text", ...], "parameters": {"top_k": int, "function_to_apply": "softmax"|"sigmoid"|"none"}};
without function_to_apply, the model's own, as the transformers pipeline behind the Inference API picks it.
Answer: [[{"label", "score"}, ...]], one list per input, every label unless top_k says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputDataError
from .options import Limits
from .payload import check_texts, ranked_labels, request_inputs, sigmoid, softmax

EXAMPLE = '{"inputs": "酒店很干净", "parameters": {"top_k": 2}}'
FUNCTIONS = ("softmax", "sigmoid", "none")


@dataclass(frozen=True)
class TextClassificationRequest:
    texts: list[str]
    top_k: int | None
    function_to_apply: str | None  # None: the model's own (softmax; sigmoid for multi-label and one logit)


def parse_text_classification(body: Any, limits: Limits) -> TextClassificationRequest:
    inputs = request_inputs(body, EXAMPLE)
    texts = [inputs] if isinstance(inputs, str) else inputs
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InputDataError("`parameters` must be a JSON object", f"send a JSON object such as {EXAMPLE}")
    unknown = sorted(set(parameters) - {"top_k", "function_to_apply"})
    if unknown:
        raise InputDataError(f"unknown parameter {unknown[0]!r} for text classification",
                             "use only `top_k` and `function_to_apply`")
    top_k = parameters.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise InputDataError(f"`top_k` must be a positive integer, got {top_k!r}", "send e.g. \"top_k\": 1")
    function = parameters.get("function_to_apply")
    if function is not None and function not in FUNCTIONS:
        raise InputDataError(f"`function_to_apply` {function!r} is not one of {', '.join(FUNCTIONS)}",
                             "send softmax (default), sigmoid or none")
    return TextClassificationRequest(texts=check_texts(texts, limits, "inputs"), top_k=top_k,
                                     function_to_apply=function)


def format_text_classification(request: TextClassificationRequest, logits: np.ndarray,
                               label_names: tuple[str, ...], default_function: str = "softmax") -> list:
    """default_function: what transformers' pipeline applies for this model (tasks.Task.score_function)."""
    function = request.function_to_apply or default_function
    scores = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda values: values}[function](logits)
    return [ranked_labels(row, label_names, request.top_k) for row in scores]
