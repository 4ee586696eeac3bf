"""The offline half of the Batcher: `run()` / `run_chunks()` tokenize a whole dataset on the caller's thread,
plan it into length buckets (batching.plan_batches) and queue every batch, the next chunk while the caller
takes the last one's results."""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..errors import NotReadyError, UsageError
from .batching import offline_batch_settings, plan_batches
from .results import Predictions
from .tokenization import TextInput
from .workers import POLL_S, Batch, Sink, WorkerCore

TOKENIZE_CHUNK = 2048  # texts per tokenizer call in run(): large enough to bucket well, small enough to start fast
QUEUED_BATCHES_PER_CONTEXT = 4  # run() keeps this many planned batches ahead of each worker


class OfflineRun(Sink):
    """One run(): results written by index; the first failure stops the rest of its batches."""

    def __init__(self, count: int, labels: int, on_batch_done: Callable[[int], None] | None):
        self.logits = np.zeros((count, labels), dtype=np.float32)
        self.on_batch_done = on_batch_done
        self.outstanding = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)

    def add_batch(self) -> None:
        with self._lock:
            self.outstanding += 1

    def claim(self) -> bool:
        with self._lock:
            if self.error is None:
                return True
            self._settle_one()  # skipped: the run already failed
            return False

    def deliver(self, positions, logits, padded_length, started, inference_s) -> None:
        self.logits[positions] = logits
        if self.on_batch_done is not None:
            try:
                self.on_batch_done(len(positions))
            except BaseException as error:  # a progress callback that raises fails the run, not the worker
                self.fail(error)
                return
        with self._lock:
            self._settle_one()

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            self._settle_one()

    def abandon(self, error: BaseException) -> None:
        """Stop the run from the caller's side (Ctrl-C): queued batches are skipped."""
        with self._lock:
            if self.error is None:
                self.error = error

    def _settle_one(self) -> None:
        self.outstanding -= 1
        self._settled.notify_all()

    def wait(self) -> None:
        with self._lock:
            while self.outstanding:
                self._settled.wait(POLL_S)



class OfflineBatching(WorkerCore):
    """run() and run_chunks() (mixed into Batcher)."""

    def run(self, texts: Sequence[TextInput], *, batch_size: int | None = None, max_batch_tokens: int | None = None,
            bucketing: bool = True, on_batch_done: Callable[[int], None] | None = None) -> Predictions:
        """texts (or (text, text_pair) tuples) -> Predictions in input order. Tokenizes and plans on the calling thread while the
        workers compute; on_batch_done(rows) is called from worker threads. The first failing batch
        stops the run and its error is raised here."""
        if isinstance(texts, str):
            raise UsageError("run() takes a list of texts, got one string", "pass [text]")
        with contextlib.closing(self.run_chunks([texts], batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                                bucketing=bucketing, on_batch_done=on_batch_done)) as results:
            return next(results)

    def run_chunks(self, chunks: Iterable[Sequence[TextInput]], *, batch_size: int | None = None,
                   max_batch_tokens: int | None = None, bucketing: bool = True,
                   on_batch_done: Callable[[int], None] | None = None) -> Iterator[Predictions]:
        """run() over each chunk of texts in turn, yielding each chunk's Predictions in order. The next
        chunk is tokenized and queued before the previous one is handed back, so the workers keep busy
        while the caller writes results, and a file of any size takes the memory of two chunks.
        Close the iterator (or exhaust it) to end the run; an error ends it too, skipping queued batches."""
        engine = self.engine
        profile = engine.profile
        batch_size, max_batch_tokens = offline_batch_settings(
            profile, engine.max_seq_length, batch_size or engine.default_batch_size(), max_batch_tokens, bucketing,
            self.context_count, engine.run_token_limit)
        with self._condition:
            self._check_accepting()
            self._active_runs += 1
        queued: collections.deque[tuple[OfflineRun, np.ndarray, np.ndarray]] = collections.deque()
        try:
            for texts in chunks:
                if isinstance(texts, str):
                    raise UsageError("run_chunks() takes lists of texts, got one string", "pass [[text], ...]")
                queued.append(self._queue_run(texts, batch_size, max_batch_tokens, bucketing, on_batch_done))
                if len(queued) > 1:
                    yield from self._hand_back(self._collect_first(queued))
            while queued:
                yield from self._hand_back(self._collect_first(queued))
        except BaseException as error:  # Ctrl-C, a tokenizer error, a failed batch or the caller closing
            for job, _, _ in queued:
                job.abandon(error)  # its queued batches are skipped
            raise
        finally:
            with self._condition:
                self._active_runs -= 1
                self._condition.notify_all()

    def _queue_run(self, texts: Sequence[TextInput], batch_size: int, max_batch_tokens: int | None, bucketing: bool,
                   on_batch_done) -> tuple[OfflineRun, np.ndarray, np.ndarray]:
        """Tokenize, plan and queue every batch of `texts` (blocks while the queue is full)."""
        engine = self.engine
        profile = engine.profile
        count = len(texts)
        job = OfflineRun(count, len(engine.label_names), on_batch_done)
        truncated = np.zeros(count, dtype=bool)
        token_lengths = np.zeros(count, dtype=np.int64)
        try:
            for start in range(0, count, TOKENIZE_CHUNK):
                chunk = texts[start:start + TOKENIZE_CHUNK]
                encoded = engine.encoder.encode(chunk)
                truncated[start:start + len(chunk)] = encoded.truncated
                token_lengths[start:start + len(chunk)] = encoded.lengths
                plans = plan_batches(encoded.lengths, max_batch_size=batch_size, max_seq_length=engine.max_seq_length,
                                     max_batch_tokens=max_batch_tokens if profile.dynamic else None,
                                     bucket_lengths=self._bucket_lengths, sort_by_length=bucketing)
                for plan in plans:
                    if job.error is not None:
                        break
                    inputs = engine.encoder.pad(encoded, plan.indices, plan.padded_length)
                    job.add_batch()
                    self._put_planned(Batch(inputs, [(job, plan.indices + start, slice(0, len(plan.indices)))],
                                             plan.padded_length), job)
                if job.error is not None:
                    break
        except BaseException as error:
            job.abandon(error)
            raise
        return job, truncated, token_lengths

    def _hand_back(self, predictions: Predictions) -> Iterator[Predictions]:
        """Yield one chunk's results without holding the workers meanwhile: a caller that stops iterating
        without closing the iterator must not make close() wait for it forever. (A run resumed after
        close() gets NotReadyError for its next chunk; what was already queued is still computed.)"""
        with self._condition:
            self._active_runs -= 1
            self._condition.notify_all()
        try:
            yield predictions
        finally:
            with self._condition:
                self._active_runs += 1

    def _collect_first(self, queued: collections.deque) -> Predictions:
        """Wait for every batch of the oldest queued run; its Predictions, or its first error raised.
        It leaves `queued` only once done, so an interrupted wait still abandons it."""
        job, truncated, token_lengths = queued[0]
        job.wait()
        if job.error is not None:
            raise job.error
        queued.popleft()
        return Predictions(logits=job.logits, truncated=truncated, token_lengths=token_lengths,
                           label_names=tuple(self.engine.label_names), task=getattr(self.engine, "task", None))

    def _put_planned(self, batch: Batch, job: OfflineRun) -> None:
        limit = QUEUED_BATCHES_PER_CONTEXT * self.context_count
        with self._condition:
            while len(self._planned) >= limit and job.error is None and self._accepts_batches():
                self._condition.wait(POLL_S)
            if not self._accepts_batches():
                job.fail(NotReadyError("the batcher closed before this batch ran", "run it again"))
                return
            self._planned.append(batch)
            self._queued_texts += batch.inputs.input_ids.shape[0]
            self._counters["texts"] += batch.parts[0][1].size
            self._condition.notify()

    def _accepts_batches(self) -> bool:
        """Under the condition: run() may still queue (it was accepted, and closing drains)."""
        return self._state == "running" or (self._state == "closing" and self._draining)
