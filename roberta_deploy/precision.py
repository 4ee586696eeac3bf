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


# How int8 scales activations. static: scales calibrated on real texts at build time, fixed in the graph.
# dynamic: weights quantized at build time, each activation's scale computed from every batch at run time
# (no calibration data; a text's logits then depend slightly on what it is batched with).
STATIC = "static"
DYNAMIC = "dynamic"
QUANTIZATION_MODES = (STATIC, DYNAMIC)


def canonical_quantization(name: str, precision: str) -> str:
    """The int8 mode `name` for a build of `precision` (canonical, or auto); UsageError for an unknown mode,
    or for dynamic with anything but int8."""
    key = name.strip().lower()
    if key not in QUANTIZATION_MODES:
        raise UsageError(f"unknown quantization {name!r}", f"use one of {', '.join(QUANTIZATION_MODES)}")
    if key == DYNAMIC and precision == AUTO:
        raise UsageError("--quantization dynamic picks one int8 build; --precision auto already tries every int8 "
                         "mode its backend has", "pass --precision int8, or leave --quantization off")
    if key == DYNAMIC and precision != "int8":
        raise UsageError(f"--quantization dynamic applies to int8, not {precision}",
                         "pass --precision int8, or leave --quantization off")
    return key


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
