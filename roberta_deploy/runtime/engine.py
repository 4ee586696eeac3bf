"""Runtime API: an Engine is a loaded bundle on a device; a Context is one execution state on it.

Many contexts of one engine may run concurrently, each from its own thread (TensorRT's
IExecutionContext, OpenVINO's InferRequest). Numpy arrays cross this boundary.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..backends import get_backend
from ..backends.base import CPU, LATENCY, PERFORMANCE_HINTS, THROUGHPUT, RuntimeSettings, canonical_device
from ..defaults import DEFAULT_BACKEND
from ..flags import COUNT
from ..errors import BundleError, InputDataError, NumericalCheckError, ShapeError, UsageError
from ..machine import available_cores
from ..machine import cpu_mismatch_warning
from ..manifest import KIND_BUNDLE, read_manifest
from ..shapes import ShapeProfile
from ..tasks import Task
from .batching import offline_batch_settings, plan_batches
from .results import Prediction, Predictions
from .tokenization import TOKENIZER_DIR, TextEncoder, TextInput, pad_to_shape

__all__ = ["LATENCY", "PERFORMANCE_HINTS", "THROUGHPUT", "Context", "Engine", "default_contexts"]


def default_contexts(cores: int, hint: str = LATENCY, backend: str = DEFAULT_BACKEND) -> int:
    """How many contexts a `hint` needs on `cores` cores: the backend's own policy (Backend.contexts_for)."""
    return get_backend(backend).contexts_for(cores, hint)


class Engine:
    """A bundle loaded for inference: its manifest, encoder and contexts. Create one per device; share it
    between threads. To classify many texts on every context at once, or requests as they arrive, give it to
    a runtime.batcher.Batcher, which whoever runs the work creates, starts and closes."""

    def __init__(self, bundle_dir: Path, manifest: dict, contexts: int, cpu_threads: int, device: str = CPU,
                 pin_threads: bool = True):
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.profile = ShapeProfile.from_dict(manifest["shape_profile"])
        self.input_names: tuple[str, ...] = tuple(manifest["inputs"])
        self.label_names: tuple[str, ...] = tuple(manifest["labels"])
        self.task = Task.from_manifest(manifest)  # what the outputs mean; single-label for older bundles
        self.max_seq_length: int = self.profile.max_seq
        self.encoder = TextEncoder.from_folder(bundle_dir / TOKENIZER_DIR, self.max_seq_length)
        model = manifest["export_manifest"]
        # Ids past these index past the embedding tables: OpenVINO reads whatever memory lies there.
        self.vocab_size: int = model["vocab_size"]
        self.type_vocab_size: int = model.get("type_vocab_size") or 2  # bundles before it was recorded: BERT's 2
        if self.encoder.vocab_size > self.vocab_size:
            raise BundleError(f"the tokenizer in {bundle_dir} has {self.encoder.vocab_size} tokens but the model's "
                              f"embedding table only {self.vocab_size}: its ids would run past the table",
                              "export again with the checkpoint's own tokenizer")
        self.settings = RuntimeSettings(contexts=contexts, cpu_threads=cpu_threads, device=device,
                                        pin_threads=pin_threads)
        backend = get_backend(manifest["backend"])
        backend.check_device(device)
        self._backend_engine = backend.load(bundle_dir, manifest, self.settings)
        self._idle_contexts: list[Context] = []  # predict()'s, reused between calls
        self._contexts_lock = threading.Lock()
        # Not errors: things the caller should hear about once (the CLI prints them; the library never does).
        self.warnings: tuple[str, ...] = tuple(warning for warning in (cpu_mismatch_warning(manifest),) if warning)

    @classmethod
    def load(cls, bundle: str | Path, *, contexts: int | None = None, cpu_threads: int | None = None,
             hint: str = LATENCY, device: str | None = None, pin_threads: bool = True) -> "Engine":
        """Load and verify a bundle (every file against its manifest hash).

        hint: "latency" (default; one request at a time gets every core) or "throughput" (many
        texts through a Batcher; what infer, eval and run use). contexts: how many contexts run at
        once (sizes the backend's streams); default from `default_contexts` for the hint and this
        machine. cpu_threads: total compute threads, default every core this process may use; split
        between contexts, never oversubscribed (a torch engine on the CPU computes on PyTorch's own
        process-wide pool, torch.get_num_threads(), which the library leaves as the process set it).
        device: cpu, cuda or cuda:N; default the device the bundle was built and verified on.
        pin_threads: pin compute threads to cores (OpenVINO); pass False when other processes compute on
        the same cores, such as several Ray replicas on one node.
        """
        bundle_dir = Path(bundle)
        manifest = read_manifest(bundle_dir, KIND_BUNDLE)
        cores = available_cores()
        COUNT.require(contexts, "--threads")
        COUNT.require(cpu_threads, "--cpu-threads")
        if cpu_threads is not None and cpu_threads > cores:
            raise UsageError(f"{cpu_threads} CPU threads is more than the {cores} cores this process may use",
                             f"pass --cpu-threads {cores} or less")
        cpu_threads = cpu_threads if cpu_threads is not None else cores
        contexts = contexts if contexts is not None else default_contexts(cpu_threads, hint, manifest["backend"])
        if contexts > cpu_threads:
            raise UsageError(f"{contexts} contexts on {cpu_threads} CPU threads would oversubscribe the CPU",
                             f"use at most {cpu_threads} contexts, or raise --cpu-threads")
        return cls(bundle_dir, manifest, contexts, cpu_threads,
                   canonical_device(device or manifest.get("device", CPU)), pin_threads=pin_threads)

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def device(self) -> str:
        return self.settings.device

    def device_info(self) -> dict:
        """What this engine computes on: {"device": ...} plus, for a GPU, its name and memory."""
        return self._backend_engine.device_info()

    def create_context(self) -> "Context":
        return Context(self)

    def predict(self, texts: Sequence[TextInput] | str, *, batch_size: int | None = None,
                max_batch_tokens: int | None = None, bucketing: bool = True) -> Predictions | Prediction:
        """Tokenize, batch (length-bucketed by default) and classify `texts` on the calling thread; results
        in input order. The convenience path: one context, no worker threads. A Batcher's run() computes on
        every context at once.

        A single string is one text and gets one Prediction back; a list gets Predictions. Items of
        the list may be (text, text_pair) tuples, for models fine-tuned on sentence pairs.
        """
        if isinstance(texts, str):
            return self.predict([texts])[0]
        texts = list(texts)
        batch_size, max_batch_tokens = offline_batch_settings(
            self.profile, self.max_seq_length, batch_size or self.default_batch_size(), max_batch_tokens,
            bucketing, contexts=1, run_token_limit=self.run_token_limit)
        encoded = self.encoder.encode(texts)
        plans = plan_batches(encoded.lengths, max_batch_size=batch_size, max_seq_length=self.max_seq_length,
                             max_batch_tokens=max_batch_tokens if self.profile.dynamic else None,
                             bucket_lengths=self.profile.bucket_lengths(), sort_by_length=bucketing)
        logits = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        with self._borrowed_context() as context:
            for plan in plans:
                inputs = self.encoder.pad(encoded, plan.indices, plan.padded_length)
                logits[plan.indices] = context.run(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)
        return Predictions(logits=logits, truncated=encoded.truncated, token_lengths=encoded.lengths,
                           label_names=self.label_names, task=self.task)

    @contextlib.contextmanager
    def _borrowed_context(self) -> Iterator["Context"]:
        """An idle context for this thread (created on first need), returned for the next predict()."""
        with self._contexts_lock:
            context = self._idle_contexts.pop() if self._idle_contexts else None
        context = context or self.create_context()
        try:
            yield context
        finally:
            with self._contexts_lock:
                self._idle_contexts.append(context)

    def close(self) -> None:
        """Drop predict()'s idle contexts (a later predict() makes a new one). Batchers are closed by their owners."""
        with self._contexts_lock:
            self._idle_contexts.clear()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def default_batch_size(self) -> int:
        return self.profile.max_batch if not self.profile.dynamic else min(self.profile.max_batch, 32)

    @property
    def run_token_limit(self) -> int | None:
        """The backend's preferred most padded tokens per run (LoadedEngine.run_token_limit)."""
        return self._backend_engine.run_token_limit


class Context:
    """One execution state. Use each context from one thread at a time; make one per thread."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._runner = engine._backend_engine.create_runner()
        self._lock = threading.Lock()  # guards misuse from several threads; uncontended in normal use

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray,
            token_type_ids: np.ndarray | None = None) -> np.ndarray:
        """input_ids, attention_mask, token_type_ids: int64 (batch, seq) -> float32 logits (batch, labels).

        Inputs smaller than the engine accepts (static shapes, or a dynamic minimum) are padded up and
        the filler rows dropped from the result.
        """
        batch, feeds = self._feeds(input_ids, attention_mask, token_type_ids)
        with self._lock:
            logits = self._runner.infer(feeds)[:batch]
        if logits.ndim != 2 or logits.shape[1] != len(self.engine.label_names):
            raise BundleError(f"the model gives {logits.shape[-1]} outputs per text but the manifest names "
                              f"{len(self.engine.label_names)} labels", "rebuild the bundle from its export")
        if not np.isfinite(logits).all():
            raise NumericalCheckError("the engine produced NaN or infinite logits",
                                      "rebuild at a higher precision (fp32) and report the model")
        return logits

    def warm_up(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                token_type_ids: np.ndarray | None = None) -> None:
        """Run these inputs as `run` would, on whatever the backend may choose between per run (ONNX Runtime:
        its every-thread and shared sessions), so memory is taken before serving instead of during it."""
        _, feeds = self._feeds(input_ids, attention_mask, token_type_ids)
        with self._lock:
            self._runner.warm_up(feeds)

    def _feeds(self, input_ids, attention_mask, token_type_ids) -> tuple[int, dict[str, np.ndarray]]:
        """(rows asked for, the checked and padded feeds the runner takes)."""
        input_ids = _as_int64_matrix("input_ids", input_ids)
        attention_mask = _as_int64_matrix("attention_mask", attention_mask)
        if attention_mask.shape != input_ids.shape:
            raise ShapeError(f"attention_mask shape {attention_mask.shape} differs from input_ids {input_ids.shape}",
                             "pass arrays of one shape")
        if token_type_ids is None:
            token_type_ids = np.zeros_like(input_ids)
        token_type_ids = _as_int64_matrix("token_type_ids", token_type_ids)
        if token_type_ids.shape != input_ids.shape:
            raise ShapeError(f"token_type_ids shape {token_type_ids.shape} differs from input_ids {input_ids.shape}",
                             "pass arrays of one shape")
        _check_ids_below("input_ids", input_ids, self.engine.vocab_size, "the model's vocabulary")
        if "token_type_ids" in self.engine.input_names:
            _check_ids_below("token_type_ids", token_type_ids, self.engine.type_vocab_size, "the model's token types")
        batch, seq = input_ids.shape
        run_batch, run_seq = self.engine.profile.fit(batch, seq)
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if (run_batch, run_seq) != (batch, seq):
            arrays = pad_to_shape(arrays, run_batch, run_seq, self.engine.encoder.pad_token_id)
        return batch, {name: arrays[name] for name in self.engine.input_names}


def _as_int64_matrix(name: str, array) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ShapeError(f"{name} must be 2-D (batch, seq), got shape {array.shape}", "pass a (batch, seq) array")
    if not np.issubdtype(array.dtype, np.integer):
        raise ShapeError(f"{name} must hold integers, got {array.dtype}", "pass int64 token ids")
    return np.ascontiguousarray(array, dtype=np.int64)


def _check_ids_below(name: str, ids: np.ndarray, size: int, what: str) -> None:
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= size):
        bad = np.argwhere((ids < 0) | (ids >= size))[0]
        raise InputDataError(f"{name}[{bad[0]}, {bad[1]}] is {int(ids[bad[0], bad[1]])}, outside {what} "
                             f"(0 to {size - 1})", "encode texts with the bundle's own tokenizer (engine.encoder)")

