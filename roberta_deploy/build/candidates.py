"""The one "build candidates, then measure each" loop: deploy, build --precision auto, eval and run.

A candidate is a spec (what to build it from, backend, precision); the caller says how one is built (a
fresh build, or a reuse it has checked), this module builds each in turn, records the ones a numerical
check rejects, then scores every built candidate on the same texts and times them together in interleaved
rounds (measurement.py), and `choose` applies the rule: within the accuracy budget, the fastest when it
clears every other (the interval of its per-round speed ratio over each lies above 1), else the tie goes to
the more exact precision and the simpler backend.
A distilled student is one more spec, built from its own export. A backend with more than one int8 mode
(ONNX Runtime: static and dynamic) offers one spec per mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..backends.base import Backend
from ..data import Dataset
from ..errors import NumericalCheckError
from ..measurement import (AccuracyGate, Interval, PairedComparison, Timing, TimingPlan, compare_paired,
                           leaders_separated, rank_by_speed, time_interleaved, wilson_interval)
from ..runtime.batcher import Batcher
from ..precision import STATIC
from ..runtime.engine import LATENCY, THROUGHPUT, Engine

# A tie within noise goes to the more exact precision, then to the backend with fewer conversions between
# the export and what runs (ONNX Runtime runs the exported model.onnx; OpenVINO converts it to its IR;
# torch rebuilds from the checkpoint). Unknown names sort last.
PRECISION_EXACTNESS = ("fp32", "fp16", "bf16", "int8")
BACKEND_SIMPLICITY = ("onnxruntime", "openvino", "torch")
# Then static int8 before dynamic: its outputs do not depend on what a text is batched with.
QUANTIZATION_STABILITY = (STATIC, "dynamic")


@dataclass(frozen=True)
class CandidateSpec:
    backend: str  # a backend's canonical name
    precision: str  # canonical (precision.canonical_precision), asked of the backend when the plan was made
    export_dir: Path | None = None  # what it is built from; None: the job's own export
    label: str = ""  # tells candidates from different exports apart, e.g. "student"
    # int8's mode other than the default (static, calibrated): "dynamic"; None for the default and other
    # precisions, so their names, folders and deployment.json records stay what they were.
    quantization: str | None = None

    def __post_init__(self):
        if self.quantization == STATIC:
            object.__setattr__(self, "quantization", None)

    @property
    def name(self) -> str:
        return " ".join(part for part in self._parts() if part)

    @property
    def folder_name(self) -> str:
        return "-".join(part for part in self._parts() if part)

    def _parts(self) -> tuple[str, ...]:
        return (self.label, self.backend, self.precision, self.quantization or "")

    def preference(self) -> tuple:
        """Lower is preferred when candidates tie within noise."""
        def rank(order: tuple[str, ...], name: str) -> int:
            return order.index(name) if name in order else len(order)

        return (rank(PRECISION_EXACTNESS, self.precision), rank(BACKEND_SIMPLICITY, self.backend),
                rank(QUANTIZATION_STABILITY, self.quantization or STATIC), self.name)


def specs_for(backend: Backend, precisions) -> list[CandidateSpec]:
    """One spec per precision of `backend`, in order; int8 once per quantization mode the backend builds."""
    return [CandidateSpec(backend.name, precision, quantization=mode)
            for precision in precisions
            for mode in (backend.quantization_modes if precision == "int8" else (None,))]


@dataclass
class Candidate:
    """One spec after its build: a verified bundle, or why the build's numerical check rejected it."""

    spec: CandidateSpec
    bundle: Path | None = None
    rejected: str | None = None
    measurement: "Measurement | None" = None
    comparison: PairedComparison | None = None  # against the reference, when the texts are labelled
    agreement_with_reference: float | None = None
    behind_fastest: Interval | None = None  # the fastest eligible candidate's speed over this one's, per round
    verdict: str = ""


@dataclass(frozen=True)
class Measurement:
    """What one candidate did on the scoring texts."""

    predicted_labels: tuple[int, ...]
    accuracy: Interval | None  # Wilson interval; None for texts without labels
    texts_per_second: Interval  # median round of passes over the texts, with its interval
    throughput_rounds: dict  # measurement.Timing.to_dict()
    latency_ms: dict | None = None  # batch 1: p50, p90, p99, mean over every call of every round
    latency_p50_ms: Interval | None = None  # the median of the rounds' p50s, with its interval

    def to_dict(self) -> dict:
        scored = {} if self.accuracy is None else {"accuracy": self.accuracy.value,
                                                   "accuracy_interval": self.accuracy.to_dict()}
        return {**scored, "texts_per_second": self.texts_per_second.value,
                "texts_per_second_interval": self.texts_per_second.to_dict(),
                "throughput_rounds": self.throughput_rounds,
                "latency_ms_batch1": None if self.latency_ms is None else
                {"median": self.latency_ms["p50"], **self.latency_ms},
                "latency_p50_ms_interval": None if self.latency_p50_ms is None else self.latency_p50_ms.to_dict(),
                "predicted_labels": list(self.predicted_labels)}

    @classmethod
    def from_dict(cls, data: dict) -> "Measurement":
        latency = data.get("latency_ms_batch1")
        return cls(predicted_labels=tuple(data["predicted_labels"]),
                   accuracy=None if data.get("accuracy_interval") is None else Interval.from_dict(data["accuracy_interval"]),
                   texts_per_second=Interval.from_dict(data["texts_per_second_interval"]),
                   throughput_rounds=data["throughput_rounds"],
                   latency_ms=None if latency is None else {key: value for key, value in latency.items()
                                                            if key != "median"},
                   latency_p50_ms=None if data.get("latency_p50_ms_interval") is None
                   else Interval.from_dict(data["latency_p50_ms_interval"]))


@dataclass(frozen=True)
class Choice:
    chosen: Candidate
    reference: Candidate  # the first measured candidate (fp32)
    tied: tuple[Candidate, ...]  # tied with the fastest within noise (the chosen among them); empty: a clear win
    gate: AccuracyGate | None  # None: accuracy not checked

    @property
    def tied_within_noise(self) -> bool:
        return len(self.tied) > 1

    @property
    def speedup_vs_reference(self) -> float:
        return (self.chosen.measurement.texts_per_second.value
                / self.reference.measurement.texts_per_second.value)


def build_candidates(specs: list[CandidateSpec], build_one: Callable[[CandidateSpec], Path],
                     on_built: Callable[[Candidate], None] | None = None) -> list[Candidate]:
    """Build each spec in order with `build_one(spec) -> bundle folder`; a NumericalCheckError rejects that
    candidate (recorded, the others go on); any other error stops the loop. on_built after each."""
    candidates = []
    for spec in specs:
        try:
            candidate = Candidate(spec, bundle=build_one(spec))
        except NumericalCheckError as error:
            candidate = Candidate(spec, rejected=error.problem)
        candidates.append(candidate)
        if on_built is not None:
            on_built(candidate)
    return candidates


def measure_candidates(candidates: list[Candidate], texts: Dataset, plan: TimingPlan, *, latency: bool = True,
                       device: str | None = None, on_step: Callable[[str], None] | None = None) -> None:
    """Score every built candidate on `texts` once, then time them together: passes over the texts
    (throughput hint) in interleaved rounds, growing while the leaders overlap; with `latency`, batch-1
    calls (latency hint, one text at a time, tokenizing included) the same way. Sets each `.measurement`."""
    step = on_step or (lambda message: None)
    built = [candidate for candidate in candidates if candidate.rejected is None]
    if not built:
        return
    gold = None if texts.labels is None else np.asarray(texts.labels)
    engines, batchers = {}, {}
    try:
        # Throughput is what a job gets: every context of the engine computing at once, through a Batcher
        # (Engine.predict computes on one context), started (every context warmed up) before the timing.
        for candidate in built:
            engine = engines[candidate.spec.name] = Engine.load(candidate.bundle, hint=THROUGHPUT, device=device)
            batchers[candidate.spec.name] = Batcher(engine).start()
        labels = {name: batcher.run(texts.inputs).labels for name, batcher in batchers.items()}
        step(f"timing {len(built)} candidate(s) in interleaved rounds of {plan.round_seconds:g} s over "
             f"{len(texts)} texts (at least {plan.min_rounds} rounds, at most {plan.max_seconds:g} s)")
        throughput = time_interleaved(
            {name: _passes(batcher, texts) for name, batcher in batchers.items()}, plan,
            until_separated=lambda timings: leaders_separated({name: t.rates for name, t in timings.items()}))
    finally:
        for batcher in batchers.values():
            batcher.close()
        for engine in engines.values():
            engine.close()
    latencies: dict[str, Timing] = {}
    if latency:
        engines = {}
        try:
            for candidate in built:
                engines[candidate.spec.name] = Engine.load(candidate.bundle, hint=LATENCY, device=device)
            step(f"timing batch-1 latency of {len(built)} candidate(s) in interleaved rounds")
            latencies = time_interleaved({name: _single_texts(engine, texts) for name, engine in engines.items()},
                                         plan)
        finally:
            for engine in engines.values():
                engine.close()
    for candidate in built:
        name = candidate.spec.name
        predicted = labels[name]
        timing = latencies.get(name)
        candidate.measurement = Measurement(
            predicted_labels=tuple(int(label) for label in predicted),
            accuracy=None if gold is None else wilson_interval(int((predicted == gold).sum()), len(gold)),
            texts_per_second=throughput[name].rate, throughput_rounds=throughput[name].to_dict(),
            latency_ms=None if timing is None else timing.call_percentiles(),
            latency_p50_ms=None if timing is None else timing.round_median_latency())


def _passes(batcher: Batcher, texts: Dataset) -> Callable[[], int]:
    def one_pass() -> int:
        batcher.run(texts.inputs)
        return len(texts)

    return one_pass


def _single_texts(engine: Engine, texts: Dataset) -> Callable[[], int]:
    inputs, position = texts.inputs, [0]

    def one_text() -> int:
        engine.predict([inputs[position[0] % len(inputs)]])
        position[0] += 1
        return 1

    return one_text


def choose(candidates: list[Candidate], gold, gate: AccuracyGate | None,
           not_eligible: Callable[[Candidate], str | None] = lambda candidate: None) -> Choice:
    """Compare every measured candidate with the reference (the first measured: fp32), give each its verdict
    and return the choice: among those within the budget (`gate`; None: accuracy not checked) that may be
    chosen, the fastest when it clears every other round by round (measurement.rank_by_speed), else, tied
    within noise, the most
    exact precision and simplest backend among those tied. NumericalCheckError when none may be chosen."""
    measured = [candidate for candidate in candidates if candidate.measurement is not None]
    if not measured:
        raise NumericalCheckError("every candidate was rejected: " + "; ".join(
            f"{candidate.spec.name}: {candidate.rejected}" for candidate in candidates),
            "deploy fp32 (--precision fp32), or check the model and data against the reasons given")
    reference = measured[0]
    reference_labels = np.asarray(reference.measurement.predicted_labels)
    for candidate in measured:
        labels = np.asarray(candidate.measurement.predicted_labels)
        candidate.agreement_with_reference = float((labels == reference_labels).mean())
        if gold is not None:
            candidate.comparison = compare_paired(labels, reference_labels, gold)
    within = [c for c in measured if gate is None or gate.within(c.comparison)]
    eligible = [c for c in within if not_eligible(c) is None]
    if not eligible:
        closest = [c for c in measured if not_eligible(c) is None]
        detail = f" ({gate.why_not(closest[0].comparison)})" if closest and gate is not None else ""
        raise NumericalCheckError(f"no candidate that may be chosen is within the {gate.budget_points:g}-point "
                                  f"accuracy budget{detail}", "raise --accuracy-budget, or use --precision auto")
    by_name = {c.spec.name: c for c in eligible}
    ranking = rank_by_speed({name: c.measurement.throughput_rounds["rates"] for name, c in by_name.items()},
                            lambda name: by_name[name].spec.preference())
    for name, candidate in by_name.items():
        candidate.behind_fastest = ranking.behind_fastest[name]
    chosen = by_name[ranking.chosen]
    tied = tuple(by_name[name] for name in ranking.tied) if ranking.by_preference else ()
    for candidate in candidates:
        candidate.verdict = _verdict(candidate, chosen, tied, within, gate, not_eligible)
    return Choice(chosen=chosen, reference=reference, tied=tied, gate=gate)


def _verdict(candidate: Candidate, chosen: Candidate, tied: tuple, within: list, gate, not_eligible) -> str:
    if candidate.rejected is not None:
        return f"rejected: {candidate.rejected}"
    if candidate.measurement is None:
        return "not measured"
    if candidate is chosen:
        if tied:
            others = ", ".join(c.spec.name for c in tied if c is not chosen)
            return f"chosen: tied within noise with {others}; the more exact precision or simpler backend"
        return ("chosen: fastest within the budget, clear of every other round by round" if gate is not None
                else "chosen: fastest, clear of every other round by round (accuracy not checked)")
    if candidate not in within:
        return f"rejected: {gate.why_not(candidate.comparison)}"
    reason = not_eligible(candidate)
    if reason is not None:
        return f"not chosen: {reason}"
    if candidate in tied:
        return f"tied within noise with {chosen.spec.name}, which is preferred"
    behind = candidate.behind_fastest
    return (f"slower: the fastest is {behind.value:.2f}x ({behind.low:.2f}-{behind.high:.2f}) as fast, round by "
            "round")
