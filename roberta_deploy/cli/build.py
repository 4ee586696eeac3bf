"""`export`, `build` and `inspect`: from a checkpoint to a verified bundle, and what a bundle holds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..defaults import DEFAULT_BACKEND, DEFAULT_MAX_SEQ_LENGTH, DEMO_MODEL_DIR
from ..errors import UsageError
from ..jobs.deploy_report import interval_text
from .app import app
from .common import BACKEND_HELP, DEVICE_HELP, PRECISION_HELP, TEXT_PAIR_HELP, parse_int_list
from .console import console, step_printer
from .exits import reports_errors
from .tables import describe_shapes


@app.command()
@reports_errors
def export(
    model: str = typer.Option(str(DEMO_MODEL_DIR), help="Checkpoint folder or Hugging Face hub id (needs network)."),
    output: Path = typer.Option(..., help="Folder to write model.onnx, the tokenizer and manifest.json to."),
    max_seq_length: int = typer.Option(DEFAULT_MAX_SEQ_LENGTH, help="Longest input in tokens; longer texts are truncated."),
    opset: int = typer.Option(17, help="ONNX opset; 17 exports LayerNorm as one op that every engine fuses."),
    check_data: Optional[Path] = typer.Option(None, help="Texts for the PyTorch/ONNX parity check (default: bundled samples)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Export a Hugging Face sequence classifier to ONNX and check it against PyTorch."""
    from ..build.export import ExportOptions, export_model

    artifact = export_model(ExportOptions(model=model, output=output, max_seq_length=max_seq_length, opset=opset,
                                          check_data=check_data, overwrite=overwrite), on_step=step_printer())
    check = artifact.manifest["checks"]["onnx_vs_pytorch"]
    console.print(f"exported {artifact.manifest['architecture']} ({artifact.manifest['parameters']:,} parameters) "
                  f"to {output}; ONNX vs PyTorch max |diff| {check['max_abs_logit_diff']:.2e} on {check['texts']} texts")


@app.command()
@reports_errors
def build(
    export: Path = typer.Option(..., "--export", help="Export folder written by `roberta-deploy export`."),
    output: Path = typer.Option(..., help="Bundle folder to write."),
    backend: str = typer.Option(DEFAULT_BACKEND, help=BACKEND_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP + " `auto` picks the fastest within --accuracy-budget."),
    device: str = typer.Option("cpu", help=DEVICE_HELP + " The bundle is verified there and runs there by default."),
    dynamic_shape: bool = typer.Option(True, "--dynamic-shape/--static-shape",
                                       help="Dynamic: any batch/sequence in the ranges (needed for length bucketing). "
                                            "Static: fixed shapes compiled once; inputs are padded up to them."),
    batch_size: int = typer.Option(32, help="Static batch; for dynamic shapes the default --max-batch is max(this, 64)."),
    max_seq_length: Optional[int] = typer.Option(None, help="Longest sequence (default: the export's)."),
    min_batch: Optional[int] = typer.Option(None, help="Dynamic only: smallest batch accepted."),
    max_batch: Optional[int] = typer.Option(None, help="Dynamic only: largest batch accepted; bounds memory."),
    min_seq: Optional[int] = typer.Option(None, help="Dynamic only: shortest sequence accepted."),
    max_seq: Optional[int] = typer.Option(None, help="Dynamic only: longest sequence accepted."),
    seq_buckets: Optional[str] = typer.Option(None, help="Static only: sequence lengths to compile (default: a quarter, a half "
                                                         "and all of --max-seq-length), so short texts are not padded "
                                                         "to the maximum. Pass just --max-seq-length for one shape."),
    calibration_data: Optional[Path] = typer.Option(None, help="Real labelled or unlabelled texts (TSV/CSV/JSONL) for int8 "
                                                               "calibration and held-back checks (default: bundled samples)."),
    text_pair_column: Optional[str] = typer.Option(None, help=TEXT_PAIR_HELP + " In --calibration-data."),
    calibration_samples: int = typer.Option(128, help="Texts used to calibrate int8; more is slower to build, rarely more accurate past ~300."),
    verification_samples: int = typer.Option(64, help="Held-back texts compared against fp32 after the build."),
    accuracy_budget: float = typer.Option(0.5, help="With --precision auto: accuracy points below fp32 allowed on --calibration-data labels."),
    timing_cap: float = typer.Option(60.0, help="With --precision auto: the precisions are timed in interleaved rounds, more while the fastest ones' intervals overlap, up to this many seconds; then they are reported tied within noise."),
    allow_tolerance_failure: bool = typer.Option(False, help="Keep a bundle that drifts past its precision's tolerance (recorded as failed)."),
    overwrite: bool = typer.Option(False, help="Replace an existing bundle folder."),
) -> None:
    """Build an engine bundle for one backend and precision, verified against the fp32 reference."""
    from ..build.bundle import BuildOptions, build_engine
    from ..precision import AUTO

    options = BuildOptions(
        export_dir=export, output=output, backend=backend, precision=precision, device=device,
        dynamic_shape=dynamic_shape,
        batch_size=batch_size, max_seq_length=max_seq_length, min_batch=min_batch, max_batch=max_batch,
        min_seq=min_seq, max_seq=max_seq, seq_buckets=parse_int_list(seq_buckets, "--seq-buckets") if seq_buckets else (),
        calibration_data=calibration_data, calibration_samples=calibration_samples,
        verification_samples=verification_samples, allow_tolerance_failure=allow_tolerance_failure,
        overwrite=overwrite, text_pair_column=text_pair_column)
    if options.precision == AUTO:
        from ..build.autoselect import build_fastest_within_budget
        from ..measurement import TimingPlan

        if not (math.isfinite(timing_cap) and timing_cap > 0):
            raise UsageError(f"--timing-cap {timing_cap} must be a positive number of seconds", "pass e.g. --timing-cap 60")
        result = build_fastest_within_budget(options, accuracy_budget, on_step=step_printer(),
                                             timing=TimingPlan(max_seconds=timing_cap))
    else:
        result = build_engine(options, on_step=step_printer())
    manifest = result.manifest
    check = manifest["checks"]["against_fp32_reference"]
    verdict = "passed" if check["passed"] else "FAILED (kept: --allow-tolerance-failure)"
    selection = manifest.get("precision_selection")
    if selection:
        for candidate in selection["candidates"]:
            measured = (f"accuracy {interval_text(candidate['accuracy_interval'], '{:.4f}')} "
                        f"({candidate['points_vs_fp32']:+.2f} points vs fp32, "
                        f"{candidate['paired_vs_fp32']['disagreements']} disagreements), "
                        f"{interval_text(candidate['texts_per_second_interval'], '{:,.0f}')} texts/s "
                        if "accuracy" in candidate else "")
            console.print(f"  {candidate['precision']}: {measured}-> {candidate['verdict']}")
        if selection["accuracy_gate"]["note"]:
            console.print(selection["accuracy_gate"]["note"])
    from ..tasks import agreement_text

    console.print(f"built {manifest['backend']} {manifest['precision']} bundle at {output} "
                  f"({describe_shapes(manifest)}); vs fp32: max |diff| {check['max_abs_logit_diff']:.3g} "
                  f"(tolerance {check['tolerance']:.3g}), {agreement_text(check)} "
                  f"on {check['texts']} texts: {verdict}")



@app.command()
@reports_errors
def inspect(
    bundle: Path = typer.Argument(..., help="Bundle or export folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show what a bundle (or export) holds, where it came from and the checks it passed."""
    from ..manifest import KIND_BUNDLE, KIND_EXPORT, MANIFEST_FILE, read_manifest

    kind = KIND_EXPORT
    try:
        kind = json.loads((bundle / MANIFEST_FILE).read_text(encoding="utf-8")).get("kind", KIND_BUNDLE)
    except (OSError, ValueError, AttributeError):
        kind = KIND_BUNDLE  # read_manifest below names the problem
    manifest = read_manifest(bundle, kind if kind in (KIND_BUNDLE, KIND_EXPORT) else KIND_BUNDLE)
    if as_json:
        console.print_json(json.dumps(manifest, ensure_ascii=False))
        return
    table = Table(title=f"{kind} {bundle}", show_header=False)
    for key in ("schema_version", "created", "source_model", "source_model_sha256", "architecture", "backend",
                "precision", "max_seq_length", "labels", "inputs", "backend_settings", "calibration"):
        if manifest.get(key) is not None:
            table.add_row(key, json.dumps(manifest[key], ensure_ascii=False) if not isinstance(manifest[key], str)
                          else manifest[key])
    if "shape_profile" in manifest:
        table.add_row("shapes", describe_shapes(manifest))
    for name, check in manifest.get("checks", {}).items():
        table.add_row(f"check {name}", ("passed" if check.get("passed") else "FAILED") +
                      f", max |diff| {check['max_abs_logit_diff']:.3g} (tolerance {check['tolerance']:.3g})")
    table.add_row("files", ", ".join(f"{name} ({(bundle / name).stat().st_size / 1e6:.1f} MB)"
                                     for name in manifest["files"]))
    table.add_row("library_versions", ", ".join(f"{k} {v}" for k, v in manifest["library_versions"].items()))
    console.print(table)
