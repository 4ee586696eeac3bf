"""Useful work of a BERT-base classifier, and the matmul ceiling of this machine to compare it against.

FLOPs count the real (unpadded) tokens of each review, so an engine that computes padding earns
nothing for it: FLOPs(L) = 2 * P * L + 4 * L^2 * hidden * layers, where P is the number of weights
in the encoder's matmuls (per layer 4 * hidden^2 for Q, K, V and the output projection plus
2 * hidden * intermediate for the feed-forward block), and the second term is QK^T and
attention x V. The pooler and classifier (one token per sequence) add under 0.01% and are left out.
"""

from __future__ import annotations

import time

import numpy as np

from artifacts import HIDDEN_SIZE, INTERMEDIATE_SIZE, NUM_LAYERS

MATMUL_WEIGHTS = NUM_LAYERS * (4 * HIDDEN_SIZE * HIDDEN_SIZE + 2 * HIDDEN_SIZE * INTERMEDIATE_SIZE)
# Ceilings measured on a Xeon with AMX (shared/NOTES.md); kept for reference, this run measures its own.
NOTES_CEILINGS_GFLOPS = {"fp32": 400.0, "bf16": 2300.0, "int8": 2500.0}
# The GEMMs of one batch of 32 x 128 tokens: QKV/output projection, FFN up, FFN down.
CEILING_SHAPES = ((4096, HIDDEN_SIZE, HIDDEN_SIZE), (4096, HIDDEN_SIZE, INTERMEDIATE_SIZE),
                  (4096, INTERMEDIATE_SIZE, HIDDEN_SIZE))
CEILING_SECONDS_PER_SHAPE = 1.0


def sequence_flops(lengths: np.ndarray) -> np.ndarray:
    """lengths: int (n,) tokens per sequence, [CLS]/[SEP] included -> float64 (n,) FLOPs each."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return 2.0 * MATMUL_WEIGHTS * lengths + 4.0 * lengths ** 2 * HIDDEN_SIZE * NUM_LAYERS


def measure_matmul_ceilings(threads: int) -> dict:
    """Best GFLOP/s of torch GEMMs at BERT shapes per precision (fp32, bf16 via oneDNN, int8 via _int_mm).

    Returns {"fp32": {"gflops": best, "per_shape": {...}}, ...}. Runs in its own process, like the
    configurations, so nothing else shares its threads.
    """
    import torch

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    results = {}
    for precision in ("fp32", "bf16", "int8"):
        per_shape = {}
        for rows, inner, columns in CEILING_SHAPES:
            left, right = _operands(precision, rows, inner, columns, generator)
            multiply = torch._int_mm if precision == "int8" else torch.matmul
            seconds = _best_call_seconds(lambda: multiply(left, right))
            per_shape[f"{rows}x{inner}x{columns}"] = 2.0 * rows * inner * columns / seconds / 1e9
        results[precision] = {"gflops": max(per_shape.values()), "per_shape": per_shape}
    return results


def _operands(precision: str, rows: int, inner: int, columns: int, generator):
    import torch

    if precision == "int8":
        return (torch.randint(-127, 128, (rows, inner), dtype=torch.int8, generator=generator),
                torch.randint(-127, 128, (inner, columns), dtype=torch.int8, generator=generator))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return (torch.randn(rows, inner, generator=generator).to(dtype),
            torch.randn(inner, columns, generator=generator).to(dtype))


def _best_call_seconds(call) -> float:
    """Fastest of repeated calls for CEILING_SECONDS_PER_SHAPE: a ceiling is the best case."""
    for _ in range(3):  # first calls pick kernels and fault in memory
        call()
    best = float("inf")
    deadline = time.perf_counter() + CEILING_SECONDS_PER_SHAPE
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best
