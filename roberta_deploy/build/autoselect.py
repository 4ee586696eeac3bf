"""build --precision auto: build every precision the backend offers on this CPU, time them together on the
given data on this machine, and keep the fastest within a budget of fp32 (build/candidates.py: the loop and
the rule deploy uses too).

Accuracy is scored on texts held back from int8 calibration (never on texts a candidate was calibrated
on). Nothing is assumed about which precision is fast: on an AVX2-only CPU int8 can be slower than fp32
for a small model. The timings, intervals and accuracies go into the chosen bundle's manifest.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

from ..atomic import OutputFolder
from ..backends import get_backend
from ..backends.base import canonical_device
from ..data import read_dataset
from ..errors import UsageError
from ..manifest import KIND_BUNDLE, read_manifest, write_manifest
from ..measurement import AccuracyGate, TimingPlan, machine_load, texts_to_resolve
from ..precision import STATIC
from ..tasks import SINGLE_LABEL, Task
from .bundle import BuildOptions, BuildResult, build_engine, held_out_of_calibration
from .candidates import CandidateSpec, build_candidates, choose, measure_candidates, specs_for
from .export import ExportArtifact

GENERATED_MANIFEST_KEYS = ("schema_version", "kind", "created", "files", "library_versions")


def build_fastest_within_budget(options: BuildOptions, accuracy_budget_points: float,
                                on_step: Callable[[str], None] | None = None,
                                timing: TimingPlan = TimingPlan()) -> BuildResult:
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
    backend = get_backend(options.backend)
    specs = specs_for(backend, backend.precisions(device))  # fp32 first; int8 once per mode the backend has
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".auto-precision-", dir=Path(options.output).parent))
    try:
        def build_one(spec: CandidateSpec) -> Path:
            step(f"building {spec.name}")
            build_engine(replace(options, precision=spec.precision, quantization=spec.quantization or STATIC,
                                 output=scratch / spec.folder_name, overwrite=False), on_step)
            return scratch / spec.folder_name

        candidates = build_candidates(specs, build_one)
        measure_candidates(candidates, scoring, timing, latency=False, device=device, on_step=step)
        gate = AccuracyGate(accuracy_budget_points, len(scoring), texts_to_resolve(accuracy_budget_points))
        choice = choose(candidates, scoring.labels, gate)
        rows = []
        for candidate in candidates:
            row = {"precision": candidate.spec.precision, "verdict": candidate.verdict}
            if candidate.spec.quantization:
                row["quantization"] = candidate.spec.quantization
            if candidate.measurement is not None:
                measured = candidate.measurement.to_dict()
                row.update({key: measured[key] for key in ("accuracy", "accuracy_interval", "texts_per_second",
                                                           "texts_per_second_interval", "throughput_rounds")},
                           agreement_with_fp32=candidate.agreement_with_reference,
                           points_vs_fp32=candidate.comparison.points_vs_reference,
                           paired_vs_fp32=candidate.comparison.to_dict())
            rows.append(row)
        selection = {"accuracy_budget_points": accuracy_budget_points, "data": dataset.source,
                     "scored_texts": len(scoring), "scored_on": "texts held back from int8 calibration",
                     "fp32_accuracy": choice.reference.measurement.accuracy.value, "accuracy_gate": gate.to_dict(),
                     "timing": f"interleaved rounds of {timing.round_seconds:g} s (at least {timing.min_rounds}, "
                               f"at most {timing.max_seconds:g} s), throughput hint, on this machine; median round "
                               "with its interval", "machine_load": machine_load(), "candidates": rows,
                     "tied_within_noise": choice.tied_within_noise,
                     "reason": f"{choice.chosen.verdict}; within the {accuracy_budget_points:g}-point budget by "
                               f"{'accuracy' if gate.resolved else 'agreement with fp32'}"}
        chosen_dir = choice.chosen.bundle
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
