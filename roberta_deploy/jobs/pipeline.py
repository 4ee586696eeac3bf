"""`pipeline()`: transformers' text-classification conventions over a verified bundle.

A string gives one result, a list gives a list; results are `{"label", "score"}` with the manifest's
label names; `top_k` and `function_to_apply` behave as in `transformers.pipeline("text-classification")`.
Given a checkpoint or an export instead of a bundle, it builds one first (build code is imported only
then: a bundle alone never loads torch or transformers).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from ..backends import DEFAULT_BACKEND
from ..defaults import DEFAULT_MAX_SEQ_LENGTH
from ..errors import InputDataError, UsageError
from ..manifest import KIND_BUNDLE, KIND_EXPORT, MANIFEST_FILE
from ..runtime.batcher import Batcher
from ..runtime.engine import LATENCY, Engine
from ..runtime.tokenization import text_input_from_dict
from ..tasks import NONE, SIGMOID, SOFTMAX, apply_function

FUNCTIONS = (SOFTMAX, SIGMOID, NONE)
EXPORT_SUBDIR = "export"
BUNDLE_SUBDIR = "bundle"


class _Unset:
    """transformers tells `top_k` left out from `top_k=None` (all labels); so do we."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET = _Unset()
TopK = Union[int, None, _Unset]
Result = dict  # {"label": str, "score": float}


def pipeline(model: str | Path, *, backend: str = DEFAULT_BACKEND, precision: str = "fp32",
             device: str | None = None, top_k: TopK = UNSET, function_to_apply: str | None = None,
             hint: str = LATENCY, cpu_threads: int | None = None, batch_size: int | None = None,
             build_dir: str | Path | None = None, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH,
             calibration_data: str | Path | None = None,
             on_step: Callable[[str], None] | None = None) -> "TextClassificationPipeline":
    """A text classifier over `model`: a bundle folder, an export folder, or a checkpoint (folder or hub id).

    A bundle is loaded and verified as it is (`backend`, `precision` and `max_seq_length` are then
    read from its manifest). An export or a checkpoint is exported and built first, at `precision` for
    `backend`, into `build_dir` (kept; load `build_dir/bundle` next time) or into a temporary folder
    removed when the pipeline is closed; `calibration_data` (real texts, TSV/CSV/JSONL) then feeds the
    export's parity check and int8 calibration. `top_k` and `function_to_apply` are call defaults, as in
    transformers; `hint`, `cpu_threads` and `batch_size` size the engine (see `Engine.load`). `device`
    ("cpu", "cuda", "cuda:N"; cuda with backend="torch") is where a build is verified and the engine runs;
    by default a bundle's own device, and the CPU for a build.
    """
    source = Path(model)
    kind = _artifact_kind(source)
    owned_dir = None
    if kind == KIND_BUNDLE:
        bundle = source
    else:
        if build_dir is None:
            owned_dir = Path(tempfile.mkdtemp(prefix="roberta-deploy-pipeline-"))
        root = Path(build_dir) if build_dir is not None else owned_dir
        try:
            bundle = _build_bundle(str(model), kind, root, backend=backend, precision=precision,
                                   device=device or "cpu", max_seq_length=max_seq_length,
                                   calibration_data=calibration_data, on_step=on_step)
        except BaseException:
            if owned_dir is not None:
                shutil.rmtree(owned_dir, ignore_errors=True)
            raise
    try:
        engine = Engine.load(bundle, hint=hint, cpu_threads=cpu_threads, device=device)
    except BaseException:
        if owned_dir is not None:
            shutil.rmtree(owned_dir, ignore_errors=True)
        raise
    return TextClassificationPipeline(engine, top_k=top_k, function_to_apply=function_to_apply,
                                      batch_size=batch_size, owned_dir=owned_dir)


def _artifact_kind(source: Path) -> str | None:
    """'bundle' or 'export' for our folders (by their manifest), None for anything else (a checkpoint)."""
    manifest_path = source / MANIFEST_FILE
    if not manifest_path.is_file():
        return None
    try:
        kind = json.loads(manifest_path.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return KIND_BUNDLE  # Engine.load names what is wrong with it
    return kind if kind in (KIND_BUNDLE, KIND_EXPORT) else None


def _build_bundle(model: str, kind: str | None, root: Path, *, backend: str, precision: str, device: str,
                  max_seq_length: int, calibration_data, on_step) -> Path:
    from ..build.bundle import BuildOptions, build_engine  # build code only when something must be built
    from ..build.export import ExportOptions, export_model

    export_dir = Path(model)
    if kind != KIND_EXPORT:
        export_dir = root / EXPORT_SUBDIR
        export_model(ExportOptions(model=model, output=export_dir, max_seq_length=max_seq_length,
                                   check_data=Path(calibration_data) if calibration_data else None), on_step=on_step)
    bundle = root / BUNDLE_SUBDIR
    build_engine(BuildOptions(export_dir=export_dir, output=bundle, backend=backend, precision=precision,
                              device=device, calibration_data=Path(calibration_data) if calibration_data else None),
                 on_step=on_step)
    return bundle


class TextClassificationPipeline:
    """Callable like `transformers.TextClassificationPipeline`; every call runs on the pipeline's one
    long-lived Batcher (started here, every context warmed up), so calls from several threads share its
    batches. Close it (or use `with`) to stop the batcher and remove any temporary build folder.
    """

    def __init__(self, engine: Engine, *, top_k: TopK = UNSET, function_to_apply: str | None = None,
                 batch_size: int | None = None, owned_dir: Path | None = None):
        self.engine = engine
        self.batcher = Batcher(engine).start()
        self.label_names: tuple[str, ...] = engine.label_names
        self.batch_size = batch_size
        self._default_top_k = _check_top_k(top_k)
        self._default_function = _check_function(function_to_apply)
        self._owned_dir = owned_dir
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(owned_dir), True) if owned_dir else None

    @property
    def bundle_dir(self) -> Path:
        return self.engine.bundle_dir

    def __call__(self, inputs, *, top_k: TopK = UNSET, function_to_apply: str | None = None) -> list:
        """str -> [{"label", "score"}] (top_k unset), or the top_k results sorted by score;
        list[str] -> one such result per text, in input order. A text pair is a dict
        {"text", "text_pair"} (as transformers takes it) or a (text, text_pair) tuple: one pair gives one
        result ({"label", "score"}, unwrapped, as transformers does for a dict), a list of pairs one per pair.

        top_k: None for every label; unset gives the best label as one dict per text.
        function_to_apply: "softmax" (default for several labels), "sigmoid" (default for one label or
        multi-label models) or "none" (raw logits).
        """
        call_top_k = _check_top_k(top_k)
        top_k_value = call_top_k if call_top_k is not UNSET else self._default_top_k
        # transformers' quirk, kept for drop-in use: a single string comes back wrapped in a list
        # unless top_k was passed to this call.
        legacy = top_k_value is UNSET
        function = _check_function(function_to_apply) or self._default_function or self._function_for_model()
        single = isinstance(inputs, str)
        single_pair = _is_pair(inputs)
        texts = [inputs] if single else [_as_pair(inputs)] if single_pair else _as_texts(inputs)
        if not texts:
            return []
        scores = apply_function(self.batcher.run(texts, batch_size=self.batch_size).logits, function)
        results = [self._format(row, top_k_value, legacy) for row in scores]
        if single:
            return [results[0]] if call_top_k is UNSET else results[0]
        if single_pair:
            return results[0]
        return results

    def _format(self, scores: np.ndarray, top_k: TopK, legacy: bool):
        if legacy:
            best = int(scores.argmax())
            return {"label": self.label_names[best], "score": float(scores[best])}
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        return [{"label": self.label_names[index], "score": float(scores[index])} for index in order]

    def _function_for_model(self) -> str:
        return self.engine.task.score_function  # transformers' rule, from the task in the manifest

    def close(self) -> None:
        """Stop the batcher; remove the temporary build folder if this pipeline made one."""
        self.batcher.close(drain=True)
        self.engine.close()
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> "TextClassificationPipeline":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"TextClassificationPipeline({self.engine.bundle_dir}, {self.engine.backend} "
                f"{self.engine.precision}, labels={list(self.label_names)})")


def _check_top_k(top_k: TopK) -> TopK:
    if top_k is UNSET or top_k is None:
        return top_k
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UsageError(f"top_k={top_k!r} is not a positive integer", "pass top_k=1, 2, ... or top_k=None for every label")
    return top_k


def _check_function(function: str | None) -> str | None:
    if function is None:
        return None
    name = str(getattr(function, "value", function)).lower()  # also accepts transformers' ClassificationFunction
    if name not in FUNCTIONS:
        raise UsageError(f"function_to_apply={function!r} is unknown", f"use one of {', '.join(FUNCTIONS)}")
    return name


def _is_pair(value) -> bool:
    """One text pair: {"text", "text_pair"} or (text, text_pair)."""
    return isinstance(value, dict) or (isinstance(value, tuple) and len(value) == 2
                                       and all(isinstance(part, str) for part in value))


def _as_pair(value):
    """A dict or tuple input -> what the engine takes: a text, or a (text, text_pair) tuple."""
    return text_input_from_dict(value) if isinstance(value, dict) else value


def _as_texts(inputs) -> list:
    try:
        texts = list(inputs)
    except TypeError:
        raise InputDataError(f"inputs of type {type(inputs).__name__} are not text",
                             "pass a string, a list of strings, or text pairs as {'text', 'text_pair'} dicts") from None
    texts = [_as_pair(text) if _is_pair(text) else text for text in texts]
    for index, text in enumerate(texts):
        if not isinstance(text, (str, tuple)):
            raise InputDataError(f"input {index} is a {type(text).__name__}, not a string",
                                 "pass a string or a list of strings (pairs as {'text', 'text_pair'} dicts)")
    return texts
