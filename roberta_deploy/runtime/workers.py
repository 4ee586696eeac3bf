"""The worker core a Batcher's online and offline halves share: contexts, one worker thread each, one queue.

Only the workers touch contexts, and every context ran once on the starting thread before any worker
exists (`start()`): engines' first-use initialization never races, and no later measurement pays for it.
One condition guards both queues (`_planned`: offline batches; `_pending`: online rows); a worker takes the
older of the two, so neither path starves the other.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Self

import numpy as np

from ..errors import BackendError, NotReadyError, RobertaDeployError
from .results import BatcherStats, BatchStats

POLL_S = 0.25  # waits wake this often, so Ctrl-C reaches the caller and a lost wake-up costs little


class EngineSurface(Protocol):
    """What a Batcher needs from an engine (runtime.engine.Engine; tests pass a fake without weights)."""

    label_names: tuple[str, ...]
    max_seq_length: int
    task: object  # tasks.Task (None: single-label), handed on to the results
    run_token_limit: int | None  # the engine's preferred most padded tokens per run (None: no preference)

    @property
    def encoder(self): ...  # encode(texts) -> EncodedTexts; pad(encoded, indices, length) -> ModelInputs

    @property
    def profile(self): ...  # ShapeProfile

    @property
    def settings(self): ...  # RuntimeSettings: .contexts

    def create_context(self): ...  # .run(input_ids, attention_mask, token_type_ids) -> float32 (batch, labels)

    def default_batch_size(self) -> int: ...


class Sink:
    """Where a batch's rows go: an online request or an offline run. Methods are called by workers."""

    def claim(self) -> bool:
        """True while the rows are still wanted (checked before compute)."""
        raise NotImplementedError

    def deliver(self, positions: np.ndarray, logits: np.ndarray, padded_length: int, started: float,
                inference_s: float) -> None:
        raise NotImplementedError

    def fail(self, error: BaseException) -> None:
        raise NotImplementedError


@dataclass
class Batch:
    inputs: object  # ModelInputs: int64 (rows, padded_length) arrays
    parts: list[tuple[Sink, np.ndarray, slice]]  # (sink, positions in the sink, rows of the batch)
    padded_length: int
    enqueued: float = field(default_factory=time.perf_counter)
    claimed: bool = False  # True: its sinks were claimed when it was cut (online); else one claim before compute


class WorkerCore:
    """The lifecycle and the workers of a Batcher (batcher.py puts the halves together)."""

    def __init__(self, engine: EngineSurface, context_count: int):
        self.engine = engine
        self.context_count = context_count
        self._condition = threading.Condition()
        self._planned: collections.deque[Batch] = collections.deque()  # offline batches, in queueing order
        self._pending: list = []  # online rows (online.PendingRow), in arrival order
        self._arrivals = 0
        self._queued_texts = 0
        self._threads: list[threading.Thread] = []
        self._state = "new"  # new -> starting -> running -> closing -> closed
        self._draining = True  # closing finishes accepted work (False: fails it)
        self._active_runs = 0  # run() calls still queueing batches: workers stay for them while draining
        self._listeners: list[Callable[[BatchStats], None]] = []
        self._counters = collections.Counter()

    def start(self, *, reserve_largest_batch: bool = False) -> Self:
        """Create the contexts, run each once on this thread, then start one worker per context.

        reserve_largest_batch: also run the largest batch an online batch can be (max length, as many rows as
        the token budget takes) on every context, so each holds the buffers its largest batch needs before the
        first request rather than growing them when such a batch first arrives, minutes into serving (at max
        length 512 one such batch added 260 MB to a running server: docs/serving.md, "Memory at max length
        512"). Servers pass True; offline runs meet their longest batch first anyway.
        """
        with self._condition:
            if self._state != "new":
                raise NotReadyError(f"this batcher was already started ({self._state})",
                                    "create a new Batcher for the engine")
            self._state = "starting"
        try:
            contexts = [self.engine.create_context() for _ in range(self.context_count)]
            short = self._warm_up_inputs()
            for context in contexts:  # checked runs: a bundle that computes nonsense fails here
                context.run(short.input_ids, short.attention_mask, short.token_type_ids)
            if reserve_largest_batch and self._bucket_lengths is None:
                largest = self._largest_batch_inputs()
                for context in contexts:
                    context.warm_up(largest.input_ids, largest.attention_mask, largest.token_type_ids)
        except BaseException:
            with self._condition:
                self._state = "new"
            raise
        self._threads = [threading.Thread(target=self._work, args=(context, number), daemon=True,
                                          name=f"batcher-context-{number}")
                         for number, context in enumerate(contexts)]
        with self._condition:
            if self._state != "starting":  # closed while warming up
                return self
            self._state = "running"
        try:
            for thread in self._threads:
                thread.start()
        except BaseException:  # Ctrl-C between two starts: no worker may outlive a start() that raised
            self.close(drain=False)
            raise
        return self

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting work; drain=True finishes every accepted request first, drain=False fails the
        waiting ones with NotReadyError. After `timeout` seconds, whatever still waits is failed and
        close returns (a batch already inside the engine finishes on its own)."""
        with self._condition:
            if self._state in ("new", "starting"):
                self._state = "closed"
                return
            if self._state == "running":
                self._state = "closing"
            self._draining = self._draining and drain
            if not drain:
                self._fail_waiting(NotReadyError("the batcher closed before this request ran", "submit it again"))
            self._condition.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            while thread.is_alive():
                remaining = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
                if remaining <= 0:
                    break
                thread.join(remaining)
        with self._condition:
            self._fail_waiting(NotReadyError("the batcher closed before this request ran", "submit it again"))
            self._state = "closed"
            self._condition.notify_all()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close(drain=True)

    @property
    def running(self) -> bool:
        """Workers are alive (also while closing drains the queue)."""
        return any(thread.is_alive() for thread in self._threads)

    @property
    def ready(self) -> bool:
        """Warm and accepting work."""
        return self._state == "running"

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def stats(self) -> BatcherStats:
        with self._condition:
            return BatcherStats(**{name: self._counters[name] for name in
                                   ("requests", "texts", "batches", "dropped", "failed", "rejected",
                                    "listener_errors")})

    def add_batch_listener(self, callback: Callable[[BatchStats], None]) -> None:
        """callback(BatchStats) after every computed batch, from the worker thread; it must be quick.
        An exception in it is counted in stats.listener_errors and otherwise ignored."""
        with self._condition:
            self._listeners.append(callback)

    def _check_accepting(self) -> None:
        if self._state != "running":
            started = self._state not in ("new", "starting")
            raise NotReadyError("the batcher is closing" if started else "the batcher has not started",
                                "retry on a running batcher" if started else "call start() (or use `with`) first")

    def _warm_up_inputs(self):
        """One short text, padded as the engine's smallest accepted shape needs (Context.run pads up)."""
        encoder = self.engine.encoder
        encoded = encoder.encode(["warm-up"])
        return encoder.pad(encoded, [0], int(encoded.lengths[0]))

    def _largest_batch_inputs(self):
        """As many max-length rows as the token budget takes: attention buffers grow with rows x length^2, so
        under a budget of rows x length the longest rows need the most memory."""
        encoder = self.engine.encoder
        length = self.engine.max_seq_length
        rows = max(1, min(self.max_batch_size, self.max_batch_tokens // length))
        encoded = encoder.encode(["warm-up " * length] * rows)  # cut to max_seq_length tokens
        return encoder.pad(encoded, range(rows), length)

    def _fail_waiting(self, error: BaseException) -> None:
        """Under the condition: fail every queued request and batch."""
        for row in self._pending:
            row.request.fail(error)
        for batch in self._planned:
            for sink, _, _ in batch.parts:
                sink.fail(error)
        self._pending.clear()
        self._planned.clear()
        self._queued_texts = 0

    # -- what the online half provides (online.OnlineBatching) --------------------------------------

    def _prune(self) -> None:
        """Under the condition: forget waiting rows whose requests finished or were cancelled."""
        raise NotImplementedError

    def _pending_since(self) -> float:
        """When the oldest waiting row arrived (perf_counter); inf when none waits."""
        raise NotImplementedError

    def _next_online_batch(self) -> tuple[Batch | None, float]:
        """Under the condition: a batch cut from the waiting rows, or None and how long to wait for more."""
        raise NotImplementedError

    # -- workers ------------------------------------------------------------------------------------

    def _next_batch(self) -> Batch | None:
        """Block until there is work; None when the batcher stops. Called by workers."""
        with self._condition:
            while True:
                self._prune()
                if self._planned and (not self._pending or self._planned[0].enqueued <= self._pending_since()):
                    batch = self._planned.popleft()
                    self._queued_texts -= batch.inputs.input_ids.shape[0]
                    self._condition.notify_all()  # room for run() to queue the next one
                    return batch
                if self._pending:
                    batch, wait_s = self._next_online_batch()
                    if batch is not None:
                        return batch
                    if wait_s > 0:
                        self._condition.wait(wait_s)
                    continue
                if self._state == "closed" or (self._state == "closing" and not self._active_runs):
                    return None
                self._condition.wait(POLL_S)

    def _work(self, context, number: int) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._compute(context, number, batch)

    def _compute(self, context, number: int, batch: Batch) -> None:
        parts = batch.parts
        if not batch.claimed and not parts[0][0].claim():
            return  # its run already failed or was abandoned
        inputs = batch.inputs
        started = time.perf_counter()
        try:
            logits = context.run(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)
            inference_s = time.perf_counter() - started
            expected = (inputs.input_ids.shape[0], len(self.engine.label_names))
            if getattr(logits, "shape", None) != expected:
                raise BackendError(f"the engine returned logits of shape {getattr(logits, 'shape', None)} "
                                   f"for a batch of shape {inputs.input_ids.shape}", "rebuild the bundle")
            for sink, positions, rows in parts:
                sink.deliver(positions, logits[rows], batch.padded_length, started, inference_s)
        except BaseException as error:  # fails only the requests in this batch; the worker lives on
            failure = error if isinstance(error, RobertaDeployError) else BackendError(
                f"the engine failed on a batch of {inputs.input_ids.shape[0]} texts: "
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                "retry; if it persists, rebuild the bundle or report the model")
            with self._condition:
                self._counters["failed"] += 1
            for sink, _, _ in parts:
                sink.fail(failure)
            return
        rows = sum(positions.size for _, positions, _ in parts)
        stats = BatchStats(rows=rows, padded_length=batch.padded_length, tokens=rows * batch.padded_length,
                           inference_s=inference_s, context=number,
                           real_tokens=int(inputs.attention_mask[:rows].sum()))
        with self._condition:
            self._counters["batches"] += 1
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(stats)
            except Exception:  # a metrics hook must not take a worker down
                with self._condition:
                    self._counters["listener_errors"] += 1

