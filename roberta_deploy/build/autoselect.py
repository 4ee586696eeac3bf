"""build --precision auto: build every precision the backend offers on this CPU, time each on the given
data on this machine, and keep the fastest whose accuracy is within a budget of fp32.

Accuracy is scored on texts held back from int8 calibration (never on texts a candidate was calibrated
on). Nothing is assumed about which precision is fast: on an AVX2-only CPU int8 can be slower than fp32
for a small model. The timings and accuracies go into the chosen bundle's manifest.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import OutputFolder
from ..backends import get_backend
from ..backends.base import canonical_device
from ..data import Dataset, read_dataset
from ..tasks import SINGLE_LABEL, Task
from ..errors import NumericalCheckError, UsageError
from ..manifest import KIND_BUNDLE, read_manifest, write_manifest
from ..runtime.batcher import Batcher
from ..runtime.engine import THROUGHPUT, Engine
from .bundle import BuildOptions, BuildResult, build_engine, held_out_of_calibration
from .export import ExportArtifact

TIMING_REPEATS = 3  # passes over the scoring texts per candidate; the fastest pass counts (least disturbed)
GENERATED_MANIFEST_KEYS = ("schema_version", "kind", "created", "files", "library_versions")


def build_fastest_within_budget(options: BuildOptions, accuracy_budget_points: float,
                                on_step: Callable[[str], None] | None = None) -> BuildResult:
    step = on_step or (lambda message: None)
    if accuracy_budget_points < 0:
        raise UsageError(f"--accuracy-budget {accuracy_budget_points} is negative", "pass a budget in points, e.g. 0.5")
    if options.calibration_data is None:
        raise UsageError("--precision auto needs labelled texts to measure accuracy on",
                         "pass --calibration-data FILE with a label column")
    output = OutputFolder(options.output, overwrite=options.overwrite,
                          inputs=(options.export_dir, options.calibration_data))
    export = ExportArtifact.load(options.export_dir)
    task = Task.from_manifest(export.manifest)
    if task.kind != SINGLE_LABEL:
        raise UsageError(f"--precision auto chooses by accuracy, which a {task.kind} model does not have",
                         "pass --precision fp32, bf16 or int8: the build holds each to its tolerance against fp32")
    dataset = read_dataset(options.calibration_data, text_column=options.text_column,
                           label_column=options.label_column, label_names=export.manifest["labels"],
                           require_labels=True)
    scoring = held_out_of_calibration(dataset, options.calibration_samples, options.verification_samples)
    device = canonical_device(options.device)
    candidates = get_backend(options.backend).precisions(device)
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".auto-precision-", dir=Path(options.output).parent))
    try:
        measured, reference_labels = [], None
        for precision in candidates:  # fp32 first: the reference
            step(f"building {precision}")
            try:
                build_engine(replace(options, precision=precision, output=scratch / precision, overwrite=False),
                             on_step)
            except NumericalCheckError as error:
                measured.append({"precision": precision, "verdict": f"rejected: {error.problem}"})
                continue
            step(f"timing {precision} on {len(scoring)} held-back texts")
            row, labels = score_and_time(scratch / precision, scoring, device)
            reference_labels = labels if reference_labels is None else reference_labels
            measured.append({"precision": precision, **row, "agreement_with_fp32": agreement(labels, reference_labels)})
        chosen = choose_fastest_within_budget(measured, accuracy_budget_points)
        selection = {"accuracy_budget_points": accuracy_budget_points, "data": dataset.source,
                     "scored_texts": len(scoring), "scored_on": "texts held back from int8 calibration",
                     "fp32_accuracy": measured[0]["accuracy"], "timing": f"fastest of {TIMING_REPEATS} passes, "
                     "throughput hint, on this machine", "candidates": measured,
                     "reason": f"fastest precision within {accuracy_budget_points} accuracy points of fp32"}
        chosen_dir = scratch / chosen["precision"]
        manifest = read_manifest(chosen_dir, KIND_BUNDLE)
        content = {key: value for key, value in manifest.items() if key not in GENERATED_MANIFEST_KEYS}
        content["precision_selection"] = selection
        write_manifest(chosen_dir, KIND_BUNDLE, content)
        with output, output.staging() as work:
            for item in chosen_dir.iterdir():
                shutil.move(str(item), work / item.name)
        return BuildResult(Path(options.output), read_manifest(options.output, KIND_BUNDLE))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def choose_fastest_within_budget(measured: list[dict], accuracy_budget_points: float | None,
                                 not_eligible: Callable[[dict], str | None] = lambda row: None) -> dict:
    """Give every candidate row its verdict and return the chosen one: the fastest (texts_per_second)
    whose accuracy is at most `accuracy_budget_points` below the fp32 reference, the first timed row.

    Rows that already hold a verdict were rejected before timing. `not_eligible(row)` says why a row may
    not be chosen whatever its speed (e.g. another precision was asked for). A budget of None means
    nothing was scored (no labelled texts): the fastest eligible row wins. Sets points_vs_fp32 (negative:
    below fp32) on every scored row. NumericalCheckError when no eligible row is within the budget."""
    timed = [row for row in measured if "verdict" not in row]
    if accuracy_budget_points is not None:
        reference_accuracy = timed[0]["accuracy"]
        for row in timed:
            row["points_vs_fp32"] = (row["accuracy"] - reference_accuracy) * 100
    within = [row for row in timed if accuracy_budget_points is None
              or -row["points_vs_fp32"] <= accuracy_budget_points]
    eligible = [row for row in within if not_eligible(row) is None]
    if not eligible:
        closest = max((row for row in timed if not_eligible(row) is None and "accuracy" in row),
                      key=lambda row: row["accuracy"], default=None)
        detail = f" (the closest is {-closest['points_vs_fp32']:.2f} points below)" if closest else ""
        raise NumericalCheckError(f"no candidate that may be chosen is within {accuracy_budget_points} accuracy "
                                  f"points of fp32{detail}", "raise --accuracy-budget or use --precision auto")
    chosen = max(eligible, key=lambda row: row["texts_per_second"])
    within_what = "within the budget" if accuracy_budget_points is not None else "accuracy not checked"
    for row in timed:
        if row is chosen:
            row["verdict"] = ("chosen: fastest within the budget" if accuracy_budget_points is not None
                              else "chosen: fastest (accuracy not checked)")
        elif row not in within:
            row["verdict"] = f"rejected: more than {accuracy_budget_points} points below fp32"
        elif not_eligible(row) is not None:
            row["verdict"] = f"not chosen: {not_eligible(row)}"
        else:
            row["verdict"] = f"{within_what}, {row['texts_per_second']:.0f} texts/s is slower"
    return chosen


def agreement(labels: np.ndarray, reference_labels: np.ndarray) -> float:
    """Share of texts given the same label as the reference (fp32)."""
    return float((np.asarray(labels) == np.asarray(reference_labels)).mean())


def score_and_time(bundle_dir: Path, dataset: Dataset, device: str | None = None, passes: int = TIMING_REPEATS,
                   min_seconds: float = 0.0) -> tuple[dict, np.ndarray]:
    """The fastest of at least `passes` timed passes over `dataset` (after the warm-up), more until
    `min_seconds` have passed (a small set takes milliseconds a pass: one disturbance would decide), and,
    when it is labelled, the accuracy; and the predicted label ids (int64 (texts,)) to compare candidates by."""
    engine = Engine.load(bundle_dir, hint=THROUGHPUT, device=device)
    with Batcher(engine) as batcher:  # started: every context warmed up, outside the timing
        seconds = []
        begun = time.perf_counter()
        while len(seconds) < passes or time.perf_counter() - begun < min_seconds:
            started = time.perf_counter()
            predictions = batcher.run(dataset.inputs)
            seconds.append(time.perf_counter() - started)
    best = min(seconds)
    row = {"seconds": best, "texts_per_second": len(dataset) / best, "pass_seconds": seconds}
    if dataset.labels is not None:
        row = {"accuracy": float((predictions.labels == np.asarray(dataset.labels)).mean()), **row}
    return row, predictions.labels
