"""The Open Inference Protocol (KServe v2, as Triton and OpenVINO Model Server speak it), JSON and binary tensors.

A model takes one BYTES input `text` of shape [n] (or [n, 1]), and for sentence pairs a second one,
`text_pair`, of the same shape; it answers three outputs: `logits` and `probabilities` (FP32, [n, labels]:
the task's scores, softmax, sigmoid per label or the regression value) and `label` (BYTES, [n]). With the binary tensor extension
(`Inference-Header-Content-Length`), tensors travel as raw bytes after the JSON header; BYTES elements
are each a 4-byte little-endian length and the UTF-8 bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputDataError
from ..tasks import SOFTMAX, Task, apply_function
from .options import Limits
from .payload import check_texts, dump_json, parse_json

INPUT_NAME = "text"
PAIR_INPUT_NAME = "text_pair"  # the second text of each pair: a second BYTES tensor of the same shape
OUTPUTS = ("logits", "probabilities", "label")
HEADER_LENGTH = "inference-header-content-length"
MAX_RANK = 2  # [n] or [n, 1]
MODEL_VERSION = "1"  # every served model has this one version
EXAMPLE = '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["酒店很干净"]}]}'


@dataclass(frozen=True)
class InferRequest:
    texts: list  # a text, or a (text, text_pair) tuple, per row
    request_id: str | None
    outputs: tuple[tuple[str, bool], ...]  # (name, binary) per output to send, in order


def model_metadata(name: str, label_names: tuple[str, ...], platform: str, text_pairs: bool = False) -> dict:
    """text_pairs: the model was fine-tuned on pairs, so `text_pair` is listed (it is accepted either way)."""
    labels = len(label_names)
    inputs = [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]
    if text_pairs:
        inputs.append({"name": PAIR_INPUT_NAME, "datatype": "BYTES", "shape": [-1]})
    return {"name": name, "versions": [MODEL_VERSION], "platform": platform, "inputs": inputs,
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, labels]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, labels]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]}]}


def parse_infer(body: bytes, header_length: str | None, limits: Limits) -> InferRequest:
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            json_size = -1
        if not 0 < json_size <= len(body):
            raise InputDataError(f"Inference-Header-Content-Length {header_length!r} does not fit a body of "
                                 f"{len(body)} bytes", "send the length of the JSON header in bytes")
        header, binary = parse_json(body[:json_size], EXAMPLE), body[json_size:]
    else:
        header, binary = parse_json(body, EXAMPLE), b""
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InputDataError("the request has no `inputs` list", f"send a JSON object such as {EXAMPLE}")
    inputs = header["inputs"]
    names = [str(item.get("name")) if isinstance(item, dict) else repr(item) for item in inputs]
    if INPUT_NAME not in names or len(set(names)) != len(names) or not set(names) <= {INPUT_NAME, PAIR_INPUT_NAME} \
            or not all(isinstance(item, dict) and isinstance(item.get("name"), str) for item in inputs):
        raise InputDataError(f"inputs {names} do not match the model's inputs {INPUT_NAME!r} and, for text pairs, "
                             f"{PAIR_INPUT_NAME!r}", f"send a BYTES tensor named {INPUT_NAME!r} (and {PAIR_INPUT_NAME!r})")
    columns, offset = {}, 0
    for tensor in inputs:  # binary tensors follow the JSON header in the order of `inputs`
        columns[tensor["name"]], offset = _read_tensor(tensor, binary, offset)
    if offset != len(binary):
        raise InputDataError(f"{len(binary) - offset} bytes after the header belong to no input",
                             "send the tensors' byte counts in binary_data_size")
    if PAIR_INPUT_NAME in columns and len(columns[PAIR_INPUT_NAME]) != len(columns[INPUT_NAME]):
        raise InputDataError(f"{PAIR_INPUT_NAME!r} has {len(columns[PAIR_INPUT_NAME])} elements but {INPUT_NAME!r} "
                             f"{len(columns[INPUT_NAME])}", "send one text_pair per text")
    texts = check_texts(columns[INPUT_NAME], limits, INPUT_NAME)
    if PAIR_INPUT_NAME in columns:  # each column's elements checked under its own name, then pairs' lengths
        check_texts(columns[PAIR_INPUT_NAME], limits, PAIR_INPUT_NAME)
        texts = check_texts(list(zip(texts, columns[PAIR_INPUT_NAME])), limits, f"{INPUT_NAME} + {PAIR_INPUT_NAME}")
    all_binary = _flag(_parameters(header, "the request"), "binary_data_output", False, "the request")
    request_id = header.get("id")
    return InferRequest(texts=texts, request_id=str(request_id) if request_id is not None else None,
                        outputs=_requested_outputs(header.get("outputs"), all_binary))


def _requested_outputs(requested: Any, all_binary: bool) -> tuple[tuple[str, bool], ...]:
    """(name, binary) per output asked for; each output at most once, so the answer's size is bounded by the
    texts the request may hold (a name listed 60,000 times would multiply it)."""
    if requested is None:
        return tuple((name, all_binary) for name in OUTPUTS)
    if not isinstance(requested, list):
        raise InputDataError("`outputs` must be a list", f"ask for any of {', '.join(OUTPUTS)}")
    outputs = []
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUTS:
            raise InputDataError(f"unknown output {json.dumps(name, ensure_ascii=False)}",
                                 f"ask for any of {', '.join(OUTPUTS)}")
        if any(name == seen for seen, _ in outputs):
            raise InputDataError(f"output {name!r} is asked for twice", "list each output at most once")
        where = f"output {name!r}"
        outputs.append((name, _flag(_parameters(item, where), "binary_data", all_binary, where)))
    return tuple(outputs)


def _parameters(container: dict, where: str) -> dict:
    """The `parameters` object of a request, input or output ({} when absent or null)."""
    parameters = container.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InputDataError(f"`parameters` of {where} is {type(parameters).__name__}, not an object",
                             'send "parameters": {"binary_data": true} or leave it out')
    return parameters


def _flag(parameters: dict, key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise InputDataError(f"`{key}` of {where} is {json.dumps(value, ensure_ascii=False)}, not true or false",
                             f'send "{key}": true or false')
    return value


def _read_tensor(tensor: dict, binary: bytes, offset: int) -> tuple[list, int]:
    """One BYTES input's elements (JSON `data`, or its binary_data_size bytes from `offset`) and the
    offset past them."""
    name = tensor.get("name")
    if tensor.get("datatype") != "BYTES":
        raise InputDataError(f"input {name!r} has datatype {tensor.get('datatype')!r}, not BYTES",
                             "send texts as a BYTES tensor")
    count = _element_count(tensor.get("shape"), name)
    parameters = _parameters(tensor, f"input {name!r}")
    if "binary_data_size" in parameters:
        size = parameters["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise InputDataError(f"binary_data_size {size!r} of input {name!r} does not fit the "
                                 f"{len(binary) - offset} bytes left after the header",
                                 "send the tensor's byte count in binary_data_size")
        elements = _decode_bytes_tensor(binary[offset:offset + size], name)
        offset += size
    elif "data" in tensor:
        elements = _flatten(tensor["data"], name, MAX_RANK)
    else:
        raise InputDataError(f"input {name!r} has neither `data` nor binary data", f"send {EXAMPLE}")
    if len(elements) != count:
        raise InputDataError(f"input {name!r} has shape {tensor.get('shape')} but {len(elements)} elements",
                             "send a shape that matches the number of texts")
    return elements, offset


def _element_count(shape: Any, name: str = INPUT_NAME) -> int:
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                           for d in shape):
        raise InputDataError(f"input {name!r} has shape {shape!r}", "send shape [n] or [n, 1] for n texts")
    if len(shape) > MAX_RANK or (len(shape) == 2 and shape[1] != 1):
        raise InputDataError(f"input {name!r} has shape {shape}, one text per row is expected",
                             "send shape [n] or [n, 1] for n texts")
    return shape[0]


def _flatten(data: Any, name: str, depth: int) -> list:
    """The elements of `data`, a list nested at most `depth` deep (the shape's rank): a row-major [n, 1] tensor may
    come as [[a], [b]], as Triton's clients send it."""
    if not isinstance(data, list):
        raise InputDataError(f"input {name!r} data must be a list of strings", f"send {EXAMPLE}")
    flat = []
    for item in data:
        if isinstance(item, list):
            if depth <= 1:
                raise InputDataError(f"input {name!r} data is nested deeper than its shape",
                                     "send a flat list of strings, or one list per row for shape [n, 1]")
            flat.extend(_flatten(item, name, depth - 1))
        else:
            flat.append(item)
    return flat


def _decode_bytes_tensor(binary: bytes, name: str = INPUT_NAME) -> list[str]:
    texts, offset = [], 0
    while offset < len(binary):
        if offset + 4 > len(binary):
            raise InputDataError("the binary BYTES tensor ends inside an element's length",
                                 "prefix each element with its 4-byte little-endian length")
        (length,) = struct.unpack_from("<I", binary, offset)
        offset += 4
        if offset + length > len(binary):
            raise InputDataError("the binary BYTES tensor ends inside an element",
                                 "prefix each element with its 4-byte little-endian length")
        try:
            texts.append(binary[offset:offset + length].decode("utf-8"))
        except UnicodeDecodeError:
            raise InputDataError(f"element {len(texts)} of input {name!r} is not UTF-8",
                                 "send texts encoded as UTF-8") from None
        offset += length
    return texts


def format_infer(request: InferRequest, model_name: str, logits: np.ndarray,
                 label_names: tuple[str, ...], task: Task | None = None) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (Inference-Header-Content-Length when any output is binary).
    `probabilities` are the task's scores (softmax for single-label models and when no task is given)."""
    scores = task.scores(logits) if task is not None else apply_function(logits, SOFTMAX)
    arrays = {"logits": logits.astype(np.float32), "probabilities": scores.astype(np.float32),
              "label": [label_names[index] for index in logits.argmax(axis=1)]}
    outputs, binary_parts = [], []
    for name, binary in request.outputs:
        value = arrays[name]
        if name == "label":
            tensor = {"name": name, "datatype": "BYTES", "shape": [len(value)]}
            raw = b"".join(struct.pack("<I", len(encoded)) + encoded for encoded in (v.encode() for v in value)) \
                if binary else None
        else:
            tensor = {"name": name, "datatype": "FP32", "shape": list(value.shape)}
            raw = value.astype("<f4").tobytes() if binary else None
        if raw is None:
            tensor["data"] = value if name == "label" else value.ravel().tolist()
        else:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        outputs.append(tensor)
    response = {"model_name": model_name, "model_version": MODEL_VERSION, "outputs": outputs}
    if request.request_id is not None:
        response["id"] = request.request_id
    header = dump_json(response)
    if not binary_parts:
        return header, {"content-type": "application/json"}
    return header + b"".join(binary_parts), {"content-type": "application/octet-stream",
                                             HEADER_LENGTH: str(len(header))}


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, ensure_ascii=False).encode("utf-8")
