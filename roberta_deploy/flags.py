"""Every count and duration a command takes, checked by one rule per kind before any work: a positive
(or, where zero means something, non-negative) finite number, and no more than this machine holds.

A command declares the kind beside the option it checks (`Annotated[int, typer.Option(...), flags.COUNT]`),
so a renamed parameter keeps its check; `cli/exits.reports_errors` runs the checks of what it was given.
Library code checks its own arguments with the same `Check` objects (`COUNT.require(value, "--batch-size")`).
Zero is never read as "the default" (the defaults are spelled out by leaving a flag off), NaN and infinity
are refused, and thread counts stop at the cores this process may use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import UsageError
from .machine import available_cores

MAX_SECONDS = 24 * 3600  # a benchmark longer than a day is a typo, not a plan
MAX_COUNT = 2**31 - 1  # past int32 every engine and numpy index overflows somewhere


def flag_name(parameter: str) -> str:
    return "--" + parameter.replace("_", "-")


@dataclass(frozen=True)
class Check:
    """One kind of count or number. As Annotated metadata it marks the option it checks; `require` checks
    a value and raises a UsageError naming `flag` and the fix."""

    kind: str  # "count", "threads", "count_or_zero", "seconds", "positive", "non_negative"

    def require(self, value, flag: str):
        if value is None or isinstance(value, bool):
            return value
        if self.kind in ("count", "threads"):
            _check_count(flag, value, minimum=1)
            cores = available_cores()
            if self.kind == "threads" and value > cores:
                raise UsageError(f"{flag} {value} is more than the {cores} cores this process may use",
                                 f"pass {flag} {cores} or less: more threads than cores only queue")
        elif self.kind == "count_or_zero":
            _check_count(flag, value, minimum=0)
        elif self.kind == "seconds":
            _check_number(flag, value, minimum=0.0, strict=False, unit=" of seconds")
            if value > MAX_SECONDS:
                raise UsageError(f"{flag} {value} is longer than a day", f"pass {flag} in seconds, e.g. {flag} 10")
        elif self.kind == "positive":
            _check_number(flag, value, minimum=0.0, strict=True)
        elif self.kind == "non_negative":
            _check_number(flag, value, minimum=0.0, strict=False)
        return value


COUNT = Check("count")  # a positive integer
THREADS = Check("threads")  # a positive integer, at most the cores this process may use
COUNT_OR_ZERO = Check("count_or_zero")  # zero means "not a criterion" where the option says so
SECONDS = Check("seconds")  # zero or more seconds, at most a day
POSITIVE = Check("positive")  # a finite number above zero
NON_NEGATIVE = Check("non_negative")  # a finite number, zero or more


def checks_of(annotations: dict) -> dict[str, Check]:
    """parameter name -> the Check declared in its Annotated[...] metadata (parameters without one are left out)."""
    found = {}
    for name, annotation in annotations.items():
        for item in getattr(annotation, "__metadata__", ()):
            if isinstance(item, Check):
                found[name] = item
    return found


def check_flags(arguments: dict, checks: dict[str, Check], flag_names: dict[str, str] | None = None) -> None:
    """Raise UsageError for the first argument (parameter name -> value) out of its declared range; values of
    None (flag left off) pass. `flag_names` gives a parameter's flag where it is not --parameter-name."""
    for name, check in checks.items():
        if name in arguments:
            check.require(arguments[name], (flag_names or {}).get(name) or flag_name(name))


def _check_count(flag: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value > MAX_COUNT:
        what = "a positive integer" if minimum == 1 else "zero or a positive integer"
        raise UsageError(f"{flag} {value} must be {what}",
                         f"pass {flag} {max(minimum, 1)} or more, or leave it off for the default")


def _check_number(flag: str, value, minimum: float, strict: bool, unit: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{flag} {value} is not a finite number", f"pass a number{unit}, e.g. {flag} 10")
    if value < minimum or (strict and value == minimum):
        bound = "greater than" if strict else "at least"
        raise UsageError(f"{flag} {value} must be {bound} {minimum:g}", f"pass a number{unit} {bound} {minimum:g}")
