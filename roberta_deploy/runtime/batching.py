"""Length-bucketed batch planning: sort by token length, cap batches by a token budget, pad to the longest.

Padding every review to 128 tokens wastes a third of the machine on ChnSentiCorp; sorted buckets
cut padded tokens 1.5x. Plans keep the original indices, so results go back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import UsageError

# Pad each batch only to its longest text. On ChnSentiCorp dev, rounding up to a multiple of 8
# computed 1.046x the useful tokens against 1.017x, and the OpenVINO int8 engine classified 2-3%
# fewer reviews/s: the extra distinct shapes (28 against 13 at 4,096 tokens per batch) and odd
# lengths cost less than the padding did (docs/benchmarks.md).
DEFAULT_PAD_MULTIPLE = 1

# Online batches (Batcher.submit) take whatever (rows, length) the waiting requests make. OpenVINO's CPU
# plugin keeps kernels and buffers per input shape it has seen (its runtime cache, up to thousands of
# entries), so a server fed every shape grows for hours: the demo bundle's engine under random shapes went
# from 130 MB to 3.4 GB in a minute, and malloc_trim gave nothing back (live memory, not fragmentation);
# with 48 shapes it stayed at 235 MB. So online batches are padded to a few lengths and cut to a few row
# counts (docs/serving.md). Offline runs keep exact lengths: a run's shapes are few and known up front.
ONLINE_ROW_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def online_lengths(max_seq_length: int) -> tuple[int, ...]:
    """The lengths online batches are padded to: multiples of 16 up to 128, of 32 up to 256, of 64 beyond
    (a step of an eighth of the next power of two), and max_seq_length itself."""
    lengths, length = set(), 0
    while length < max_seq_length:
        length += max(16, (1 << max(length, 1).bit_length()) // 8)
        lengths.add(min(length, max_seq_length))
    return tuple(sorted(lengths))


def online_row_count(rows: int, cap: int) -> int:
    """The largest row count of ONLINE_ROW_COUNTS (or `cap`, a full batch) that is at most `rows`."""
    if rows >= cap:
        return cap
    return max(count for count in ONLINE_ROW_COUNTS if count <= rows)


@dataclass(frozen=True)
class PlannedBatch:
    indices: np.ndarray  # int64 (batch,): positions of the texts in the caller's input
    padded_length: int  # sequence length every row is padded to


def plan_batches(
    lengths: np.ndarray,
    *,
    max_batch_size: int,
    max_seq_length: int,
    max_batch_tokens: int | None = None,
    pad_multiple: int = DEFAULT_PAD_MULTIPLE,
    bucket_lengths: Sequence[int] | None = None,
    sort_by_length: bool = True,
) -> list[PlannedBatch]:
    """Group texts of `lengths` (int, tokens incl. specials) into batches.

    sort_by_length: texts sorted by length, each batch padded to its longest member rounded up to
    `pad_multiple` (or the next of `bucket_lengths` for static engines), and closed when adding a
    text would exceed `max_batch_tokens` (padded length x rows) or `max_batch_size`; the batches
    come longest first.
    Otherwise: input order, every batch padded to max_seq_length (what vendor samples do).
    """
    if max_batch_size < 1:
        raise UsageError(f"batch size {max_batch_size} must be at least 1", "pass a positive --batch-size")
    budget = max_batch_tokens if max_batch_tokens is not None else max_batch_size * max_seq_length
    if budget < max_seq_length:
        raise UsageError(f"token budget {budget} is below max_seq_length {max_seq_length}",
                         f"pass --max-batch-tokens of at least {max_seq_length}")
    lengths = np.minimum(np.asarray(lengths, dtype=np.int64), max_seq_length)
    if not sort_by_length:
        padded = bucket_lengths[-1] if bucket_lengths else max_seq_length
        rows = max(1, min(max_batch_size, budget // padded))
        return [PlannedBatch(np.arange(start, min(start + rows, len(lengths))), padded)
                for start in range(0, len(lengths), rows)]

    def padded_length_of(length: int) -> int:
        if bucket_lengths:
            return next(bucket for bucket in bucket_lengths if bucket >= length)
        return min(max_seq_length, -(-length // pad_multiple) * pad_multiple)

    order = np.argsort(lengths, kind="stable")
    batches: list[PlannedBatch] = []
    start = 0
    while start < len(order):
        end = start + 1
        padded = padded_length_of(int(lengths[order[start]]))
        while end < len(order) and end - start < max_batch_size:
            candidate = padded_length_of(int(lengths[order[end]]))
            if candidate * (end - start + 1) > budget:
                break
            padded = candidate
            end += 1
        batches.append(PlannedBatch(order[start:end], padded))
        start = end
    # Longest batches first: the engine allocates its largest buffers once instead of growing them
    # batch after batch (peak RSS 807 MB against 876 MB for the BERT-base int8 engine over
    # ChnSentiCorp dev), and concurrent contexts finish on short batches, so none idles long at the end.
    return batches[::-1]


def padded_token_count(batches: Sequence[PlannedBatch], rows_per_batch: int | None = None) -> int:
    """Tokens the engine computes over, padding included (static engines pad rows too)."""
    return sum((rows_per_batch or len(batch.indices)) * batch.padded_length for batch in batches)
