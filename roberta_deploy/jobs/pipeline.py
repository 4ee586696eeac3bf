"""`pipeline()`: a drop-in for `transformers.pipeline("text-classification")` over a verified bundle.

It takes transformers' argument forms (task first or absent, `model=`, `tokenizer=`, `device` as a string, an
index or a `torch.device`, `batch_size`, `top_k`, `function_to_apply`, `truncation`/`max_length`/`padding` at
creation and per call), gives the same results in the same shapes, streams generators and datasets, and
exposes `.model.config`, `.tokenizer` and `.task`. What an input means is decided by its type, never its
length (jobs/pipeline_inputs.py has the rule beside transformers'). Given a checkpoint or an export instead
of a bundle, it builds one first, printing a progress line per step to stderr (build code is imported only
then: a bundle alone never loads torch or transformers).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import shutil
import sys
import tempfile
import time
import warnings
import weakref
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..backends import DEFAULT_BACKEND
from ..defaults import DEFAULT_MAX_SEQ_LENGTH
from ..errors import InputDataError, NotReadyError, UsageError
from ..manifest import KIND_BUNDLE, KIND_EXPORT, MANIFEST_FILE
from ..runtime.batcher import Batcher
from ..runtime.engine import LATENCY, Engine
from ..runtime.results import Predictions
from ..runtime.tokenization import TOKENIZER_DIR, TOKENIZER_FILE
from ..tasks import apply_function
from .pipeline_inputs import (SINGLE_PAIR, SINGLE_TEXT, STREAM, TASKS, UNSET, CallOptions, TopK,
                              as_engine_input, checked, input_kind, pipeline_device, refuses_long_texts)

EXPORT_SUBDIR = "export"
BUNDLE_SUBDIR = "bundle"
Result = dict  # {"label": str, "score": float}
# transformers.pipeline arguments that change nothing here, with the values that say so.
_NEUTRAL = {"use_fast": (True,), "dtype": ("auto", None), "device_map": (None,), "framework": ("pt", None),
            "trust_remote_code": (None, False), "model_kwargs": (None, {})}


def pipeline(task: str | None = None, model: str | Path | None = None, config=None, tokenizer=None, *,
             device=None, batch_size: int | None = None, top_k: TopK = UNSET, function_to_apply: str | None = None,
             truncation=None, max_length: int | None = None, padding=None,
             backend: str = DEFAULT_BACKEND, precision: str = "fp32", hint: str = LATENCY,
             cpu_threads: int | None = None, build_dir: str | Path | None = None,
             max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, calibration_data: str | Path | None = None,
             on_step: Callable[[str], None] | None = None, **transformers_only) -> "TextClassificationPipeline":
    """A text classifier over `model`: a bundle folder, an export folder, or a checkpoint (folder or hub id).

    As transformers: `pipeline("text-classification", model=B)`, `pipeline(model=B)`, `pipeline(task=...,
    model=B)`; `pipeline(B)` too. `tokenizer` (a path or a tokenizer) must encode as the bundle's own, which
    travels inside it; `config` is read from the bundle. `device`: "cpu", "cuda", "cuda:N", -1 (the CPU), a
    GPU index or a torch.device; cuda runs torch bundles (backend="torch"); default: the bundle's own device.
    `batch_size`, `top_k`, `function_to_apply`, `truncation`, `max_length`, `padding` are defaults every call
    may override (`CallOptions`).

    A bundle is loaded and verified as it is (`backend`, `precision` and `max_seq_length` are then read from
    its manifest). An export or a checkpoint is exported and built first, at `precision` for `backend`, into
    `build_dir` (kept; load `build_dir/bundle` next time) or a temporary folder removed by `close()`;
    `calibration_data` (real texts, TSV/CSV/JSONL) feeds the export's parity check and int8 calibration;
    each step is printed to stderr, or given to `on_step`. `hint` and `cpu_threads` size the engine
    (`Engine.load`).
    """
    if task is not None and model is None and task not in TASKS:
        task, model = None, task  # pipeline(BUNDLE): our older form, and transformers' pipeline(model=...)
    if task is not None and task not in TASKS:
        raise UsageError(f"task {task!r} is not a text-classification task", f"pass one of {', '.join(TASKS)} or none")
    if model is None:
        raise UsageError("no model given", "pass a bundle, export or checkpoint: pipeline('text-classification', "
                                           "model='path/to/bundle')")
    if not isinstance(model, (str, Path)):
        raise UsageError(f"model= is a {type(model).__name__}, not a folder or hub id",
                         "pass the path of a bundle, export or checkpoint (roberta-deploy loads the engine itself)")
    if config is not None:
        raise UsageError("config= is not taken: the bundle carries the model's config", "leave config= off")
    for name, value in transformers_only.items():
        if value not in _NEUTRAL.get(name, ()):
            raise UsageError(f"pipeline() does not take {name}={value!r}",
                             "leave it off: roberta-deploy runs the bundle's own engine, tokenizer and precision")
    options = checked(CallOptions(top_k=top_k, function_to_apply=function_to_apply, batch_size=batch_size,
                                  truncation=truncation, max_length=max_length, padding=padding))
    device = pipeline_device(device)
    source = Path(model)
    kind = _artifact_kind(source)
    owned_dir = None
    try:
        if kind == KIND_BUNDLE:
            bundle = source
        else:
            if build_dir is None:
                owned_dir = Path(tempfile.mkdtemp(prefix="roberta-deploy-pipeline-"))
            root = Path(build_dir) if build_dir is not None else owned_dir
            bundle = _build_bundle(str(model), kind, root, backend=backend, precision=precision,
                                   device=device or "cpu", max_seq_length=max_seq_length,
                                   calibration_data=calibration_data, on_step=on_step or stderr_steps())
        engine = Engine.load(bundle, hint=hint, cpu_threads=cpu_threads, device=device)
    except BaseException:
        if owned_dir is not None:
            shutil.rmtree(owned_dir, ignore_errors=True)
        raise
    classifier = TextClassificationPipeline(engine, task=task or TASKS[0], options=options, owned_dir=owned_dir)
    if tokenizer is not None:
        try:
            classifier.use_tokenizer(tokenizer)
        except BaseException:
            classifier.close()
            raise
    return classifier


def stderr_steps() -> Callable[[str], None]:
    """A build step as one line on stderr with the seconds since the build began (transformers shows its
    downloads the same way): the only output of the pipeline, and only while it builds."""
    started = time.perf_counter()

    def print_step(message: str) -> None:
        sys.stderr.write(f"roberta-deploy: {time.perf_counter() - started:5.1f}s {message}\n")
        sys.stderr.flush()

    return print_step


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
        on_step(f"exporting {model} to ONNX (a bundle is built once; pass build_dir= to keep it)")
        export_model(ExportOptions(model=model, output=export_dir, max_seq_length=max_seq_length,
                                   check_data=Path(calibration_data) if calibration_data else None), on_step=on_step)
    bundle = root / BUNDLE_SUBDIR
    on_step(f"building a {backend} {precision} bundle")
    build_engine(BuildOptions(export_dir=export_dir, output=bundle, backend=backend, precision=precision,
                              device=device, calibration_data=Path(calibration_data) if calibration_data else None),
                 on_step=on_step)
    on_step(f"built {bundle}")
    return bundle


class BundleConfig:
    """The bundle's config.json as attributes, as `transformers.PretrainedConfig` gives them (`id2label` with
    int keys, `label2id`, `num_labels`, `problem_type`), without loading transformers."""

    def __init__(self, values: dict, label_names: tuple[str, ...], problem_type: str):
        self._values = dict(values)
        self._values.update(id2label=dict(enumerate(label_names)),
                            label2id={name: index for index, name in enumerate(label_names)},
                            num_labels=len(label_names), problem_type=problem_type)

    def __getattr__(self, name: str):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict:
        return dict(self._values)


class BundleModel:
    """What callers of transformers' pipeline read from `.model`: its config, name and device."""

    def __init__(self, engine: Engine):
        config_path = engine.bundle_dir / "config.json"
        values = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        self.config = BundleConfig(values, engine.label_names, engine.task.kind)
        self.name_or_path = str(engine.bundle_dir)
        self.device = engine.device


class TextClassificationPipeline:
    """Callable like `transformers.TextClassificationPipeline`; calls run on the pipeline's own long-lived
    Batcher (started here, every context warmed up; `_predict` is the one place it is used), so calls from
    several threads share its batches.
    Close it (or use `with`) to stop the batcher and remove any temporary build folder; a call after that
    raises NotReadyError."""

    def __init__(self, engine: Engine, *, task: str = TASKS[0], options: CallOptions = CallOptions(),
                 owned_dir: Path | None = None):
        self.engine = engine
        self.batcher = Batcher(engine).start()
        self.task = task
        self.label_names: tuple[str, ...] = engine.label_names
        self.model = BundleModel(engine)
        self._options = checked(options)
        self._tokenizer = None
        self._short_tokenizers: dict[int, object] = {}
        self._warned_truncation = False
        self._closed = False
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(owned_dir), True) if owned_dir else None

    @property
    def bundle_dir(self) -> Path:
        return self.engine.bundle_dir

    @property
    def batch_size(self) -> int | None:
        return self._options.batch_size

    @property
    def tokenizer(self):
        """transformers' fast tokenizer of the bundle (loaded on first use: this imports transformers)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.bundle_dir))
        return self._tokenizer

    def use_tokenizer(self, tokenizer) -> None:
        """Accept `tokenizer` (a path or a transformers tokenizer) if it encodes as the bundle's own does."""
        if isinstance(tokenizer, (str, Path)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        probes = ["房间干净整洁，服务热情。", "The quick brown fox, 123!", " ".join(self.label_names)]
        ours = self.engine.encoder.encode(probes)
        try:
            theirs = [list(tokenizer(text)["input_ids"]) for text in probes]
        except Exception as error:
            raise UsageError(f"tokenizer= cannot encode text: {error}".splitlines()[0],
                             "pass the checkpoint's tokenizer, or leave tokenizer= off") from None
        if theirs != [ids.tolist() for ids in ours.token_ids]:
            raise UsageError("tokenizer= encodes text differently from the bundle's tokenizer",
                             "leave tokenizer= off: the bundle carries the tokenizer it was built with")
        self._tokenizer = tokenizer

    def __call__(self, inputs, **call_options):
        """str -> [{"label", "score"}] (top_k not passed to this call), or the top_k results sorted by score;
        a list -> one such result per item, in order; a {"text", "text_pair"} dict or a (text, text_pair) tuple
        -> one result for that pair; a generator, iterator or dataset -> an iterator of results, yielded as
        each batch is done. Keywords: as CallOptions (top_k=None: every label; function_to_apply: "softmax",
        "sigmoid" or "none"; truncation, max_length, padding, batch_size)."""
        self._check_open()
        options = self._options.merged(**call_options) if call_options else self._options
        kind = input_kind(inputs)
        if kind == STREAM:
            return self._stream(inputs, options)
        items = [inputs] if kind in (SINGLE_TEXT, SINGLE_PAIR) else inputs
        engine_inputs = [as_engine_input(item, index) for index, item in enumerate(items)]
        if not engine_inputs:
            return []
        with self._predictions([engine_inputs], options) as results:
            results = self._format(next(results), options)
        if kind == SINGLE_TEXT:
            # transformers' quirk, kept for drop-in use: a single string comes back wrapped in a list unless
            # top_k was passed to this call.
            return [results[0]] if "top_k" not in call_options else results[0]
        return results[0] if kind == SINGLE_PAIR else results

    def _stream(self, inputs: Iterable, options: CallOptions) -> Iterator:
        chunk_size = options.batch_size or self.engine.default_batch_size()
        counter = itertools.count()

        def chunks() -> Iterator[list]:
            iterator = iter(inputs)
            while True:
                chunk = [as_engine_input(item, next(counter)) for item in itertools.islice(iterator, chunk_size)]
                if not chunk:
                    return
                yield chunk

        def results() -> Iterator:
            with self._predictions(chunks(), options) as predictions:
                for chunk in predictions:
                    self._check_open()
                    yield from self._format(chunk, options)

        return results()

    def _predictions(self, chunks: Iterable[list], options: CallOptions):
        """Predictions of each chunk (a context manager over an iterator), cut at max_length and checked
        against the truncation option."""
        limit = self.engine.max_seq_length
        short = options.max_length is not None and options.max_length < limit
        if short:
            chunks = (self._cut_to(chunk, options.max_length) for chunk in chunks)

        @contextlib.contextmanager
        def managed():
            cut_flags: list[np.ndarray] = []

            def with_flags():
                for chunk in chunks:
                    if short:
                        chunk, flags = chunk
                        cut_flags.append(flags)
                    yield chunk

            with contextlib.closing(self._predict(with_flags(), options.batch_size)) as predictions:
                def checked_predictions():
                    for index, chunk in enumerate(predictions):
                        truncated = chunk.truncated | cut_flags[index] if short else chunk.truncated
                        self._check_truncation(truncated, options, options.max_length if short else limit)
                        yield chunk

                yield checked_predictions()

        return managed()

    def _predict(self, chunks: Iterable[list], batch_size: int | None) -> Iterator[Predictions]:
        """The one place the pipeline runs the engine: each chunk's Predictions, in order, the next chunk
        queued while the caller takes the last one's."""
        return self.batcher.run_chunks(chunks, batch_size=batch_size)

    def _check_truncation(self, truncated: np.ndarray, options: CallOptions, limit: int) -> None:
        count = int(truncated.sum())
        if not count:
            return
        if refuses_long_texts(options):
            first = int(np.flatnonzero(truncated)[0])
            raise InputDataError(f"input {first} is longer than {limit} tokens and truncation=False",
                                 "pass truncation=True to cut long texts, or build the bundle with a larger "
                                 "--max-seq-length")
        if options.truncation is None and options.max_length is None and not self._warned_truncation:
            self._warned_truncation = True
            warnings.warn(f"{count} text(s) were longer than {limit} tokens, the bundle's max_seq_length, and were "
                          "cut (further cuts are not reported); pass truncation=True to cut without this warning, "
                          "or build with a larger --max-seq-length", UserWarning, stacklevel=4)

    def _cut_to(self, chunk: list, max_length: int) -> tuple[list, np.ndarray]:
        """Texts and pairs cut where the bundle's tokenizer, truncating at `max_length` tokens (longest first,
        as transformers), stops: the engine then encodes them to those same tokens."""
        tokenizer = self._short_tokenizers.get(max_length)
        if tokenizer is None:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self.bundle_dir / TOKENIZER_DIR / TOKENIZER_FILE))
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=max_length)
            self._short_tokenizers[max_length] = tokenizer
        cut, flags = [], np.zeros(len(chunk), dtype=bool)
        for index, item in enumerate(chunk):
            sides = (item,) if isinstance(item, str) else item
            encoding = tokenizer.encode(*sides)
            if not encoding.overflowing:
                cut.append(item)
                continue
            flags[index] = True
            ends = [0] * len(sides)
            for sequence, (_, end) in zip(encoding.sequence_ids, encoding.offsets):
                if sequence is not None:
                    ends[sequence] = max(ends[sequence], end)
            kept = tuple(side[:end] for side, end in zip(sides, ends))
            cut.append(kept[0] if isinstance(item, str) else kept)
        return cut, flags

    def _format(self, predictions: Predictions, options: CallOptions) -> list:
        function = options.function_to_apply or self.engine.task.score_function  # transformers' rule
        scores = apply_function(predictions.logits, function)
        if options.top_k is UNSET:
            best = scores.argmax(axis=1)
            return [{"label": self.label_names[index], "score": float(row[index])} for row, index in zip(scores, best)]
        results = []
        for row in scores:
            order = np.argsort(-row, kind="stable")[:options.top_k]
            results.append([{"label": self.label_names[index], "score": float(row[index])} for index in order])
        return results

    def _check_open(self) -> None:
        if self._closed:
            raise NotReadyError("this pipeline was closed", "create a new one with roberta_deploy.pipeline(...)")

    def close(self) -> None:
        """Stop the batcher (after what it accepted) and the engine; remove the temporary build folder if this
        pipeline made one."""
        self._closed = True
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

