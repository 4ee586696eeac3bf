"""The online half of the Batcher: `submit()` queues a request as it arrives and gets a future; idle workers
cut the waiting rows into length-bucketed batches under a token budget, padded to a few lengths and cut to a
few row counts so the engine sees few shapes (its per-shape caches stay bounded; see batching.py)."""

from __future__ import annotations

import bisect
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InputDataError, OverloadedError
from .batching import online_row_count
from .results import RequestResult, RequestTimings
from .tokenization import EncodedTexts, TextInput
from .workers import POLL_S, Batch, Sink, WorkerCore

# How much more an online batch may compute than its rows would, each padded only to its own length class.
# Without a bound the window grew to the token budget, across every length waiting: at max length 512 the
# server computed 2.25x the real tokens (docs/serving.md, "Online batching at any max length").
PADDING_ALLOWANCE = 1.2


class OnlineRequest(Sink):
    def __init__(self, future: Future, encoded: EncodedTexts, labels: int, label_names: tuple[str, ...],
                 submitted: float, tokenization_s: float, task=None):
        self.future = future
        self.task = task
        self.encoded = encoded
        self.label_names = label_names
        self.logits = np.zeros((len(encoded), labels), dtype=np.float32)
        self.remaining = len(encoded)
        self.submitted = submitted
        self.tokenization_s = tokenization_s
        self.enqueued = time.perf_counter()
        self.first_started: float | None = None
        self.inference_s = 0.0
        self.compute_tokens = 0
        self.finished = False
        self.cancelled = False
        self._lock = threading.Lock()

    def cancel(self) -> bool:
        """Give up on this request before it runs: its rows are dropped before compute and its future is
        cancelled. False when it already runs or finished (a batch inside the engine is not stopped)."""
        with self._lock:
            if self.finished or self.first_started is not None:
                return False
            self.finished = self.cancelled = True
        self.future.cancel()
        return True

    def claim(self) -> bool:
        with self._lock:
            if self.finished:
                return False
            if self.first_started is None and not self.future.set_running_or_notify_cancel():
                self.finished = self.cancelled = True  # the caller cancelled it while it waited
                return False
            if self.first_started is None:
                self.first_started = time.perf_counter()
            return True

    def deliver(self, positions, logits, padded_length, started, inference_s) -> None:
        with self._lock:
            if self.finished:
                return
            self.logits[positions] = logits
            self.remaining -= len(positions)
            self.inference_s += inference_s
            self.compute_tokens += len(positions) * padded_length
            if self.remaining:
                return
            self.finished = True
        now = time.perf_counter()
        timings = RequestTimings(tokenization_s=self.tokenization_s, queue_s=self.first_started - self.enqueued,
                                 inference_s=self.inference_s, total_s=now - self.submitted)
        self.future.set_result(RequestResult(logits=self.logits, truncated=self.encoded.truncated,
                                             token_lengths=self.encoded.lengths, compute_tokens=self.compute_tokens,
                                             timings=timings, label_names=self.label_names, task=self.task))

    def fail(self, error: BaseException) -> None:
        with self._lock:
            if self.finished:
                return
            self.finished = True
            running = self.first_started is not None
        if not running and not self.future.set_running_or_notify_cancel():
            return
        self.future.set_exception(error)



@dataclass
class PendingRow:
    request: OnlineRequest
    position: int  # index of the text in its request
    length: int  # tokens, specials included
    arrival: int  # order of arrival, so the oldest row is always served first


class OnlineBatching(WorkerCore):
    """submit() and the cutting of waiting rows into batches (mixed into Batcher)."""

    def submit(self, texts: Sequence[TextInput] | str, *, truncate: bool = True,
               truncation_direction: str = "right") -> Future:
        """Queue one request; the future's result is a RequestResult, its rows in the order of `texts`
        (each a text or a (text, text_pair) tuple). A long text is cut at its right end, or at its left
        (keeping the end) with truncation_direction="left", as text-embeddings-inference offers.

        Tokenizes on the calling thread. Raises InputDataError (empty or, with truncate=False, too long
        text), OverloadedError (more than max_queued_texts waiting) and NotReadyError (not started or
        closing) at once; engine failures arrive through the future.
        """
        submitted = time.perf_counter()
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise InputDataError("the request holds no texts", "send at least one non-empty text")
        self._check_accepting()
        encoded = self.engine.encoder.encode(texts, truncation_direction)
        if not truncate and encoded.truncated.any():
            index = int(np.flatnonzero(encoded.truncated)[0])
            raise InputDataError(f"text {index} is longer than the model's {self.engine.max_seq_length} tokens",
                                 "shorten it, or allow truncation")
        tokenization_s = time.perf_counter() - submitted
        future: Future = Future()
        request = OnlineRequest(future, encoded, len(self.engine.label_names), tuple(self.engine.label_names),
                           submitted, tokenization_s, getattr(self.engine, "task", None))
        lengths = encoded.lengths
        with self._condition:
            self._check_accepting()
            if self._queued_texts + len(texts) > self.max_queued_texts:
                self._counters["rejected"] += 1
                raise OverloadedError(f"{self._queued_texts} texts are already waiting (limit "
                                      f"{self.max_queued_texts})", "retry shortly, or send fewer texts at once")
            for position, length in enumerate(lengths):
                self._pending.append(PendingRow(request, position, int(length), self._arrivals))
                self._arrivals += 1
            self._queued_texts += len(texts)
            self._counters["requests"] += 1
            self._counters["texts"] += len(texts)
            self._condition.notify()
        return future

    def _padded_length_of(self, length: int) -> int:
        """The length an online batch whose longest row has `length` tokens is padded to."""
        lengths = self._online_lengths
        return lengths[bisect.bisect_left(lengths, min(length, self.engine.max_seq_length))]

    def _pending_since(self) -> float:
        return self._pending[0].request.enqueued if self._pending else float("inf")

    def _select_rows(self) -> tuple[list[PendingRow], bool]:
        """The oldest waiting row plus the rows closest to it in length that fit the budget, while the batch
        pads at most PADDING_ALLOWANCE over what its rows would take each at its own length class; cut to a
        row count of ONLINE_ROW_COUNTS (or a full batch) on dynamic engines. The rows left out wait for a
        batch of their own lengths.

        Returns the rows and whether the batch is complete (nothing else waiting would join it).
        """
        by_length = sorted(self._pending, key=lambda row: (row.length, row.arrival))
        anchor = min(range(len(by_length)), key=lambda index: by_length[index].arrival)
        low, high = anchor, anchor + 1  # the window by_length[low:high]
        padded = self._padded_length_of(by_length[anchor].length)
        own_classes = padded  # tokens the window's rows would take, each padded only to its own class
        static = self._bucket_lengths is not None
        while high - low < self.max_batch_size:
            rows = high - low
            shorter = low - 1 if low > 0 else None
            longer = high if high < len(by_length) else None
            if shorter is None and longer is None:
                return self._cut_to_row_count(by_length[low:high], by_length[anchor]), False
            longer_padded = self._padded_length_of(by_length[longer].length) if longer is not None else None
            fits_shorter = shorter is not None and (static or padded * (rows + 1) <= self.max_batch_tokens)
            fits_longer = longer is not None and (static or longer_padded * (rows + 1) <= self.max_batch_tokens)
            if not fits_shorter and not fits_longer:
                return self._cut_to_row_count(by_length[low:high], by_length[anchor]), True
            # Prefer the neighbour that adds the least padding to the batch.
            shorter_waste = padded - by_length[shorter].length if fits_shorter else None
            longer_waste = (longer_padded - padded) * rows + longer_padded - by_length[longer].length \
                if fits_longer else None
            take_shorter = fits_shorter and (not fits_longer or shorter_waste <= longer_waste)
            neighbour = by_length[shorter if take_shorter else longer]
            new_padded = padded if take_shorter else longer_padded
            neighbour_class = self._padded_length_of(neighbour.length)
            if not static and new_padded * (rows + 1) > PADDING_ALLOWANCE * (own_classes + neighbour_class):
                # A wider batch would compute padding; the rows left out make batches of their own lengths.
                return self._cut_to_row_count(by_length[low:high], by_length[anchor]), True
            own_classes += neighbour_class
            if take_shorter:
                low -= 1
            else:
                high += 1
                padded = longer_padded
        return self._cut_to_row_count(by_length[low:high], by_length[anchor]), True

    def _cut_to_row_count(self, window: list[PendingRow], oldest: PendingRow) -> list[PendingRow]:
        """Drop rows from the ends of `window` (sorted by length; never `oldest`), the newest first,
        until its size is one the engine sees often. Cutting rows costs a batch call; padding rows
        instead would compute filler."""
        if self._bucket_lengths is not None:
            return window  # a static engine pads every batch to its one row count anyway
        while True:
            padded = self._padded_length_of(window[-1].length)
            cap = max(1, min(self.max_batch_size, self.max_batch_tokens // padded))
            if len(window) == online_row_count(len(window), cap):
                return window
            if window[-1] is oldest or (window[0] is not oldest and window[0].arrival > window[-1].arrival):
                window = window[1:]
            else:
                window = window[:-1]

    def _take(self, rows: list[PendingRow]) -> Batch | None:
        """Under the condition: remove `rows` from the queue and pad them into one batch (None when
        every one of them was cancelled meanwhile)."""
        taken = {id(row) for row in rows}
        self._pending = [row for row in self._pending if id(row) not in taken]
        self._queued_texts -= len(rows)
        claimed = []
        for row in rows:
            was_cancelled = row.request.cancelled
            if row.request.claim():
                claimed.append(row)
            elif row.request.cancelled and not was_cancelled:
                self._counters["dropped"] += 1
        if not claimed:
            return None
        by_request: dict[int, list[PendingRow]] = {}
        for row in claimed:
            by_request.setdefault(id(row.request), []).append(row)
        padded_length = self._padded_length_of(max(row.length for row in claimed))
        token_ids, type_ids, parts, start = [], [], [], 0
        for group in by_request.values():
            request = group[0].request
            token_ids += [request.encoded.token_ids[row.position] for row in group]
            type_ids += [request.encoded.type_ids[row.position] for row in group]
            parts.append((request, np.array([row.position for row in group], dtype=np.int64),
                          slice(start, start + len(group))))
            start += len(group)
        merged = EncodedTexts(token_ids=token_ids, type_ids=type_ids, truncated=np.zeros(len(claimed), dtype=bool))
        inputs = self.engine.encoder.pad(merged, range(len(claimed)), padded_length)
        return Batch(inputs, parts, padded_length, claimed=True)

    def _next_online_batch(self) -> tuple[Batch | None, float]:
        """Under the condition: cut a batch once it is full, the oldest row waited max_wait_s, or closing."""
        rows, full = self._select_rows()
        waited = time.perf_counter() - self._pending_since()
        if full or waited >= self.max_wait_s or self._state != "running":
            return self._take(rows), 0.0
        return None, min(POLL_S, self.max_wait_s - waited)

    def _prune(self) -> None:
        """Under the condition: forget rows of requests that already failed or were cancelled."""
        kept = []
        for row in self._pending:
            request = row.request
            if not request.finished and request.future.cancelled() and request.cancel():
                self._counters["dropped"] += 1
            if request.finished:
                self._queued_texts -= 1
            else:
                kept.append(row)
        self._pending = kept
