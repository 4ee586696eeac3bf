"""Every count and duration a command takes, checked in one place before any work: a positive
(or, where zero means something, non-negative) finite number, and no more than this machine holds.

Zero is never read as "the default" (the defaults are spelled out by leaving a flag off), NaN and
infinity are refused, and thread counts stop at the cores this process may use. The CLI runs
`check_flags` on every command's arguments, keyed by parameter name.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import UsageError
from .machine import available_cores

POSITIVE_COUNTS = {"batch_size", "max_batch_tokens", "max_seq_length", "min_batch", "max_batch", "min_seq",
                   "max_seq", "seq_len", "calibration_samples", "verification_samples", "epochs", "timing_passes",
                   "replicas"}
THREAD_COUNTS = {"threads", "cpu_threads"}  # positive, and at most the cores this process may use
NON_NEGATIVE_COUNTS = {"iterations"}  # 0: "not a criterion" (perf times by --duration alone)
DURATIONS = {"duration", "warmup", "perf_seconds"}  # seconds; 0 allowed where the command says what it means
POSITIVE_NUMBERS = {"lr", "replica_cpus", "target_ongoing_requests"}
NON_NEGATIVE_NUMBERS = {"accuracy_budget"}
MAX_SECONDS = 24 * 3600  # a benchmark longer than a day is a typo, not a plan
MAX_COUNT = 2**31 - 1  # past int32 every engine and numpy index overflows somewhere


def flag_name(parameter: str) -> str:
    return "--" + parameter.replace("_", "-")


def check_flags(arguments: dict) -> None:
    """Raise UsageError for the first count or duration in `arguments` (parameter name -> value)
    that is out of range; values of None (flag left off) and other parameters are ignored."""
    for name, value in arguments.items():
        if value is None or isinstance(value, (bool, str, Path)):
            continue
        flag = flag_name(name)
        if name in POSITIVE_COUNTS or name in THREAD_COUNTS:
            _check_count(flag, value, minimum=1)
            if name in THREAD_COUNTS and value > available_cores():
                cores = available_cores()
                raise UsageError(f"{flag} {value} is more than the {cores} cores this process may use",
                                 f"pass {flag} {cores} or less: more threads than cores only queue")
        elif name in NON_NEGATIVE_COUNTS:
            _check_count(flag, value, minimum=0)
        elif name in DURATIONS:
            _check_number(flag, value, minimum=0.0, strict=False, unit=" of seconds")
            if value > MAX_SECONDS:
                raise UsageError(f"{flag} {value} is longer than a day", f"pass {flag} in seconds, e.g. {flag} 10")
        elif name in POSITIVE_NUMBERS:
            _check_number(flag, value, minimum=0.0, strict=True)
        elif name in NON_NEGATIVE_NUMBERS:
            _check_number(flag, value, minimum=0.0, strict=False)


def _check_count(flag: str, value, minimum: int) -> None:
    if not isinstance(value, int) or value < minimum or value > MAX_COUNT:
        what = "a positive integer" if minimum == 1 else "zero or a positive integer"
        raise UsageError(f"{flag} {value} must be {what}",
                         f"pass {flag} {max(minimum, 1)} or more, or leave it off for the default")


def _check_number(flag: str, value, minimum: float, strict: bool, unit: str = "") -> None:
    if not math.isfinite(value):
        raise UsageError(f"{flag} {value} is not a finite number", f"pass a number{unit}, e.g. {flag} 10")
    if value < minimum or (strict and value == minimum):
        bound = "greater than" if strict else "at least"
        raise UsageError(f"{flag} {value} must be {bound} {minimum:g}", f"pass a number{unit} {bound} {minimum:g}")
