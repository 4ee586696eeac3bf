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

from ..atomic import MARKER_FILE, OutputFolder, atomic_write_json, atomic_write_text
from ..backends import get_backend, offered_precisions
from ..build.autoselect import TIMING_REPEATS, agreement, choose_fastest_within_budget, score_and_time
from ..build.bundle import BuildOptions, build_engine, held_out_of_calibration
from ..build.checkpoint import checkpoint_hash, resolve_checkpoint
from ..build.export import DEFAULT_OPSET, ExportArtifact, ExportOptions, export_model
from ..data import Dataset, read_dataset
from ..defaults import AUTO_BACKEND, AUTO_BACKENDS, DEFAULT_MAX_SEQ_LENGTH, DEMO_SAMPLES_PATH
from ..errors import (BundleError, NumericalCheckError, OutputExistsError, RobertaDeployError,
                     UnsupportedPrecisionError, UsageError)
from ..manifest import KIND_BUNDLE, MANIFEST_FILE, file_sha256, read_manifest
from ..machine import this_cpu
from .perf import PerfOptions, host_description, run_benchmark
from ..precision import AUTO, canonical_precision
from .report import REPORT_HTML, deployment_report_html
from .students import DEFAULT_DISTILL_EPOCHS, STUDENTS_DIR, prepare_students
from ..tasks import SINGLE_LABEL, Task

DEPLOYMENT_JSON = "deployment.json"
DEPLOYMENT_MARKDOWN = "deployment.md"
EXPORT_DIR = "export"
BUNDLES_DIR = "bundles"
OWN_ENTRIES = (EXPORT_DIR, BUNDLES_DIR, STUDENTS_DIR, DEPLOYMENT_JSON, DEPLOYMENT_MARKDOWN, REPORT_HTML)
TEACHER = "teacher"  # the model of the candidates built from --model itself; students are "student-K"
KIND = "deployment"
SCHEMA_VERSION = 1
VERIFICATION_SAMPLES = BuildOptions.verification_samples
# At least this many batch-1 calls, however short --perf-seconds: on a busy machine a short run can end
# before its thread made one call.
LATENCY_MIN_CALLS = 20


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
    timing_passes: int = TIMING_REPEATS  # at least this many passes over the scored texts; the fastest counts
    perf_seconds: float = 2.0  # timed seconds per candidate of passes over the scored texts, and of batch-1 latency
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
    candidates: tuple[tuple[str, str], ...]  # (backend, precision); the first is the fp32 reference
    previous: dict | None  # deployment.json of an earlier deploy into the output
    output: OutputFolder


def plan_deployment(options: DeployOptions) -> Plan:
    """Every check that can fail before a build: flags, the model, the data's labels, the output. Writes nothing."""
    budget = options.accuracy_budget
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 0:
        raise UsageError(f"--accuracy-budget {budget} must be a finite number of points, 0 or more",
                         "pass e.g. --accuracy-budget 0.5")
    if options.timing_passes < 1 or not (math.isfinite(options.perf_seconds) and options.perf_seconds > 0):
        raise UsageError("--timing-passes and --perf-seconds must be positive", "pass e.g. --timing-passes 3 "
                                                                                "--perf-seconds 2")
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
    previous = _previous_deployment(Path(options.output))
    if previous is not None and previous.get("model_sha256") != model_sha256 and not options.overwrite:
        raise OutputExistsError(f"{options.output} holds the deployment of another model ({previous.get('model')}, "
                                f"sha256 {str(previous.get('model_sha256'))[:12]}), not of {options.model} "
                                f"(sha256 {model_sha256[:12]})",
                                "choose another --output, or pass --overwrite to replace that deployment")
    return Plan(options=options, precision=precision, checkpoint=checkpoint, model_sha256=model_sha256,
                dataset=dataset, data_sha256=file_sha256(options.data) if options.data else None, scoring=scoring,
                candidates=candidates, previous=previous, output=output)


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


def _candidates(backend_name: str, precision: str, scored: bool) -> tuple[tuple[str, str], ...]:
    """(backend, precision) pairs to build, the fp32 reference first; what each backend offers is asked of
    this machine. With one precision asked for and labelled data, fp32 is built too: the reference."""
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
    candidates = []
    for name in names:
        offered = offered_precisions(name)
        if precision == AUTO:
            candidates += [(name, offered_precision) for offered_precision in offered]
        elif precision in offered:
            candidates.append((name, precision))
    if not candidates:
        reason = get_backend(names[0]).unsupported_reason(precision)
        raise UnsupportedPrecisionError(f"{' and '.join(names)} cannot build {precision} here", reason)
    if scored and not any(candidate_precision == "fp32" for _, candidate_precision in candidates):
        candidates.insert(0, (candidates[0][0], "fp32"))
    fp32_first = sorted(candidates, key=lambda candidate: candidate[1] != "fp32")[:1]
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


def _previous_deployment(folder: Path) -> dict | None:
    """deployment.json of an earlier deploy into `folder`; None for a missing or empty folder. A folder
    with other content is refused: deploy updates its folder in place and must not mix into another's."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    try:
        previous = json.loads((folder / DEPLOYMENT_JSON).read_text(encoding="utf-8"))
        if isinstance(previous, dict) and previous.get("kind") == KIND:
            return previous
    except (OSError, ValueError):
        pass
    raise OutputExistsError(f"output folder {folder} is not a deployment (it has no readable {DEPLOYMENT_JSON})",
                            "choose another --output folder for deploy")


def prepare_deployment(plan: Plan, on_step: Callable[[str], None] | None = None) -> dict:
    """Export (or reuse), build and measure every candidate (or reuse them), choose, and write the reports.
    Returns what deployment.json holds; the chosen bundle is `plan.options.output / report["choice"]["bundle"]`."""
    step = on_step or (lambda message: None)
    options = plan.options
    folder = Path(options.output)
    with plan.output:  # locked against a second writer until the reports are written
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
        earlier = {(row.get("model", TEACHER), row["backend"], row["precision"]): row
                   for row in (previous or {}).get("candidates", []) + (previous or {}).get("other_candidates", [])}
        # The teacher's candidates first (its fp32 is the reference), then each student's.
        specs = [(TEACHER, export, backend, precision) for backend, precision in plan.candidates]
        if options.distill:
            students = prepare_students(plan.checkpoint, plan.dataset, scoring, options.distill, folder / STUDENTS_DIR,
                                        options.max_seq_length, options.distill_epochs, step)
            report["students"] = [student.record for student in students]
            specs += [(student.name, student.export, backend, precision) for student in students
                      for backend, precision in plan.candidates]
        keys = [(model, backend, precision) for model, _, backend, precision in specs]
        # Records of candidates this run does not try (another --backend or --precision) are kept, so that
        # switching back reuses their bundles too.
        report["other_candidates"] = [row for key, row in earlier.items() if key not in keys]
        report["candidates"] = []
        for number, (model, model_export, backend, precision) in enumerate(specs):
            record = _candidate(plan, model_export, backend, precision, scoring, earlier.get(keys[number]), step,
                                model)
            report["candidates"].append(record)
            # Progress, with the earlier records of the candidates still to come: an interrupted deploy
            # resumes from here and loses nothing it had.
            to_come = [earlier[key] for key in keys[number + 1:] if key in earlier]
            atomic_write_json(folder / DEPLOYMENT_JSON, {**report, "candidates": report["candidates"] + to_come})
        report["choice"] = _choose(plan, report["candidates"])
        report["machine"] = {**host_description(), "backend_capabilities": {
            name: list(get_backend(name).capabilities()) for name in dict.fromkeys(b for b, _ in plan.candidates)}}
        atomic_write_json(folder / DEPLOYMENT_JSON, report)
        atomic_write_text(folder / DEPLOYMENT_MARKDOWN, deployment_markdown(report))
        atomic_write_text(folder / REPORT_HTML, deployment_report_html(report))
    return report


def _settings(plan: Plan) -> dict:
    options = plan.options
    return {"precision": plan.precision, "backend": options.backend,
            "candidates": [f"{backend} {precision}" for backend, precision in plan.candidates],
            "accuracy_budget_points": options.accuracy_budget, "max_seq_length": options.max_seq_length,
            "data": str(options.data) if options.data else None,
            "data_sha256": plan.data_sha256,
            "calibration_samples": options.calibration_samples, "timing_passes": options.timing_passes,
            "perf_seconds": options.perf_seconds, "distill": list(options.distill),
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


def _candidate(plan: Plan, export: ExportArtifact, backend: str, precision: str, scoring: Dataset,
               earlier: dict | None, step, model: str = TEACHER) -> dict:
    """Build (or reuse) one candidate's bundle, then measure it (or reuse the measurements)."""
    options = plan.options
    name = f"{backend}-{precision}" if model == TEACHER else f"{model}-{backend}-{precision}"
    bundle = Path(options.output) / BUNDLES_DIR / name
    data_sha256 = plan.data_sha256
    build_settings = {"backend": backend, "precision": precision,
                      "export_manifest_sha256": file_sha256(export.folder / MANIFEST_FILE),
                      "calibration_data_sha256": data_sha256,
                      "calibration_samples": options.calibration_samples,
                      "verification_samples": VERIFICATION_SAMPLES}
    record = {"model": model, "backend": backend, "precision": precision, "bundle": f"{BUNDLES_DIR}/{name}",
              "build_settings": build_settings}
    why = _why_not_reusable(earlier, "build_settings", build_settings)
    if why is None and earlier.get("rejected"):
        step(f"{name}: rejected before with the same settings ({earlier['rejected']})")
        return {**record, "build": "reused", "status": "reused (rejected)", "rejected": earlier["rejected"]}
    if why is None:
        why = _bundle_changed(bundle, earlier)
    if why is None:
        step(f"{name}: reusing {bundle} (same export, settings and files)")
        record["build"] = "reused"
    else:
        step(f"{name}: building ({why})")
        try:
            build_engine(BuildOptions(export_dir=export.folder, output=bundle, backend=backend, precision=precision,
                                      calibration_data=options.data, calibration_samples=options.calibration_samples,
                                      verification_samples=VERIFICATION_SAMPLES, overwrite=True), on_step=step)
        except NumericalCheckError as error:
            return {**record, "build": "built", "status": "built, rejected", "rejected": error.problem}
        record["build"] = "built"
    manifest_path = bundle / MANIFEST_FILE
    record["bundle_manifest_sha256"] = file_sha256(manifest_path)
    record["check"] = json.loads(manifest_path.read_text(encoding="utf-8"))["checks"]["against_fp32_reference"]
    measurement_settings = {"bundle_manifest_sha256": record["bundle_manifest_sha256"],
                            "scored_texts": len(scoring), "scored_data_sha256": data_sha256,
                            "timing_passes": options.timing_passes, "perf_seconds": options.perf_seconds,
                            "cpu": this_cpu()}
    record["measurement_settings"] = measurement_settings
    why = _why_not_reusable(earlier, "measurement_settings", measurement_settings)
    if why is None and "measured" in earlier:
        step(f"{name}: reusing its measurements (same bundle, texts and timing on this CPU)")
        return {**record, "measurement": "reused", "status": "reused" if record["build"] == "reused" else
                "built, measurements reused", "measured": earlier["measured"]}
    step(f"{name}: timing passes over {len(scoring)} texts for {options.perf_seconds:g} s (at least "
         f"{options.timing_passes}), then batch-1 latency for {options.perf_seconds:g} s")
    row, labels = score_and_time(bundle, scoring, passes=options.timing_passes, min_seconds=options.perf_seconds)
    latency = run_benchmark(PerfOptions(bundle=bundle, batch_size=1, duration=options.perf_seconds,
                                        iterations=LATENCY_MIN_CALLS, warmup=min(1.0, options.perf_seconds),
                                        data=options.data or DEMO_SAMPLES_PATH))
    row["latency_ms_batch1"] = {key: latency["latency_ms"][key] for key in ("median", "p90", "p99", "mean")}
    row["predicted_labels"] = [int(label) for label in labels]
    return {**record, "measurement": "measured", "measured": row,
            "status": "built, measured" if record["build"] == "built" else "reused, measured again"}


def _why_not_reusable(earlier: dict | None, key: str, settings: dict) -> str | None:
    if earlier is None:
        return f"{DEPLOYMENT_JSON} has no record of it yet"
    if earlier.get(key) != settings:
        changed = sorted(name for name in settings if (earlier.get(key) or {}).get(name) != settings[name])
        return f"made with other settings: {', '.join(changed)}"
    return None


def _bundle_changed(bundle: Path, earlier: dict) -> str | None:
    try:
        read_manifest(bundle, KIND_BUNDLE)  # every file against its hash
    except BundleError as error:
        return error.problem
    if file_sha256(bundle / MANIFEST_FILE) != earlier.get("bundle_manifest_sha256"):
        return "its manifest is not the one this deployment recorded"
    return None


def _choose(plan: Plan, candidates: list[dict]) -> dict:
    """Verdicts on every candidate (recomputed each run: the budget may have changed) and the choice."""
    rows = []
    for record in candidates:
        if record.get("rejected"):
            rows.append({"verdict": f"rejected: {record['rejected']}"})
            continue
        measured = {key: value for key, value in record["measured"].items() if key != "predicted_labels"}
        rows.append({"model": record.get("model", TEACHER), "backend": record["backend"],
                     "precision": record["precision"], **measured})
    reference = next((record for record in candidates if not record.get("rejected")), None)
    if reference is None:
        raise NumericalCheckError("every candidate was rejected: " + "; ".join(
            f"{record['backend']} {record['precision']}: {record['rejected']}" for record in candidates),
            "deploy fp32 (--precision fp32), or check the model and data against the reasons given")
    for record, row in zip(candidates, rows):
        if "measured" in record and not record.get("rejected"):
            row["agreement_with_fp32"] = agreement(record["measured"]["predicted_labels"],
                                                   reference["measured"]["predicted_labels"])
    budget = plan.options.accuracy_budget if plan.dataset is not None else None
    asked = plan.precision

    def not_eligible(row: dict) -> str | None:
        return None if asked == AUTO or row["precision"] == asked else f"--precision {asked} was asked for"

    chosen_row = choose_fastest_within_budget(rows, budget, not_eligible)
    for record, row in zip(candidates, rows):
        record.update({key: row[key] for key in ("verdict", "points_vs_fp32", "agreement_with_fp32") if key in row})
    chosen = candidates[rows.index(chosen_row)]
    speedup = chosen_row["texts_per_second"] / reference["measured"]["texts_per_second"]
    reference_name = f"{reference['backend']} {reference['precision']}"
    chosen_name = f"{chosen['backend']} {chosen['precision']}"
    if chosen.get("model", TEACHER) != TEACHER:
        reference_name, chosen_name = f"the model's {reference_name}", f"{chosen['model']} {chosen_name}"
    if budget is None:
        reason = (f"accuracy was not checked (no --data), so {asked} was kept as asked; of the backends, "
                  f"the fastest on this machine")
    elif asked == AUTO:
        reason = (f"the fastest candidate within {budget:g} accuracy points of fp32 on {len(plan.scoring)} "
                  f"held-back texts ({chosen['points_vs_fp32']:+.2f} points)")
    else:
        reason = (f"--precision {asked} was asked for, and it is within {budget:g} accuracy points of fp32 "
                  f"({chosen['points_vs_fp32']:+.2f} points)")
    return {"model": chosen.get("model", TEACHER), "backend": chosen["backend"], "precision": chosen["precision"],
            "bundle": chosen["bundle"],
            "texts_per_second": chosen_row["texts_per_second"], "speedup_vs_reference": speedup,
            "reference": reference_name, "reason": f"{reason}: {chosen_name}, {chosen_row['texts_per_second']:.0f} texts/s, "
                                                   f"{speedup:.2f}x {reference_name}"}


def deployment_markdown(report: dict) -> str:
    settings, choice, machine = report["settings"], report["choice"], report["machine"]
    data = settings["data"] or "none (accuracy not checked)"
    lines = [f"# Deployment of {report['model']}", "",
             f"Model sha256 {report['model_sha256'][:12]}; data {data}; accuracy budget "
             f"{settings['accuracy_budget_points']:g} points below fp32; precision {settings['precision']}; "
             f"export {report['export']['status']}.", "",
             f"**Chosen: {_model_prefix(choice)}{choice['backend']} {choice['precision']}** (`{choice['bundle']}`): "
             f"{choice['reason']}.", ""]
    for student in report.get("students", []):
        lines += [f"- {student['name']}: distilled from the model (its layers "
                  f"{', '.join(map(str, student['teacher_layers_kept']))} kept), agreement with it "
                  f"{student['held_back_agreement_with_teacher']:.4f} on {student['held_back_rows']} texts held back "
                  f"from distillation; `{student['checkpoint']}`"]
    if report.get("students"):
        lines += [""]
    if not report["accuracy_checked"]:
        lines += ["Accuracy was not checked: no `--data` was given. Pass labelled texts to let deploy choose a "
                  "faster precision within the budget.", ""]
    lines += [f"Timed on {report['scored_texts']} {report['scored_on']}; throughput is the fastest of the passes "
              f"over them in {settings['perf_seconds']:g} s (at least {settings['timing_passes']}; throughput hint, "
              f"tokenizing included); batch-1 latency is perf over {settings['perf_seconds']:g} s (latency hint, "
              "real text lengths).", "",
              "| model | backend | precision | artifacts | accuracy | vs fp32 (points) | agreement with fp32 | texts/s | "
              "batch-1 p50 ms | batch-1 p99 ms | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["candidates"]:
        measured = row.get("measured", {})
        latency = measured.get("latency_ms_batch1", {})
        cells = [row.get("model", TEACHER), row["backend"], row["precision"], row["status"],
                 _number(measured.get("accuracy"), "{:.4f}"), _number(row.get("points_vs_fp32"), "{:+.2f}"),
                 _number(row.get("agreement_with_fp32"), "{:.4f}"), _number(measured.get("texts_per_second"), "{:.1f}"),
                 _number(latency.get("median"), "{:.2f}"), _number(latency.get("p99"), "{:.2f}"), row["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Machine", "",
              f"{machine['cpu_model']}; speed flags {' '.join(machine['cpu_flags']) or 'none'}; "
              f"{machine['usable_cores']} usable cores; {machine['memory_gib']} GiB; measured {machine['date']}.", ""]
    for backend, capabilities in machine["backend_capabilities"].items():
        lines.append(f"- {backend} reports {', '.join(capabilities)} on this CPU")
    return "\n".join(lines) + "\n"


def _model_prefix(choice: dict) -> str:
    return "" if choice.get("model", TEACHER) == TEACHER else f"{choice['model']} "


def _number(value, template: str) -> str:
    return "" if value is None else template.format(value)
