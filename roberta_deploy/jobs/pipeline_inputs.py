"""What `pipeline()` and its calls accept, read as `transformers.pipeline("text-classification")` reads it:
the call options (top_k, function_to_apply, batch_size, truncation, max_length, padding), devices in every
form transformers takes, and the rule that tells one text pair from several texts.

The input rule, beside transformers' (which decides by type too, except for its legacy nested list):

| input | transformers | here |
|---|---|---|
| `"text"` | one text, `[{label, score}]` | the same |
| `["a", "b"]` | a list of texts, one result each | the same |
| `{"text": a, "text_pair": b}` | one pair, `{label, score}` | the same |
| `[{"text": a, "text_pair": b}, ...]` | one result per pair | the same |
| `("a", "b")`, a tuple | not an input it documents (it scores the first text only) | always one pair; a tuple of another length is an error |
| `[("a", "b"), "c"]`, `[["a", "b"]]` | an error (send a dict) | a pair, then a text: a two-item tuple or list inside a list is a pair; another length is an error |
| a generator, an iterator, a `Dataset`/`KeyDataset` | an iterator of results, streamed | the same |
| `b"..."` | an error | an error: decode it first |

So `clf(tuple(texts))` is a pair for two texts and an error otherwise, never three texts; and the meaning of an
input never depends on how many texts it holds.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, replace
from typing import Any, Union

from ..backends.base import canonical_device
from ..errors import InputDataError, UsageError
from ..runtime.tokenization import text_input_from_dict
from ..tasks import NONE, SIGMOID, SOFTMAX

TASKS = ("text-classification", "sentiment-analysis")  # transformers' names for this pipeline
FUNCTIONS = (SOFTMAX, SIGMOID, NONE)
PADDINGS = (True, False, "longest", "max_length", "do_not_pad")
TRUNCATIONS = (True, False, "longest_first", "only_first", "only_second", "do_not_truncate")


class _Unset:
    """transformers tells `top_k` left out from `top_k=None` (all labels); so do we."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset()
TopK = Union[int, None, _Unset]

# Kinds of input (`input_kind`).
SINGLE_TEXT, SINGLE_PAIR, LIST, STREAM = "text", "pair", "list", "stream"


@dataclass(frozen=True)
class CallOptions:
    """Options a pipeline takes at creation and again per call (a call's own win for that call)."""
    top_k: TopK = UNSET  # unset: the best label as one dict; None: every label; k: the k best
    function_to_apply: str | None = None  # None: the model's own (transformers' rule, from the manifest's task)
    batch_size: int | None = None  # texts per engine call; None: the bundle's default
    truncation: Any = None  # None: cut at the bundle's max_seq_length and warn once; True: cut silently; False: refuse
    max_length: int | None = None  # tokens to cut at (at most the bundle's max_seq_length); implies truncation
    padding: Any = None  # accepted for drop-in use; batches are padded as the engine needs, results do not change

    def merged(self, **call_options) -> "CallOptions":
        """These options with a call's keywords on top (checked); an unknown keyword is a UsageError."""
        unknown = sorted(set(call_options) - set(CallOptions.__dataclass_fields__))
        if unknown:
            raise UsageError(f"the pipeline does not take {unknown[0]}=",
                             "pass top_k, function_to_apply, batch_size, truncation, max_length or padding")
        return checked(replace(self, **call_options))


def checked(options: CallOptions) -> CallOptions:
    top_k = options.top_k
    if top_k is not UNSET and top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                                     or top_k < 1):
        raise UsageError(f"top_k={top_k!r} is not a positive integer", "pass top_k=1, 2, ... or top_k=None for every label")
    function = options.function_to_apply
    if function is not None:
        name = str(getattr(function, "value", function)).lower()  # also transformers' ClassificationFunction
        if name not in FUNCTIONS:
            raise UsageError(f"function_to_apply={function!r} is unknown", f"use one of {', '.join(FUNCTIONS)}")
        options = replace(options, function_to_apply=name)
    for name in ("batch_size", "max_length"):
        value = getattr(options, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{name}={value!r} is not a positive integer", f"pass {name}=1 or more, or leave it off")
    if options.truncation not in (None, *TRUNCATIONS):
        raise UsageError(f"truncation={options.truncation!r} is unknown",
                         "pass truncation=True (cut long texts) or False (refuse them)")
    if options.padding not in (None, *PADDINGS):
        raise UsageError(f"padding={options.padding!r} is unknown", "pass padding=True, 'longest' or 'max_length'")
    return options


def refuses_long_texts(options: CallOptions) -> bool:
    return options.truncation in (False, "do_not_truncate")


def pipeline_device(device) -> str | None:
    """transformers' device forms -> ours: -1 the CPU, N the Nth GPU, a torch.device, or 'cpu'/'cuda'/'cuda:N'."""
    if device is None:
        return None
    if isinstance(device, bool):
        raise UsageError(f"device={device!r} is not a device", "pass 'cpu', 'cuda', 'cuda:N', -1 or a GPU index")
    if isinstance(device, int):
        return "cpu" if device < 0 else f"cuda:{device}"
    if type(device).__name__ == "device" and hasattr(device, "type"):  # torch.device, without importing torch
        device = device.type if device.index is None else f"{device.type}:{device.index}"
    if not isinstance(device, str):
        raise UsageError(f"device={device!r} is not a device", "pass 'cpu', 'cuda', 'cuda:N', -1 or a GPU index")
    return canonical_device(device)


def input_kind(inputs) -> str:
    """Which of SINGLE_TEXT, SINGLE_PAIR, LIST, STREAM `inputs` is (the table above); InputDataError otherwise."""
    if isinstance(inputs, str):
        return SINGLE_TEXT
    if isinstance(inputs, (dict, tuple)):
        return SINGLE_PAIR
    if isinstance(inputs, list):
        return LIST
    if isinstance(inputs, (bytes, bytearray)):
        raise InputDataError("the input is bytes, not text", "decode it first, e.g. text.decode('utf-8')")
    if isinstance(inputs, (types.GeneratorType, types.AsyncGeneratorType)) or hasattr(inputs, "__next__") \
            or hasattr(inputs, "__getitem__") and hasattr(inputs, "__len__"):
        return STREAM  # a generator, an iterator, a datasets.Dataset or a torch Dataset such as KeyDataset
    raise InputDataError(f"the input is a {type(inputs).__name__}, not text",
                         "pass a string, a list of strings, a {'text', 'text_pair'} dict or a generator of those")


def as_engine_input(item, index: int):
    """One input as the engine takes it: a text, or a (text, text_pair) tuple."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return text_input_from_dict(item)
    if isinstance(item, (tuple, list)):
        if len(item) != 2 or not all(isinstance(part, str) for part in item):
            raise InputDataError(f"input {index} holds {len(item)} items; a pair is two texts (text, text_pair)",
                                 "pass texts in a list, and each pair as a (text, text_pair) tuple or a dict")
        return (item[0], item[1])
    if isinstance(item, (bytes, bytearray)):
        raise InputDataError(f"input {index} is bytes, not text", "decode it first, e.g. text.decode('utf-8')")
    article = "an" if type(item).__name__[:1].lower() in "aeiou" else "a"
    raise InputDataError(f"input {index} is {article} {type(item).__name__}, not a string",
                         "pass a string or a list of strings (pairs as {'text', 'text_pair'} dicts)")
