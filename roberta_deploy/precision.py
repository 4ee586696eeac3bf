"""Precision names, vendor aliases, and the tolerance each precision must meet against fp32."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UsageError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
AUTO = "auto"
# Names used by TensorRT / MagicMind style tools, accepted as they are.
ALIASES = {
    "force_float32": "fp32", "float32": "fp32",
    "force_float16": "fp16", "float16": "fp16",
    "bfloat16": "bf16",
    "qint8_mixed_float16": "int8", "qint8": "int8",
}


@dataclass(frozen=True)
class Tolerance:
    """Allowed |logit - fp32 logit| = absolute + relative * max|fp32 logit| over the check samples.

    Label flips need no separate rule: with every logit within the bound, only samples whose fp32
    margin is under twice the bound can change label.
    """

    absolute: float
    relative: float

    def bound(self, reference: np.ndarray) -> float:
        return self.absolute + self.relative * float(np.abs(reference).max(initial=0.0))


TOLERANCES = {
    "fp32": Tolerance(1e-3, 1e-3),  # fused kernels reorder sums; nothing more
    "fp16": Tolerance(0.02, 0.02),
    "bf16": Tolerance(0.05, 0.06),  # 8-bit mantissa through ~12 layers
    "int8": Tolerance(0.10, 0.15),  # per-tensor activations, per-channel weights
}


def canonical_precision(name: str, allow_auto: bool = False) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key == AUTO and allow_auto:
        return AUTO
    if key not in PRECISIONS:
        known = ", ".join(PRECISIONS + ((AUTO,) if allow_auto else ()) + tuple(ALIASES))
        raise UsageError(f"unknown precision {name!r}", f"use one of {known}")
    return key


def parse_precision_list(text: str) -> list[str]:
    names = [canonical_precision(part) for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError("no precision given", "pass a comma-separated list such as fp32,bf16,int8")
    return list(dict.fromkeys(names))
