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
from ..errors import NumericalCheckError, UsageError
from ..manifest import KIND_BUNDLE, read_manifest, write_manifest
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
    dataset = read_dataset(options.calibration_data, text_column=options.text_column,
                           label_column=options.label_column, label_names=export.manifest["labels"],
                           require_labels=True)
    scoring = held_out_of_calibration(dataset, options.calibration_samples, options.verification_samples)
    device = canonical_device(options.device)
    candidates = get_backend(options.backend).precisions(device)
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".auto-precision-", dir=Path(options.output).parent))
    try:
        measured = []
        for precision in candidates:  # fp32 first: the reference
            step(f"building {precision}")
            try:
                build_engine(replace(options, precision=precision, output=scratch / precision, overwrite=False),
                             on_step)
            except NumericalCheckError as error:
                measured.append({"precision": precision, "verdict": f"rejected: {error.problem}"})
                continue
            step(f"timing {precision} on {len(scoring)} held-back texts")
            measured.append({"precision": precision, **score_and_time(scratch / precision, scoring, device)})
        reference_accuracy = measured[0]["accuracy"]
        for row in measured:
            if "accuracy" in row:
                # Negative: below fp32. The budget bounds how far below.
                row["points_vs_fp32"] = (row["accuracy"] - reference_accuracy) * 100
        within = [row for row in measured if "accuracy" in row and -row["points_vs_fp32"] <= accuracy_budget_points]
        chosen = max(within, key=lambda row: row["texts_per_second"])  # fp32 is always within
        for row in measured:
            if "verdict" in row:
                continue
            if row is chosen:
                row["verdict"] = "chosen: fastest within the budget"
            elif row in within:
                row["verdict"] = f"within the budget, {row['texts_per_second']:.0f} texts/s is slower"
            else:
                row["verdict"] = f"rejected: more than {accuracy_budget_points} points below fp32"
        selection = {"accuracy_budget_points": accuracy_budget_points, "data": dataset.source,
                     "scored_texts": len(scoring), "scored_on": "texts held back from int8 calibration",
                     "fp32_accuracy": reference_accuracy, "timing": f"fastest of {TIMING_REPEATS} passes, "
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


def score_and_time(bundle_dir: Path, dataset: Dataset, device: str | None = None) -> dict:
    """Accuracy on `dataset` and the fastest of TIMING_REPEATS timed passes over it (after the warm-up)."""
    with Engine.load(bundle_dir, hint=THROUGHPUT, device=device) as engine:
        engine.batcher  # started: every context warmed up, outside the timing
        passes = []
        for _ in range(TIMING_REPEATS):
            started = time.perf_counter()
            predictions = engine.predict(dataset.texts)
            passes.append(time.perf_counter() - started)
    accuracy = float((predictions.labels == np.asarray(dataset.labels)).mean())
    best = min(passes)
    return {"accuracy": accuracy, "seconds": best, "texts_per_second": len(dataset) / best,
            "pass_seconds": passes}
