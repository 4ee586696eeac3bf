"""Timings that survive a noisy machine, and accuracy figures that say what they can resolve.

Every timing decision and report (deploy, build --precision auto, perf --compare, run's sweep, loadtest)
goes through here: candidates are timed in interleaved rounds (A B C, B C A, ...), so a burst of load
falls on all of them rather than deciding for one; each round records the CPU time other processes took
meanwhile; each candidate gets the median of its rounds and a distribution-free confidence interval for
that median. `rank_by_speed` calls the fastest the winner only when it clears every other round by round
(the interval of its per-round speed ratio lies above 1: interleaving makes a burst of load slow both sides
of a ratio); otherwise they are tied within noise and the caller's preference (the more exact precision,
the simpler backend) decides. The statistics are stated in docs/deploy.md.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95  # of every interval reported
BUSY_SHARE = 0.25  # a round in which other processes took more of the CPU than this is repeated once, then flagged
# Busy rounds are repeated only while repeats stay under this share of the rounds: under sustained load a
# repeat finds no quieter moment, and the time is better spent on more rounds.
MAX_REPEATED_SHARE = 0.25
# The smallest number of texts an exact McNemar test can call a loss at 5%: with every discordant pair
# against the candidate, p = 2 x 0.5^6 = 0.031 (5 pairs: 0.0625).
SIGNIFICANT_DISCORDANT_TEXTS = 6


# ---------------------------------------------------------------------------------------------------
# The machine's load


def _system_busy_seconds() -> float:
    """CPU seconds every process on the machine spent busy since boot (user..steal of /proc/stat)."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):  # not Linux: others' load is unknown, counted as none
        return _own_cpu_seconds()
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuLoad:
    """Times a block and the share of the machine's CPU that other processes took meanwhile:
    others_share = (busy CPU time of the machine - this process's own) / (wall time x CPUs)."""

    def __enter__(self) -> "CpuLoad":
        self._busy, self._own, self._started = _system_busy_seconds(), _own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exception) -> None:
        self.seconds = time.perf_counter() - self._started
        others = (_system_busy_seconds() - self._busy) - (_own_cpu_seconds() - self._own)
        self.others_share = min(1.0, max(0.0, others) / (max(self.seconds, 1e-9) * (os.cpu_count() or 1)))


def machine_load() -> dict:
    """The 1, 5 and 15-minute load averages and the CPU count, for a report's header."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # pragma: no cover - not Unix
        one = five = fifteen = float("nan")
    return {"load_average": [round(one, 2), round(five, 2), round(fifteen, 2)], "cpus": os.cpu_count()}


# ---------------------------------------------------------------------------------------------------
# Intervals


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval, in the estimate's own unit."""

    value: float
    low: float
    high: float
    confidence: float  # the interval's actual coverage (order-statistic intervals are not exactly CONFIDENCE)

    def overlaps(self, other: "Interval") -> bool:
        return self.low <= other.high and other.low <= self.high

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "confidence": round(self.confidence, 4)}

    @classmethod
    def from_dict(cls, data: dict) -> "Interval":
        return cls(data["value"], data["low"], data["high"], data["confidence"])


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """The median with a distribution-free interval: the k-th smallest and k-th largest values, k the largest
    whose binomial coverage 1 - 2 P(Binomial(n, 1/2) < k) is at least `confidence`; when no k reaches it
    (n below 6 at 95%) the whole range, whose coverage (1 - 2^(1-n)) is reported as it is."""
    ordered = sorted(float(value) for value in values)
    count = len(ordered)
    if count == 0:
        raise ValueError("no values")
    middle = count // 2
    median = ordered[middle] if count % 2 else (ordered[middle - 1] + ordered[middle]) / 2

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(count, i) for i in range(k)) / 2 ** count

    k = 1
    while k + 1 <= (count + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return Interval(median, ordered[k - 1], ordered[count - k], coverage(k) if count > 1 else 0.0)


def wilson_interval(successes: int, total: int, confidence: float = CONFIDENCE) -> Interval:
    """A share (e.g. accuracy) with its Wilson score interval, good at small counts and near 0 or 1."""
    if total <= 0:
        raise ValueError("no trials")
    z = _normal_quantile(0.5 + confidence / 2)
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return Interval(share, max(0.0, centre - half), min(1.0, centre + half), confidence)


def _normal_quantile(p: float) -> float:
    """Inverse of the standard normal CDF by bisection on erf (no scipy)."""
    low, high = -10.0, 10.0
    for _ in range(100):
        middle = (low + high) / 2
        if 0.5 * (1 + math.erf(middle / math.sqrt(2))) < p:
            low = middle
        else:
            high = middle
    return (low + high) / 2


# ---------------------------------------------------------------------------------------------------
# Timing in interleaved rounds


@dataclass(frozen=True)
class Round:
    """One candidate's turn: work repeated for at least the round's seconds."""

    seconds: float
    items: int  # texts (or sequences) done
    calls_ms: tuple[float, ...]  # each call's duration
    others_cpu_share: float  # of the machine's CPU, taken by other processes during the round
    repeated: bool = False  # the first try of this round was busier than BUSY_SHARE

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Timing:
    """Every round of one candidate."""

    name: str
    rounds: list[Round] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [round_.rate for round_ in self.rounds]

    @property
    def rate(self) -> Interval:
        """Items per second: the median round and its interval."""
        return median_interval(self.rates)

    @property
    def busy_rounds(self) -> int:
        """Rounds still busier than BUSY_SHARE after their repeat."""
        return sum(round_.others_cpu_share > BUSY_SHARE for round_ in self.rounds)

    @property
    def calls_ms(self) -> list[float]:
        return [call for round_ in self.rounds for call in round_.calls_ms]

    def call_percentiles(self, wanted: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
        """Percentiles of every call over every round (p50, p90, ...), and the median round's p50 with its
        interval (latency_p50): per-round medians are what the rounds make comparable."""
        calls = np.asarray(self.calls_ms, dtype=np.float64)
        result = {f"p{value:g}": float(np.percentile(calls, value)) for value in wanted}
        result["mean"] = float(calls.mean())
        return result

    def round_median_latency(self) -> Interval:
        return median_interval([float(np.median(round_.calls_ms)) for round_ in self.rounds])

    def to_dict(self) -> dict:
        return {"rounds": len(self.rounds), "rates": [round(rate, 3) for rate in self.rates],
                "rate": self.rate.to_dict(), "others_cpu_share": [round(r.others_cpu_share, 3) for r in self.rounds],
                "repeated_rounds": sum(r.repeated for r in self.rounds), "busy_rounds": self.busy_rounds}


@dataclass(frozen=True)
class TimingPlan:
    """How long to time: at least `min_rounds` rounds of each candidate, more while `until_separated` says
    the leaders overlap, never past `max_seconds` of timing in all (the cap the docs state)."""

    round_seconds: float = 0.5  # each candidate's turn: long enough for many calls and any warm-up effect
    min_rounds: int = 5
    max_seconds: float = 60.0
    warmup_seconds: float = 0.5  # one untimed turn per candidate first


# One unit of work: does it and returns how many items (texts, sequences) it did.
Work = Callable[[], int]


def time_interleaved(work: dict[str, Work], plan: TimingPlan,
                     until_separated: Callable[[dict[str, Timing]], bool] | None = None,
                     on_round: Callable[[int, dict[str, Timing]], None] | None = None,
                     before_rounds: Callable[[], None] | None = None) -> dict[str, Timing]:
    """Time each candidate's work in interleaved rounds; the order rotates each round (A B C, B C A, ...) so
    no candidate always follows the same one. A round busier than BUSY_SHARE is repeated once (its repeat
    counts, flagged `repeated`; a repeat still busy, or a busy round not repeated because repeats already make
    MAX_REPEATED_SHARE of the rounds, is counted in `busy_rounds`). A warm-up turn of each comes
    first, then `before_rounds()`. After `plan.min_rounds`,
    rounds continue while `until_separated(timings)` is False, until `plan.max_seconds` of timing."""
    names = list(work)
    timings = {name: Timing(name) for name in names}
    repeats = 0
    for name in names:  # warm-up: caches, kernels, thread pools; untimed
        _one_round(work[name], plan.warmup_seconds)
    if before_rounds is not None:  # e.g. forget what the warm-up recorded
        before_rounds()
    started = time.perf_counter()
    number = 0
    while True:
        order = names[number % len(names):] + names[:number % len(names)]
        for name in order:
            measured = _one_round(work[name], plan.round_seconds)
            done = sum(len(timing.rounds) for timing in timings.values())
            if measured.others_cpu_share > BUSY_SHARE and repeats < MAX_REPEATED_SHARE * (done + 1):
                repeats += 1
                measured = _one_round(work[name], plan.round_seconds, repeated=True)
            timings[name].rounds.append(measured)
        number += 1
        if on_round is not None:
            on_round(number, timings)
        if number < plan.min_rounds:
            continue
        if until_separated is None or until_separated(timings):
            break
        per_round = (time.perf_counter() - started) / number
        if time.perf_counter() - started + per_round > plan.max_seconds:
            break
    return timings


def _one_round(work: Work, seconds: float, repeated: bool = False) -> Round:
    calls, items = [], 0
    with CpuLoad() as load:
        deadline = time.perf_counter() + seconds
        while not calls or time.perf_counter() < deadline:
            call_started = time.perf_counter()
            items += work()
            calls.append((time.perf_counter() - call_started) * 1000)
    return Round(load.seconds, items, tuple(calls), load.others_share, repeated)


# ---------------------------------------------------------------------------------------------------
# The choice rule


@dataclass(frozen=True)
class SpeedRanking:
    """`rank_by_speed`'s answer: the chosen key, the keys tied with the fastest within noise (the chosen
    among them, fastest first), whether the choice was a tie broken by preference, and for every key the
    interval of the fastest's speed over its own (a ratio; above 1 throughout: clearly slower)."""

    chosen: str
    fastest: str  # the highest median round, whatever the noise
    tied: tuple[str, ...]
    by_preference: bool  # True: the fastest does not clear another; the preference chose
    behind_fastest: dict[str, Interval]  # fastest / this, per round: its median and interval


def ratio_interval(faster: Sequence[float], slower: Sequence[float]) -> Interval:
    """The median of faster[r] / slower[r] over the rounds r both ran, with its interval. Rounds are
    interleaved, so a burst of load that slows one round slows both sides of its ratio: the ratio's interval
    is narrower than either candidate's own, and it is what decides."""
    return median_interval([a / b for a, b in zip(faster, slower) if b > 0])


def rank_by_speed(rates: dict[str, Sequence[float]], preference: Callable[[str], tuple]) -> SpeedRanking:
    """rates: items/s per round, rounds aligned (time_interleaved). The fastest by median round wins only
    when it clears every other: the interval of its per-round speed ratio over each lies above 1. Otherwise
    every candidate it does not clear is tied with it, and the lowest `preference(key)` among those tied
    (e.g. (precision exactness, backend simplicity)) is chosen."""
    if not rates:
        raise ValueError("nothing to rank")
    ordered = sorted(rates, key=lambda key: -median_interval(rates[key]).value)
    fastest = ordered[0]
    behind = {key: ratio_interval(rates[fastest], rates[key]) for key in ordered}
    tied = tuple(key for key in ordered if key == fastest or behind[key].low <= 1.0)
    chosen = min(tied, key=preference) if len(tied) > 1 else fastest
    return SpeedRanking(chosen=chosen, fastest=fastest, tied=tied, by_preference=len(tied) > 1,
                        behind_fastest=behind)


def leaders_separated(rates: dict[str, Sequence[float]]) -> bool:
    """True when the fastest clears every other: more rounds cannot change the choice."""
    return len(rank_by_speed(rates, lambda key: ()).tied) == 1


# ---------------------------------------------------------------------------------------------------
# Accuracy against fp32


@dataclass(frozen=True)
class PairedComparison:
    """A candidate's labels against the reference's on the same texts: McNemar's exact test on the
    discordant pairs (texts one of the two got right and the other wrong)."""

    texts: int
    disagreements: int  # texts given another label than the reference gave
    only_reference_right: int
    only_candidate_right: int
    p_value: float  # exact two-sided binomial on the discordant pairs; 1.0 when there are none

    @property
    def points_vs_reference(self) -> float:
        return (self.only_candidate_right - self.only_reference_right) * 100 / self.texts

    @property
    def disagreement_points(self) -> float:
        """The most accuracy the candidate can have lost: every disagreement a text the reference got right."""
        return self.disagreements * 100 / self.texts

    def to_dict(self) -> dict:
        return {"texts": self.texts, "disagreements": self.disagreements,
                "only_reference_right": self.only_reference_right, "only_candidate_right": self.only_candidate_right,
                "mcnemar_exact_p": round(self.p_value, 6)}


def compare_paired(labels, reference_labels, gold) -> PairedComparison:
    """labels, reference_labels, gold: int (texts,) each."""
    labels, reference_labels, gold = (np.asarray(values) for values in (labels, reference_labels, gold))
    right, reference_right = labels == gold, reference_labels == gold
    only_reference = int((reference_right & ~right).sum())
    only_candidate = int((right & ~reference_right).sum())
    return PairedComparison(texts=len(gold), disagreements=int((labels != reference_labels).sum()),
                            only_reference_right=only_reference, only_candidate_right=only_candidate,
                            p_value=exact_mcnemar(only_reference, only_candidate))


def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact p-value of b against c discordant pairs under 'either way equally likely'."""
    total = b + c
    if total == 0:
        return 1.0
    tail = sum(math.comb(total, i) for i in range(min(b, c) + 1)) / 2 ** total
    return min(1.0, 2 * tail)


def texts_to_resolve(budget_points: float) -> int | None:
    """Labelled texts needed before a loss of `budget_points` can be told from chance: the smallest
    significant loss is SIGNIFICANT_DISCORDANT_TEXTS texts, which must be worth no more than the budget.
    None for a budget of 0 (no number of texts resolves it)."""
    if budget_points <= 0:
        return None
    return math.ceil(SIGNIFICANT_DISCORDANT_TEXTS * 100 / budget_points)


@dataclass(frozen=True)
class AccuracyGate:
    """How a budget is judged on `texts` labelled texts: by accuracy against fp32 when they resolve it, else
    by agreement with fp32 (the disagreements bound the loss whatever the labels say)."""

    budget_points: float
    texts: int
    needed_texts: int | None  # to resolve the budget; None: no count does (budget 0)

    @property
    def resolved(self) -> bool:
        return self.needed_texts is not None and self.texts >= self.needed_texts

    def within(self, comparison: PairedComparison) -> bool:
        if self.resolved:
            return -comparison.points_vs_reference <= self.budget_points + 1e-9
        return comparison.disagreement_points <= self.budget_points + 1e-9

    def why_not(self, comparison: PairedComparison) -> str:
        if self.resolved:
            return (f"{-comparison.points_vs_reference:.2f} accuracy points below fp32, past the "
                    f"{self.budget_points:g}-point budget")
        return (f"disagrees with fp32 on {comparison.disagreements} of {self.texts} texts "
                f"({comparison.disagreement_points:.2f} points), past the {self.budget_points:g}-point budget")

    def note(self) -> str | None:
        """One line when the texts cannot resolve the budget; None when they can."""
        if self.resolved:
            return None
        one_text = 100 / self.texts
        needed = (f"{self.needed_texts:,} labelled texts would" if self.needed_texts is not None
                  else "no number of texts resolves a budget of 0")
        return (f"{self.texts} held-back texts cannot resolve a {self.budget_points:g}-point budget (one text is "
                f"{one_text:.2f} points; {needed}): agreement with fp32 is the gate instead")

    def to_dict(self) -> dict:
        return {"budget_points": self.budget_points, "texts": self.texts, "needed_texts": self.needed_texts,
                "resolved": self.resolved, "gate": "accuracy vs fp32" if self.resolved else "agreement with fp32",
                "note": self.note()}
