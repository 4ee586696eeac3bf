"""deploy: a checkpoint -> the fastest bundle this machine computes within an accuracy budget, with the
evidence written down (deployment.json, deployment.md, report.html), ready to be served.

Everything lands in one output folder that a later deploy reuses: the export, one bundle per candidate
(backend x precision) and each candidate's measurements, each recorded in deployment.json with the
settings that made it. An artifact whose settings differ is rebuilt and the step says why; a folder
holding another model's deployment is refused unless `overwrite`. Serving is the caller's step (cli/deploy.py).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..atomic import MARKER_FILE, OutputFolder, atomic_write_json, atomic_write_text, remove_abandoned_staging
from ..backends import get_backend, offered_precisions
from ..build.bundle import BuildOptions, build_engine, held_out_of_calibration
from ..build.candidates import (Candidate, CandidateSpec, Choice, Measurement, build_candidates, choose,
                                measure_candidates, specs_for)
from ..build.checkpoint import checkpoint_hash, resolve_checkpoint
from ..build.export import DEFAULT_OPSET, ExportArtifact, ExportOptions, export_model
from ..data import Dataset, read_dataset
from ..defaults import AUTO_BACKEND, AUTO_BACKENDS, DEFAULT_MAX_SEQ_LENGTH, DEMO_SAMPLES_PATH
from ..errors import (BundleError, NumericalCheckError, OutputExistsError, RobertaDeployError, UnsupportedPrecisionError,
                      UsageError)
from ..manifest import MANIFEST_FILE, file_sha256
from ..machine import this_cpu
from ..measurement import AccuracyGate, TimingPlan, machine_load, texts_to_resolve
from ..precision import AUTO, STATIC, canonical_precision
from .deploy_report import deployment_markdown
from .deployment_record import (DEPLOYMENT_JSON, KIND, SCHEMA_VERSION, bundle_changed, previous_deployment,
                                why_not_reusable)
from .perf import host_description
from .report import REPORT_HTML, deployment_report_html
from .students import DEFAULT_DISTILL_EPOCHS, STUDENTS_DIR, prepare_students
from ..tasks import SINGLE_LABEL, Task

DEPLOYMENT_MARKDOWN = "deployment.md"
EXPORT_DIR = "export"
BUNDLES_DIR = "bundles"
OWN_ENTRIES = (EXPORT_DIR, BUNDLES_DIR, STUDENTS_DIR, DEPLOYMENT_JSON, DEPLOYMENT_MARKDOWN, REPORT_HTML)
VERIFICATION_SAMPLES = BuildOptions.verification_samples


@dataclass(frozen=True)
class DeployOptions:
    model: str  # checkpoint folder or hub id
    output: Path
    data: Path | None = None  # labelled texts: int8 calibration, and accuracy on the texts held back from it
    accuracy_budget: float = 0.5  # accuracy points below fp32 a faster candidate may lose
    backend: str = AUTO_BACKEND  # auto: every CPU engine installed; or one backend
    precision: str | None = None  # None: auto with data, fp32 without; or one precision, or auto
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    calibration_samples: int = 128
    timing_rounds: int = TimingPlan.min_rounds  # at least this many interleaved rounds of every candidate
    perf_seconds: float = TimingPlan.round_seconds  # each candidate's turn in a round (throughput, then latency)
    timing_cap: float = TimingPlan.max_seconds  # rounds grow while the leaders overlap, up to this many seconds
    overwrite: bool = False  # replace a deployment of another model in `output`
    distill: tuple[int, ...] = ()  # layer counts of students distilled from the model that join the candidates
    distill_epochs: int = DEFAULT_DISTILL_EPOCHS


@dataclass(frozen=True)
class Plan:
    """What a deploy will do, known before any build (plan_deployment)."""

    options: DeployOptions
    precision: str  # auto, or the one precision asked for
    checkpoint: Path
    model_sha256: str
    dataset: Dataset | None  # labelled, or None: accuracy is not checked
    data_sha256: str | None  # of --data: what calibrated and scored each candidate
    scoring: Dataset  # what every candidate is timed (and, when labelled, scored) on: never calibration texts
    candidates: tuple[CandidateSpec, ...]  # the first is the fp32 reference
    previous: dict | None  # deployment.json of an earlier deploy into the output
    output: OutputFolder
    stale_record: str | None = None  # why the folder's deployment.json was not used (damaged, wrong types)


def plan_deployment(options: DeployOptions) -> Plan:
    """Every check that can fail before a build: flags, the model, the data's labels, the output. Writes nothing."""
    budget = options.accuracy_budget
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 0:
        raise UsageError(f"--accuracy-budget {budget} must be a finite number of points, 0 or more",
                         "pass e.g. --accuracy-budget 0.5")
    if (isinstance(options.timing_rounds, bool) or not isinstance(options.timing_rounds, int)
            or options.timing_rounds < 1):
        raise UsageError(f"--timing-rounds {options.timing_rounds} must be a positive whole number",
                         "pass e.g. --timing-rounds 5")
    for flag, seconds in (("--perf-seconds", options.perf_seconds), ("--timing-cap", options.timing_cap)):
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise UsageError(f"{flag} {seconds} must be a positive number of seconds",
                             "pass e.g. --perf-seconds 0.5 --timing-cap 60")
    precision = canonical_precision(options.precision or (AUTO if options.data else "fp32"), allow_auto=True)
    if precision == AUTO and options.data is None:
        raise UsageError("--precision auto needs labelled texts to keep accuracy within the budget",
                         "pass --data FILE with a label column, or --precision fp32")
    candidates = _candidates(options.backend, precision, scored=options.data is not None)
    checkpoint = resolve_checkpoint(options.model)
    _check_distill(options, checkpoint)
    if options.data is not None:
        task = _task_of(checkpoint)
        if task is not None and task.kind != SINGLE_LABEL:
            raise UsageError(f"deploy keeps the fastest bundle within an accuracy budget, and a {task.kind} model "
                             "has no accuracy", "deploy it without --data (fp32, or --precision int8/bf16: each "
                             "build is still held to its tolerance against fp32), or use export, build and eval")
        dataset = read_dataset(options.data, label_names=_label_names(checkpoint), require_labels=True)
        scoring = held_out_of_calibration(dataset, options.calibration_samples, VERIFICATION_SAMPLES)
    else:  # timing only: the sample reviews' labels belong to the demo model, not to this one
        dataset, scoring = None, replace(read_dataset(DEMO_SAMPLES_PATH), labels=None)
    output = OutputFolder(options.output, overwrite=True, inputs=(options.model, checkpoint, options.data))
    model_sha256 = checkpoint_hash(checkpoint)
    previous, stale_record = previous_deployment(Path(options.output))
    if previous is not None and previous.get("model_sha256") != model_sha256 and not options.overwrite:
        raise OutputExistsError(f"{options.output} holds the deployment of another model ({previous.get('model')}, "
                                f"sha256 {str(previous.get('model_sha256'))[:12]}), not of {options.model} "
                                f"(sha256 {model_sha256[:12]})",
                                "choose another --output, or pass --overwrite to replace that deployment")
    return Plan(options=options, precision=precision, checkpoint=checkpoint, model_sha256=model_sha256,
                dataset=dataset, data_sha256=file_sha256(options.data) if options.data else None, scoring=scoring,
                candidates=candidates, previous=previous, output=output, stale_record=stale_record)


def _check_distill(options: DeployOptions, checkpoint: Path) -> None:
    """Students are judged on accuracy against the model, so they need labelled data, and fewer layers."""
    if not options.distill:
        return
    if options.data is None:
        raise UsageError("--distill needs labelled texts: students learn from them and are judged on accuracy",
                         "pass --data FILE with a label column")
    if options.distill_epochs < 1:
        raise UsageError("--distill-epochs must be at least 1", "pass e.g. --distill-epochs 3")
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
        layers = int(config.get("num_hidden_layers") or config.get("n_layers"))
    except (OSError, ValueError, TypeError):
        return  # the export names what is wrong with the config
    if max(options.distill) >= layers:
        raise UsageError(f"--distill {max(options.distill)} is not below the model's {layers} layers",
                         "give students fewer layers than the model")


def _candidates(backend_name: str, precision: str, scored: bool) -> tuple[CandidateSpec, ...]:
    """(backend, precision, int8 mode) specs to build, the fp32 reference first; what each backend offers is
    asked of this machine. With one precision asked for and labelled data, fp32 is built too: the reference."""
    if backend_name.strip().lower() == AUTO_BACKEND:
        names = []
        for name in AUTO_BACKENDS:
            try:
                names.append(get_backend(name).name)
            except UsageError:  # not installed: deploy with the others
                continue
        if not names:
            raise UsageError("no CPU backend is installed", "pip install 'roberta-deploy[openvino]'")
    else:
        names = [get_backend(backend_name).name]
    candidates: list[CandidateSpec] = []
    for name in names:
        offered = offered_precisions(name)
        wanted = offered if precision == AUTO else [precision] if precision in offered else []
        candidates += specs_for(get_backend(name), wanted)
    if not candidates:
        reason = get_backend(names[0]).unsupported_reason(precision)
        raise UnsupportedPrecisionError(f"{' and '.join(names)} cannot build {precision} here", reason)
    if scored and not any(candidate.precision == "fp32" for candidate in candidates):
        candidates.insert(0, CandidateSpec(candidates[0].backend, "fp32"))
    fp32_first = [candidate for candidate in candidates if candidate.precision == "fp32"][:1]
    return tuple(fp32_first + [candidate for candidate in candidates if candidate not in fp32_first])


def _label_names(checkpoint: Path) -> list[str] | None:
    """The checkpoint's label names in id order (config.json's id2label), so --data may name labels."""
    try:
        id2label = json.loads((checkpoint / "config.json").read_text(encoding="utf-8")).get("id2label") or {}
        return [str(id2label[key]) for key in sorted(id2label, key=int)]
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # the export names what is wrong with the config


def _task_of(checkpoint: Path) -> Task | None:
    """The task config.json describes (export records it; this is before any export), or None when the
    config cannot be read (the export names the problem)."""
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
        num_labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
        return Task.from_config(config.get("problem_type"), num_labels)
    except (OSError, ValueError, TypeError, AttributeError, RobertaDeployError):
        return None


def _clean_up_after_killed_runs(folder: Path, step) -> None:
    """Staging folders that killed runs left in the deployment folder and its bundles folder (an export or a
    build stopped by SIGKILL or the out-of-memory killer), removed once this run holds the folder's lock."""
    removed = remove_abandoned_staging(folder) + [f"{BUNDLES_DIR}/{name}" for name in
                                                  remove_abandoned_staging(folder / BUNDLES_DIR)]
    if removed:
        step(f"removed what interrupted runs left: {', '.join(removed)}")


def prepare_deployment(plan: Plan, on_step: Callable[[str], None] | None = None) -> dict:
    """Export (or reuse), build and measure every candidate (or reuse them), choose, and write the reports.
    Returns what deployment.json holds; the chosen bundle is `plan.options.output / report["choice"]["bundle"]`."""
    step = on_step or (lambda message: None)
    options = plan.options
    folder = Path(options.output)
    with plan.output:  # locked against a second writer until the reports are written
        _clean_up_after_killed_runs(folder, step)
        if plan.stale_record is not None:
            step(f"{plan.stale_record}: treating it as stale; every candidate is built and measured again")
        if plan.previous is not None and plan.previous.get("model_sha256") != plan.model_sha256:
            step(f"replacing the deployment of {plan.previous.get('model')} in {folder} (--overwrite)")
            for name in OWN_ENTRIES:
                path = folder / name
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
            previous = None
        else:
            previous = plan.previous
        folder.mkdir(exist_ok=True)
        report = {"schema_version": SCHEMA_VERSION, "kind": KIND, "model": options.model,
                  "model_path": str(plan.checkpoint), "model_sha256": plan.model_sha256,
                  "settings": _settings(plan), "accuracy_checked": plan.dataset is not None}
        # First of all: this folder is a deployment (with every record it had), whatever interrupts what follows.
        atomic_write_json(folder / DEPLOYMENT_JSON, {**(previous or {}), **report})
        # The marker tells the other commands' --overwrite that these names are ours.
        atomic_write_json(folder / MARKER_FILE, {"tool": "roberta-deploy", "entries": list(OWN_ENTRIES)})
        export, report["export"] = _export(plan, folder / EXPORT_DIR, step)
        scoring = plan.scoring
        report.update(scored_texts=len(scoring), scored_on=("texts of --data held back from int8 calibration"
                                                            if plan.dataset is not None else
                                                            f"the bundled sample reviews ({DEMO_SAMPLES_PATH.name}), "
                                                            "texts only: accuracy not checked"))
        earlier = {Path(row["bundle"]).name: row for row in (previous or {}).get("candidates", [])
                   + (previous or {}).get("other_candidates", []) if previous.get("schema_version") == SCHEMA_VERSION}
        specs = list(plan.candidates)  # the model's own first: its fp32 is the reference
        if options.distill:
            students = prepare_students(plan.checkpoint, plan.dataset, scoring, options.distill, folder / STUDENTS_DIR,
                                        options.max_seq_length, options.distill_epochs, step)
            report["students"] = [student.record for student in students]
            # A student is one more spec per backend and precision, built from its own export.
            specs += [replace(spec, export_dir=student.export.folder, label=student.name)
                      for student in students for spec in plan.candidates]
        # Records of candidates this run does not try (another --backend or --precision) are kept, so that
        # switching back reuses their bundles too.
        wanted = {spec.folder_name for spec in specs}
        report["other_candidates"] = [row for key, row in earlier.items() if key not in wanted]
        report["candidates"] = []

        def built(candidate: Candidate) -> None:
            # Progress, with the earlier records of the candidates still to come: an interrupted deploy
            # resumes from here and loses nothing it had.
            report["candidates"].append(records[candidate.spec.folder_name])
            done = {Path(row["bundle"]).name for row in report["candidates"]}
            to_come = [row for key, row in earlier.items() if key in wanted and key not in done]
            atomic_write_json(folder / DEPLOYMENT_JSON, {**report, "candidates": report["candidates"] + to_come})

        records: dict[str, dict] = {}
        candidates = build_candidates(specs, lambda spec: _build_one(
            plan, export, spec, earlier.get(spec.folder_name), records, step), on_built=built)
        _measure(plan, candidates, earlier, records, step)
        choice = _choose(plan, candidates)
        report["candidates"] = [_with_verdict(records[c.spec.folder_name], c) for c in candidates]
        report["choice"] = _choice_record(plan, choice)
        report["machine"] = {**host_description(), **machine_load(), "backend_capabilities": {
            name: list(get_backend(name).capabilities()) for name in dict.fromkeys(spec.backend for spec in plan.candidates)}}
        atomic_write_json(folder / DEPLOYMENT_JSON, report)
        atomic_write_text(folder / DEPLOYMENT_MARKDOWN, deployment_markdown(report))
        atomic_write_text(folder / REPORT_HTML, deployment_report_html(report))
    return report


def _settings(plan: Plan) -> dict:
    options = plan.options
    return {"precision": plan.precision, "backend": options.backend,
            "candidates": [spec.name for spec in plan.candidates],
            "accuracy_budget_points": options.accuracy_budget, "max_seq_length": options.max_seq_length,
            "data": str(options.data) if options.data else None,
            "data_sha256": plan.data_sha256,
            "calibration_samples": options.calibration_samples, "timing_rounds": options.timing_rounds,
            "perf_seconds": options.perf_seconds, "timing_cap": options.timing_cap, "distill": list(options.distill),
            "distill_epochs": options.distill_epochs if options.distill else None}


def _export(plan: Plan, folder: Path, step) -> tuple[ExportArtifact, dict]:
    """The export in `folder` when it was made from this model with these settings; else a new one."""
    options = plan.options
    export, why = _reusable_export(plan, folder) if folder.exists() else (None, None)
    if export is not None:
        step(f"reusing the export in {folder} (same model sha256 {plan.model_sha256[:12]}, same settings)")
        return export, _export_record(export, "reused")
    step(f"exporting {options.model}" + (f" again: the export in {folder} {why}" if why else ""))
    export = export_model(ExportOptions(model=options.model, output=folder, max_seq_length=options.max_seq_length,
                                        check_data=options.data, overwrite=True), on_step=step)
    return export, _export_record(export, "exported")


def _reusable_export(plan: Plan, folder: Path) -> tuple[ExportArtifact | None, str | None]:
    """(the export in `folder`, None) when it can be reused, else (None, why not)."""
    try:
        export = ExportArtifact.load(folder)  # every file against its hash
    except BundleError as error:
        return None, f"is unusable ({error.problem})"
    manifest = export.manifest
    if manifest["source_model_sha256"] != plan.model_sha256:
        return None, "was made from another checkpoint"
    if manifest["max_seq_length"] != plan.options.max_seq_length:
        return None, f"was made with --max-seq-length {manifest['max_seq_length']}, not {plan.options.max_seq_length}"
    if manifest["opset"] != DEFAULT_OPSET:
        return None, f"has opset {manifest['opset']}, not {DEFAULT_OPSET}"
    return export, None


def _export_record(export: ExportArtifact, status: str) -> dict:
    return {"folder": EXPORT_DIR, "status": status, "created": export.manifest["created"],
            "manifest_sha256": file_sha256(export.folder / MANIFEST_FILE),
            "onnx_vs_pytorch": export.manifest["checks"]["onnx_vs_pytorch"]}


def _build_one(plan: Plan, export: ExportArtifact, spec: CandidateSpec, earlier: dict | None,
               records: dict[str, dict], step) -> Path:
    """Reuse or build one candidate's bundle, recording which in `records[spec.folder_name]`; returns the bundle.
    NumericalCheckError (now, or recorded by an earlier build with the same settings) rejects it."""
    options = plan.options
    name = spec.folder_name
    bundle = Path(options.output) / BUNDLES_DIR / name
    build_settings = {"backend": spec.backend, "precision": spec.precision,
                      "export_manifest_sha256": file_sha256((spec.export_dir or export.folder) / MANIFEST_FILE),
                      "calibration_data_sha256": plan.data_sha256,
                      "calibration_samples": options.calibration_samples,
                      "verification_samples": VERIFICATION_SAMPLES}
    record = records[name] = {"backend": spec.backend, "precision": spec.precision, "bundle": f"{BUNDLES_DIR}/{name}",
                              "build_settings": build_settings}
    if spec.quantization:  # only where not the default, so the records of static int8 bundles stay reusable
        build_settings["quantization"] = record["quantization"] = spec.quantization
    if spec.label:
        record["label"] = spec.label
    why = why_not_reusable(earlier, "build_settings", build_settings)
    if why is None and earlier.get("rejected"):
        step(f"{name}: rejected before with the same settings ({earlier['rejected']})")
        record.update(build="reused", status="reused (rejected)", rejected=earlier["rejected"])
        raise NumericalCheckError(earlier["rejected"], "")
    if why is None:
        why = bundle_changed(bundle, earlier)
    if why is None:
        step(f"{name}: reusing {bundle} (same export, settings and files)")
        record["build"] = "reused"
    else:
        step(f"{name}: building ({why})")
        try:
            build_engine(BuildOptions(export_dir=spec.export_dir or export.folder, output=bundle, backend=spec.backend,
                                      precision=spec.precision, quantization=spec.quantization or STATIC,
                                      calibration_data=options.data,
                                      calibration_samples=options.calibration_samples,
                                      verification_samples=VERIFICATION_SAMPLES, overwrite=True), on_step=step)
        except NumericalCheckError as error:
            record.update(build="built", status="built, rejected", rejected=error.problem)
            raise
        record["build"] = "built"
    manifest_path = bundle / MANIFEST_FILE
    record["bundle_manifest_sha256"] = file_sha256(manifest_path)
    record["check"] = json.loads(manifest_path.read_text(encoding="utf-8"))["checks"]["against_fp32_reference"]
    return bundle


def _measure(plan: Plan, candidates: list[Candidate], earlier: dict[str, dict], records: dict[str, dict],
             step) -> None:
    """Every built candidate is timed in the same interleaved rounds, so measurements are reused only all
    together: when every candidate's bundle, texts, timing settings and CPU are those recorded."""
    options = plan.options
    built = [candidate for candidate in candidates if candidate.rejected is None]
    for candidate in built:
        records[candidate.spec.folder_name]["measurement_settings"] = {
            "bundle_manifest_sha256": records[candidate.spec.folder_name]["bundle_manifest_sha256"],
            "scored_texts": len(plan.scoring), "scored_data_sha256": plan.data_sha256,
            "timed_with": sorted(c.spec.folder_name for c in built), "timing_rounds": options.timing_rounds,
            "perf_seconds": options.perf_seconds, "timing_cap": options.timing_cap, "cpu": this_cpu()}
    reusable = all(why_not_reusable(earlier.get(c.spec.folder_name), "measurement_settings",
                                     records[c.spec.folder_name]["measurement_settings"]) is None
                   and "measured" in earlier[c.spec.folder_name] for c in built)
    if reusable:
        step("reusing every candidate's measurements (same bundles, texts and timing on this CPU)")
        for candidate in built:
            candidate.measurement = Measurement.from_dict(earlier[candidate.spec.folder_name]["measured"])
    else:
        measure_candidates(built, plan.scoring, TimingPlan(round_seconds=options.perf_seconds,
                                                           min_rounds=options.timing_rounds,
                                                           max_seconds=options.timing_cap,
                                                           warmup_seconds=options.perf_seconds), on_step=step)
    for candidate in built:
        record = records[candidate.spec.folder_name]
        record["measurement"] = "reused" if reusable else "measured"
        record["measured"] = candidate.measurement.to_dict()
        record["status"] = {("reused", True): "reused", ("built", True): "built, measurements reused",
                            ("reused", False): "reused, measured again",
                            ("built", False): "built, measured"}[record["build"], reusable]


def _choose(plan: Plan, candidates: list[Candidate]) -> Choice:
    """Verdicts on every candidate (recomputed each run: the budget may have changed) and the choice."""
    gold = plan.scoring.labels if plan.dataset is not None else None
    gate = (AccuracyGate(plan.options.accuracy_budget, len(plan.scoring), texts_to_resolve(plan.options.accuracy_budget))
            if gold is not None else None)
    asked = plan.precision

    def not_eligible(candidate: Candidate) -> str | None:
        return None if asked == AUTO or candidate.spec.precision == asked else f"--precision {asked} was asked for"

    return choose(candidates, gold, gate, not_eligible)


def _with_verdict(record: dict, candidate: Candidate) -> dict:
    record = {**record, "verdict": candidate.verdict}
    if candidate.agreement_with_reference is not None:
        record["agreement_with_fp32"] = candidate.agreement_with_reference
    if candidate.behind_fastest is not None:
        record["fastest_vs_this"] = candidate.behind_fastest.to_dict()
    if candidate.comparison is not None:
        record["points_vs_fp32"] = candidate.comparison.points_vs_reference
        record["paired_vs_fp32"] = candidate.comparison.to_dict()
    return record


def _choice_record(plan: Plan, choice: Choice) -> dict:
    chosen, reference = choice.chosen, choice.reference
    rate = chosen.measurement.texts_per_second
    budget, asked = plan.options.accuracy_budget, plan.precision
    if choice.gate is None:
        reason = (f"accuracy was not checked (no --data), so {asked} was kept as asked; of the backends, "
                  "the fastest on this machine")
    elif asked == AUTO:
        measure = ("accuracy" if choice.gate.resolved else "agreement with fp32")
        reason = f"within the {budget:g}-point budget by {measure} on {len(plan.scoring)} held-back texts"
    else:
        reason = f"--precision {asked} was asked for, and it is within the {budget:g}-point budget"
    rounds = chosen.measurement.throughput_rounds["rounds"]
    if choice.tied_within_noise:
        speed = (f"tied within noise with {', '.join(c.spec.name for c in choice.tied if c is not chosen)} "
                 f"(after {rounds} interleaved rounds the fastest does not clear them round by round), so the more "
                 f"exact precision and simpler backend: {rate.value:,.0f} texts/s ({rate.low:,.0f}-{rate.high:,.0f})")
    else:
        speed = (f"the fastest, clear of every other round by round after {rounds} interleaved rounds: "
                 f"{rate.value:,.0f} texts/s ({rate.low:,.0f}-{rate.high:,.0f}), {choice.speedup_vs_reference:.2f}x "
                 f"{reference.spec.name}")
    return {"label": chosen.spec.label, "backend": chosen.spec.backend, "precision": chosen.spec.precision,
            **({"quantization": chosen.spec.quantization} if chosen.spec.quantization else {}),
            "bundle": f"{BUNDLES_DIR}/"
            f"{chosen.spec.folder_name}", "texts_per_second": rate.value,
            "speedup_vs_reference": choice.speedup_vs_reference, "reference": reference.spec.name,
            "tied_within_noise": choice.tied_within_noise, "tied_with": [c.spec.name for c in choice.tied],
            "accuracy_gate": None if choice.gate is None else choice.gate.to_dict(),
            "reason": f"{reason}; {speed}"}
