"""Length-bucketed batch planning: sort by token length, cap batches by a token budget, pad to the longest.

Padding every text to max_seq_length computes mostly padding on reviews of typical lengths; sorted buckets
pad far less (docs/benchmarks.md). Plans keep the original indices, so results go back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..flags import COUNT
from ..errors import UsageError

# Pad each batch only to its longest text: the odd lengths and extra shapes cost less than rounding up
# to a multiple of 8 would pad (docs/benchmarks.md, "What moved roberta-deploy from 1.46x to 1.53x").
DEFAULT_PAD_MULTIPLE = 1

# Online batches (Batcher.submit) would take whatever (rows, length) the waiting requests make. OpenVINO's
# CPU plugin keeps kernels and buffers per input shape it has seen, so a server fed every shape grows
# without bound (live memory, not fragmentation: docs/serving.md, "Memory under load"). So online batches
# are padded to a few lengths and cut to a few row counts. Offline runs keep exact lengths: a run's shapes
# are few and known up front.
# Powers of two: at max length 512 the old grid (1, 2, 3, 4, 6, 8, 12, ...) gave 121 shapes and the server's memory
# grew for minutes as rare ones arrived (+25% over a 10-minute soak); powers of two give about as many shapes at
# 512 as the old grid did at 128 (docs/serving.md, "Memory at max length 512"). A window cut from 12 rows to 8
# leaves 4 for the next batch, which under load is already forming.
ONLINE_ROW_COUNTS = tuple(1 << power for power in range(11))


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
    COUNT.require(max_batch_size, "--batch-size")
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
    # Longest batches first: the engine allocates its largest buffers once instead of growing them batch
    # after batch (a lower peak, docs/benchmarks.md), and concurrent contexts finish on short batches, so
    # none idles long at the end.
    return batches[::-1]


def offline_batch_settings(profile, max_seq_length: int, batch_size: int, max_batch_tokens: int | None,
                           bucketing: bool, contexts: int, run_token_limit: int | None = None) -> tuple[int, int | None]:
    """(batch size, token budget) of an offline run on an engine of `profile` (shapes.ShapeProfile); UsageError
    for a batch size the bundle cannot take. A static engine computes its full batch anyway. run_token_limit:
    the engine's preferred most padded tokens per run (LoadedEngine.run_token_limit)."""
    COUNT.require(batch_size, "--batch-size")
    if batch_size > profile.max_batch:
        raise UsageError(f"batch size {batch_size} exceeds the bundle's maximum batch {profile.max_batch}",
                         f"pass --batch-size {profile.max_batch} or less, or rebuild with a larger --max-batch")
    if not profile.dynamic:
        batch_size = profile.max_batch
    if max_batch_tokens is None and profile.dynamic and bucketing:
        max_batch_tokens = default_token_budget(max_seq_length, batch_size, contexts, run_token_limit)
    return batch_size, max_batch_tokens


# Lengths past this do not raise the token budget. The budget once grew with max_seq_length: at 512 a batch
# could be 16 x 512 tokens, and one such batch took an OpenVINO context from 285 MB to 1.7 GB (attention
# buffers grow with rows x length^2) for no speed a 4 x 512 batch lacks: a GEMM over 2,048 tokens already
# keeps a core busy (docs/serving.md, "Memory at max length 512").
BUDGET_LENGTH_CAP = 128


def default_token_budget(max_seq_length: int, batch_size: int, contexts: int,
                         run_token_limit: int | None = None) -> int:
    """Padded tokens per batch when none is given: the contexts together hold one full batch of
    BUDGET_LENGTH_CAP-token texts, which keeps peak memory down at the same speed (docs/benchmarks.md, "What
    moved roberta-deploy from 1.46x to 1.53x", point 3); no more than the engine's `run_token_limit` where it
    has one (ONNX Runtime: smaller runs are faster, docs/serving.md, "Smaller batches for ONNX Runtime"); and
    always at least one text of max_seq_length."""
    budget = batch_size * min(max_seq_length, BUDGET_LENGTH_CAP) // contexts
    if run_token_limit is not None:
        budget = min(budget, run_token_limit)
    return max(max_seq_length, budget)


def padded_token_count(batches: Sequence[PlannedBatch], rows_per_batch: int | None = None) -> int:
    """Tokens the engine computes over, padding included (static engines pad rows too)."""
    return sum((rows_per_batch or len(batch.indices)) * batch.padded_length for batch in batches)
