"""Hugging Face's text-classification task shape at POST /, as `InferenceClient.text_classification` sends it.

Body: {"inputs": "text" | {"text", "text_pair"} | [either, ...], "parameters": {"top_k": int, "function_to_apply": "softmax"|"sigmoid"|"none"}};
without function_to_apply, the model's own, as the transformers pipeline behind the Inference API picks it.
A pair is a {"text", "text_pair"} object, as the pipeline takes it (and `InferenceClient.text_classification`
passes such a dict through unchanged).
Answer: [[{"label", "score"}, ...]], one list per input, every label unless top_k says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputDataError
from ..runtime.tokenization import text_input_from_dict
from ..tasks import NONE, SIGMOID, SOFTMAX, apply_function
from .options import Limits
from .payload import check_texts, ranked_labels, request_inputs

EXAMPLE = '{"inputs": "酒店很干净", "parameters": {"top_k": 2}}'
PAIR_EXAMPLE = '{"inputs": {"text": "房间干净吗", "text_pair": "很干净"}}'
FUNCTIONS = (SOFTMAX, SIGMOID, NONE)


@dataclass(frozen=True)
class TextClassificationRequest:
    texts: list  # a text, or a (text, text_pair) tuple, per input
    top_k: int | None
    function_to_apply: str | None  # None: the model's own (softmax; sigmoid for multi-label and one logit)


def parse_text_classification(body: Any, limits: Limits) -> TextClassificationRequest:
    if isinstance(body, dict) and isinstance(body.get("inputs"), dict):
        texts = [_text_input(body["inputs"], 0)]
    else:
        inputs = request_inputs(body, EXAMPLE)
        texts = [inputs] if isinstance(inputs, str) else [_text_input(item, index) for index, item in enumerate(inputs)]
    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters  # 0, "" or [] is a wrong type, not "no parameters"
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


def _text_input(item: Any, index: int) -> Any:
    """A string stays a text (check_texts names what else it may be); a {"text", "text_pair"} dict becomes
    a text or a pair; a list is refused as the pipeline refuses it, naming the dict."""
    if isinstance(item, dict):
        return text_input_from_dict(item)
    if isinstance(item, list):
        raise InputDataError(f"`inputs` item {index} is a list; a text pair is an object here",
                             f"send a pair as {PAIR_EXAMPLE} (or [[\"a\", \"b\"]] to /predict)")
    return item


def format_text_classification(request: TextClassificationRequest, logits: np.ndarray,
                               label_names: tuple[str, ...], default_function: str = "softmax") -> list:
    """default_function: what transformers' pipeline applies for this model (tasks.Task.score_function)."""
    function = request.function_to_apply or default_function
    scores = apply_function(logits, function)  # parse_request allowed only FUNCTIONS
    return [ranked_labels(row, label_names, request.top_k) for row in scores]
