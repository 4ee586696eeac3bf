"""`export`, `build` and `inspect`: from a checkpoint to a verified bundle, and what a bundle holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import flags
from ..defaults import DEFAULT_BACKEND, DEFAULT_MAX_SEQ_LENGTH, DEMO_MODEL_DIR
from ..jobs.deploy_report import interval_text, precision_label
from .app import BATCHING, INPUT, LIMITS, MODEL, OUTPUT, command, examples
from .common import BACKEND_HELP, DEVICE_HELP, PRECISION_HELP, TEXT_PAIR_HELP, parse_int_list, stdin_for
from .console import console, step_printer
from .exits import reports_errors
from .tables import describe_shapes


@command(epilog=examples(
    "roberta-deploy export --model roberta_deploy/demo/model --output export",
    "roberta-deploy export --model hfl/chinese-roberta-wwm-ext --max-seq-length 256 --output export   # needs network"))
@reports_errors
@stdin_for("check_data")
def export(
    model: Annotated[str, typer.Option(help="Checkpoint folder or Hugging Face hub id (needs network).",
                                       rich_help_panel=MODEL)] = str(DEMO_MODEL_DIR),
    output: Annotated[Path, typer.Option(help="Folder to write model.onnx, the tokenizer and manifest.json to.",
                                         rich_help_panel=OUTPUT)] = ...,
    max_seq_length: Annotated[int, typer.Option(help="Longest input in tokens; longer texts are truncated.",
                                                rich_help_panel=MODEL), flags.COUNT] = DEFAULT_MAX_SEQ_LENGTH,
    opset: Annotated[int, typer.Option(help="ONNX opset; 17 exports LayerNorm as one op that every engine fuses.",
                                       rich_help_panel=MODEL), flags.COUNT] = 17,
    check_data: Annotated[Optional[Path], typer.Option(help="Texts for the PyTorch/ONNX parity check (default: "
                                                            "bundled samples); - reads stdin.",
                                                       rich_help_panel=INPUT)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.", rich_help_panel=OUTPUT)] = False,
) -> None:
    """Export a Hugging Face sequence classifier to ONNX and check it against PyTorch."""
    from ..build.export import ExportOptions, export_model

    artifact = export_model(ExportOptions(model=model, output=output, max_seq_length=max_seq_length, opset=opset,
                                          check_data=check_data, overwrite=overwrite), on_step=step_printer())
    check = artifact.manifest["checks"]["onnx_vs_pytorch"]
    console.print(f"exported {artifact.manifest['architecture']} ({artifact.manifest['parameters']:,} parameters) "
                  f"to {output}; ONNX vs PyTorch max |diff| {check['max_abs_logit_diff']:.2e} on {check['texts']} texts")


@command(epilog=examples(
    "roberta-deploy build --export export --output bundle --backend openvino --precision int8",
    "roberta-deploy build --export export --output bundle --backend onnxruntime --precision int8 --quantization dynamic",
    "roberta-deploy build --export export --output bundle --precision auto --calibration-data dev.tsv",
    "roberta-deploy build --export export --output bundle --static-shape --batch-size 8 --seq-buckets 32,64",
    "roberta-deploy build --export export --output bundle --backend torch --device cuda --precision fp16"))
@reports_errors
@stdin_for("calibration_data")
def build(
    export: Annotated[Path, typer.Option("--export", help="Export folder written by `roberta-deploy export`.",
                                         rich_help_panel=MODEL)],
    output: Annotated[Path, typer.Option(help="Bundle folder to write.", rich_help_panel=OUTPUT)],
    backend: Annotated[str, typer.Option(help=BACKEND_HELP, rich_help_panel=MODEL)] = DEFAULT_BACKEND,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP + " `auto` picks the fastest within "
                                                                 "--accuracy-budget.",
                                           rich_help_panel=MODEL)] = "fp32",
    quantization: Annotated[str, typer.Option(help="int8 only: static scales activations as calibrated on "
                                                   "--calibration-data; dynamic (onnxruntime) scales each batch at "
                                                   "run time: no calibration data, but a text's logits shift "
                                                   "slightly with its batch.",
                                              rich_help_panel=MODEL)] = "static",
    device: Annotated[str, typer.Option(help=DEVICE_HELP + " The bundle is verified there and runs there by "
                                                           "default.", rich_help_panel=MODEL)] = "cpu",
    dynamic_shape: Annotated[bool, typer.Option("--dynamic-shape/--static-shape",
                                                help="Dynamic: any batch/sequence in the ranges (needed for length "
                                                     "bucketing). Static: fixed shapes compiled once; inputs are "
                                                     "padded up to them.", rich_help_panel=BATCHING)] = True,
    batch_size: Annotated[int, typer.Option(help="Static batch; for dynamic shapes the default --max-batch is "
                                                 "max(this, 64).", rich_help_panel=BATCHING), flags.COUNT] = 32,
    max_seq_length: Annotated[Optional[int], typer.Option(help="Longest sequence (default: the export's).",
                                                          rich_help_panel=LIMITS), flags.COUNT] = None,
    min_batch: Annotated[Optional[int], typer.Option(help="Dynamic only: smallest batch accepted.",
                                                     rich_help_panel=LIMITS), flags.COUNT] = None,
    max_batch: Annotated[Optional[int], typer.Option(help="Dynamic only: largest batch accepted; bounds memory.",
                                                     rich_help_panel=LIMITS), flags.COUNT] = None,
    min_seq: Annotated[Optional[int], typer.Option(help="Dynamic only: shortest sequence accepted.",
                                                   rich_help_panel=LIMITS), flags.COUNT] = None,
    max_seq: Annotated[Optional[int], typer.Option(help="Dynamic only: longest sequence accepted.",
                                                   rich_help_panel=LIMITS), flags.COUNT] = None,
    seq_buckets: Annotated[Optional[str], typer.Option(help="Static only: sequence lengths to compile (default: a "
                                                            "quarter, a half and all of --max-seq-length), so short "
                                                            "texts are not padded to the maximum. Pass just "
                                                            "--max-seq-length for one shape.",
                                                       rich_help_panel=LIMITS)] = None,
    calibration_data: Annotated[Optional[Path], typer.Option(help="Real labelled or unlabelled texts (TSV/CSV/JSONL) "
                                                                  "for int8 calibration and held-back checks "
                                                                  "(default: bundled samples); - reads stdin.",
                                                             rich_help_panel=INPUT)] = None,
    text_pair_column: Annotated[Optional[str], typer.Option(help=TEXT_PAIR_HELP + " In --calibration-data.",
                                                            rich_help_panel=INPUT)] = None,
    calibration_samples: Annotated[int, typer.Option(help="Texts used to calibrate int8; more is slower to build, "
                                                          "rarely more accurate past ~300.",
                                                     rich_help_panel=INPUT), flags.COUNT] = 128,
    verification_samples: Annotated[int, typer.Option(help="Held-back texts compared against fp32 after the build.",
                                                      rich_help_panel=INPUT), flags.COUNT] = 64,
    accuracy_budget: Annotated[float, typer.Option(help="With --precision auto: accuracy points below fp32 allowed "
                                                        "on --calibration-data labels.",
                                                   rich_help_panel=MODEL), flags.NON_NEGATIVE] = 0.5,
    timing_cap: Annotated[float, typer.Option(help="With --precision auto: the precisions are timed in interleaved "
                                                   "rounds, more while the fastest ones' intervals overlap, up to this "
                                                   "many seconds; then they are reported tied within noise.",
                                              rich_help_panel=BATCHING), flags.POSITIVE] = 60.0,
    allow_tolerance_failure: Annotated[bool, typer.Option(help="Keep a bundle that drifts past its precision's "
                                                               "tolerance (recorded as failed).",
                                                          rich_help_panel=OUTPUT)] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle folder.", rich_help_panel=OUTPUT)] = False,
) -> None:
    """Build an engine bundle for one backend and precision, verified against the fp32 reference."""
    from ..build.bundle import BuildOptions, build_engine
    from ..precision import AUTO  # numpy
    from ..tasks import agreement_text
    options = BuildOptions(
        export_dir=export, output=output, backend=backend, precision=precision, quantization=quantization,
        device=device, dynamic_shape=dynamic_shape,
        batch_size=batch_size, max_seq_length=max_seq_length, min_batch=min_batch, max_batch=max_batch,
        min_seq=min_seq, max_seq=max_seq, seq_buckets=parse_int_list(seq_buckets, "--seq-buckets") if seq_buckets else (),
        calibration_data=calibration_data, calibration_samples=calibration_samples,
        verification_samples=verification_samples, allow_tolerance_failure=allow_tolerance_failure,
        overwrite=overwrite, text_pair_column=text_pair_column)
    if options.precision == AUTO:
        from ..build.autoselect import build_fastest_within_budget
        from ..measurement import TimingPlan

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
            console.print(f"  {precision_label(candidate)}: {measured}-> {candidate['verdict']}")
        if selection["accuracy_gate"]["note"]:
            console.print(selection["accuracy_gate"]["note"])
    console.print(f"built {manifest['backend']} {precision_label(manifest)} bundle at {output} "
                  f"({describe_shapes(manifest)}); vs fp32: max |diff| {check['max_abs_logit_diff']:.3g} "
                  f"(tolerance {check['tolerance']:.3g}), {agreement_text(check)} "
                  f"on {check['texts']} texts: {verdict}")



@command(epilog=examples("roberta-deploy inspect bundle", "roberta-deploy inspect export --json"))
@reports_errors
def inspect(
    bundle: Annotated[Path, typer.Argument(help="Bundle or export folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.",
                                          rich_help_panel=OUTPUT)] = False,
) -> None:
    """Show what a bundle (or export) holds, where it came from and the checks it passed."""
    from ..manifest import KIND_BUNDLE, KIND_EXPORT, MANIFEST_FILE, read_manifest  # numpy, through precision
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
                "precision", "quantization", "max_seq_length", "labels", "inputs", "backend_settings", "calibration"):
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
