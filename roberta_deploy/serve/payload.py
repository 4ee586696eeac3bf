"""What every protocol shares: JSON bodies, the per-request limits on texts, and turning logits into scores."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from ..errors import InputDataError
from ..tasks import SIGMOID, SOFTMAX, apply_function
from .options import Limits


MAX_JSON_DEPTH = 32  # nested arrays and objects; every protocol's requests need 5 at most
# A JSON string, escapes included (the unrolled form: no backtracking on long strings).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def parse_json(body: bytes, example: str) -> Any:
    """The JSON value of `body`; InputDataError for invalid JSON or nesting deeper than MAX_JSON_DEPTH, checked
    before the parser recurses (100,000 nested brackets would otherwise end in a RecursionError)."""
    depth = json_depth(body)
    if depth > MAX_JSON_DEPTH:
        raise InputDataError(f"the request body nests {depth} arrays or objects, past the limit of {MAX_JSON_DEPTH}",
                             f"send a JSON body such as {example}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise InputDataError(f"the request body is not valid JSON ({error})", f"send a JSON body such as {example}") \
            from None


def json_depth(body: bytes) -> int:
    """The deepest nesting of brackets and braces outside JSON strings, counted without recursion (numpy over
    the bytes left once strings are cut out: a 2 MB body takes milliseconds)."""
    structure = np.frombuffer(_JSON_STRING.sub(b"", body), dtype=np.uint8)
    steps = (np.isin(structure, (ord("["), ord("{"))).astype(np.int32)
             - np.isin(structure, (ord("]"), ord("}"))).astype(np.int32))
    return int(np.cumsum(steps).max(initial=0))


def dump_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def request_inputs(body: Any, example: str) -> str | list:
    """The `inputs` of a JSON request body (TEI's /predict and Hugging Face's text classification share
    it): one text or a list, checked for the shape only; each protocol reads the list its own way."""
    if not isinstance(body, dict) or "inputs" not in body:
        raise InputDataError("the request has no `inputs`", f"send a JSON object such as {example}")
    inputs = body["inputs"]
    if not isinstance(inputs, (str, list)):
        raise InputDataError(f"`inputs` is {type(inputs).__name__}, not a text or a list of texts",
                             f"send a JSON object such as {example}")
    return inputs


def check_texts(texts: list, limits: Limits, field: str) -> list:
    """Every item a non-empty string (or a pair of them, as a tuple) within the character limit (a pair's
    two texts together, as text-embeddings-inference counts them); no more texts than the batch limit."""
    if not texts:
        raise InputDataError(f"`{field}` holds no text", f"put at least one text in `{field}`")
    if len(texts) > limits.max_client_batch_size:
        raise InputDataError(
            f"the request holds {len(texts)} texts, past the limit of {limits.max_client_batch_size} per request",
            f"send at most {limits.max_client_batch_size} texts per request, or start the server with a larger "
            f"--max-client-batch-size")
    for index, text in enumerate(texts):
        parts = text if isinstance(text, tuple) else (text,)
        for part in parts:
            if not isinstance(part, str):
                raise InputDataError(f"`{field}` item {index} is {type(part).__name__}, not a string",
                                     "send texts as JSON strings")
            if not part.strip():
                raise InputDataError(f"`{field}` item {index} is empty", "give every input a non-empty text")
            if not part.isascii():
                _check_encodable(part, f"`{field}` item {index}")
        if sum(len(part) for part in parts) > limits.max_input_chars:
            raise InputDataError(
                f"`{field}` item {index} has {sum(len(part) for part in parts)} characters, past the limit of "
                f"{limits.max_input_chars}",
                "send shorter texts, or start the server with a larger --max-input-chars")
    return texts


def _check_encodable(text: str, where: str) -> None:
    """A lone surrogate (JSON allows "\\ud800") is no Unicode text: the tokenizer would raise a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputDataError(f"{where} holds {text[error.start]!r}, a lone surrogate that is not a character",
                             "send valid Unicode text (a surrogate pair as its two \\u escapes together)") from None


def tei_scores(logits: np.ndarray) -> np.ndarray:
    """text-embeddings-inference's scores: softmax over several labels, the sigmoid of a single logit."""
    return apply_function(logits, SOFTMAX if logits.shape[1] > 1 else SIGMOID)


def optional_bool(value: Any, field: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise InputDataError(f"`{field}` must be true or false, got {json.dumps(value)}", f"send `{field}`: true or false")


def ranked_labels(scores: np.ndarray, label_names: tuple[str, ...], top_k: int | None = None) -> list[dict]:
    """One row of scores -> [{"label", "score"}] sorted by score, highest first."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    return [{"label": label_names[index], "score": float(scores[index])} for index in order]
