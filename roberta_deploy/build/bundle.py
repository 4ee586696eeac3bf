"""build: an export folder -> an engine bundle for one backend, precision and shape profile, verified
against the fp32 ONNX reference on held-back texts before it is allowed to exist."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import OutputFolder
from ..backends import require_precision
from ..backends.base import CPU, canonical_device
from ..data import Dataset, read_dataset
from ..defaults import DEFAULT_BACKEND, DEMO_SAMPLES_PATH
from ..flags import COUNT
from ..errors import ModelLoadError, NumericalCheckError, UsageError
from ..machine import this_cpu
from ..runtime.tokenization import TOKENIZER_DIR, pad_to_shape
from .checkpoint import checkpoint_hash, resolve_checkpoint
from ..machine import available_memory_bytes
from .export import ExportArtifact, onnx_reference_logits
from .loader_files import write_loader_files
from ..manifest import KIND_BUNDLE, write_manifest
from ..precision import AUTO, STATIC, canonical_precision, canonical_quantization
from ..shapes import ShapeProfile
from ..tasks import SINGLE_LABEL, Task, agreement_text, compare_with_reference

CALIBRATION_BATCH = 8
VERIFICATION_BATCH = 16
SAMPLE_SEED = 0  # fixed so that the calibration/held-back split is the same on every build


@dataclass(frozen=True)
class BuildOptions:
    export_dir: Path
    output: Path
    backend: str = DEFAULT_BACKEND
    precision: str = "fp32"  # fp32, fp16, bf16, int8, or a vendor alias
    quantization: str = STATIC  # int8: static (calibrated) or dynamic (scaled per batch; onnxruntime only)
    device: str = CPU  # where the bundle runs and is verified: cpu, or cuda[:N] (torch backend)
    dynamic_shape: bool = True  # dynamic: any shape in the ranges; static: fixed shapes, compiled once
    batch_size: int = 32  # static batch; for dynamic, the default max batch is max(batch_size, 64)
    max_seq_length: int | None = None  # defaults to the export's
    min_batch: int | None = None
    max_batch: int | None = None
    min_seq: int | None = None
    max_seq: int | None = None
    seq_buckets: tuple[int, ...] = ()  # static only: compiled sequence lengths; () means a quarter, half and full
    calibration_data: Path | None = None  # real texts; the bundled samples when None
    calibration_samples: int = 128  # texts used to calibrate int8 activations
    verification_samples: int = 64  # held-back texts compared against the fp32 reference
    allow_tolerance_failure: bool = False  # keep a bundle that drifts past tolerance (recorded as failed)
    overwrite: bool = False
    text_column: str | None = None
    label_column: str | None = None
    text_pair_column: str | None = None  # the second text of pair data; None: the usual names (data.py)

    def __post_init__(self):
        # The one place a build's precision name is canonicalized (aliases, case); "auto" is build
        # --precision auto's, which build_fastest_within_budget handles.
        object.__setattr__(self, "precision", canonical_precision(self.precision, allow_auto=True))
        object.__setattr__(self, "quantization", canonical_quantization(self.quantization, self.precision))


@dataclass(frozen=True)
class BuildResult:
    bundle_dir: Path
    manifest: dict


def build_engine(options: BuildOptions, on_step: Callable[[str], None] | None = None) -> BuildResult:
    """Build and verify a bundle; raise UnsupportedPrecisionError/UsageError before any work is done."""
    step = on_step or (lambda message: None)
    output = OutputFolder(options.output, overwrite=options.overwrite,
                          inputs=(options.export_dir, options.calibration_data))
    export = ExportArtifact.load(options.export_dir)
    task = Task.from_manifest(export.manifest)
    precision = options.precision
    if precision == AUTO:
        raise UsageError("build_engine builds one precision, not auto", "call build_fastest_within_budget")
    device = canonical_device(options.device)
    backend = require_precision(options.backend, precision, device)
    quantization = options.quantization if precision == "int8" else None
    if quantization is not None:
        backend.check_quantization(quantization)
    calibrated = quantization == STATIC
    checkpoint = source_checkpoint(export) if backend.builds_from_checkpoint else None
    max_seq_length = options.max_seq_length if options.max_seq_length is not None else export.manifest["max_seq_length"]
    COUNT.require(max_seq_length, "--max-seq-length")
    if max_seq_length > export.manifest["max_seq_length"]:
        raise UsageError(f"--max-seq-length {max_seq_length} exceeds the export's {export.manifest['max_seq_length']}",
                         f"re-export with --max-seq-length {max_seq_length}")
    profile = ShapeProfile.create(dynamic=options.dynamic_shape, batch_size=options.batch_size,
                                  max_seq_length=max_seq_length, min_batch=options.min_batch,
                                  max_batch=options.max_batch, min_seq=options.min_seq, max_seq=options.max_seq,
                                  static_seq_lengths=options.seq_buckets)
    check_fits_in_memory(profile, export.manifest)
    COUNT.require(options.calibration_samples, "--calibration-samples")
    COUNT.require(options.verification_samples, "--verification-samples")
    dataset = calibration_dataset(options, export.manifest["labels"], task)
    calibration, held_back = split_calibration(dataset, options.calibration_samples, options.verification_samples)
    encoder = export.text_encoder(profile.max_seq)
    input_names = export.manifest["inputs"]

    with output, output.staging() as work:
        from ..backends.base import BuildRequest

        calibration_feeds = []
        if calibrated:
            calibration_feeds = [batch.feeds for batch in _padded_batches(encoder, calibration.inputs, profile,
                                                                          input_names, CALIBRATION_BATCH)]
        step(f"building {backend.name} {precision}{f' ({quantization})' if quantization else ''} "
             f"({profile.describe()})")
        request = BuildRequest(export=export, precision=precision, profile=profile,
                               calibration_feeds=calibration_feeds, device=device, checkpoint=checkpoint,
                               quantization=quantization or STATIC)
        backend_settings = backend.build(request, work)
        shutil.copytree(export.tokenizer_dir, work / TOKENIZER_DIR)
        write_loader_files(export, work)
        content = {
            "source_model": export.manifest["source_model"],
            "source_model_sha256": export.manifest["source_model_sha256"],
            "export_manifest": {key: export.manifest[key] for key in (
                "architecture", "model_type", "opset", "parameters", "hidden_size", "num_hidden_layers",
                "vocab_size", "type_vocab_size", "num_labels", "created") if key in export.manifest},
            "backend": backend.name,
            "precision": precision,
            **({"quantization": quantization} if quantization else {}),  # int8's mode, for every later stage
            "device": device,
            "backend_settings": backend_settings,
            "shape_profile": profile.to_dict(),
            "inputs": input_names,
            "labels": export.manifest["labels"],
            **task.to_manifest(),
            "max_seq_length": profile.max_seq,
            "calibration": ({"source": dataset.source, "texts": len(calibration.texts)}
                            if calibrated else None),
            "checks": dict(export.manifest.get("checks", {})),
            # Where the speed and the check below were obtained; loading elsewhere warns (machine.py).
            "verified_on": {"cpu": this_cpu(), "backend_capabilities": list(backend.capabilities())},
        }
        write_manifest(work, KIND_BUNDLE, content)
        step("verifying against the fp32 reference")
        check = verify_bundle(work, export, held_back, precision)
        content["checks"]["against_fp32_reference"] = check
        if not check["passed"] and not options.allow_tolerance_failure:
            raise NumericalCheckError(
                f"{backend.name} {precision}{f' ({quantization})' if quantization else ''} logits differ from fp32 by "
                f"{check['max_abs_logit_diff']:.3g} (tolerance {check['tolerance']:.3g}; {agreement_text(check)})",
                "use a higher precision, " + ("more --calibration-samples" if calibrated else "--quantization static")
                + ", or --allow-tolerance-failure to keep it")
        manifest = write_manifest(work, KIND_BUNDLE, content)
    return BuildResult(Path(options.output), manifest)


def calibration_dataset(options: BuildOptions, label_names, task: Task) -> Dataset:
    """The texts (or pairs) that calibrate int8 and verify the bundle. Labels are read only where the
    check scores them (single-label accuracy). A pair model without --calibration-data gets pairs of
    the bundled sample reviews: unrelated texts, but they run both segments as real data would."""
    if options.calibration_data is None and task.text_pairs:
        samples = read_dataset(DEMO_SAMPLES_PATH, text_pairs=False, ignore_labels=True)
        half = len(samples) // 2
        return replace(samples, texts=samples.texts[:half], text_pairs=samples.texts[half:2 * half],
                       line_numbers=samples.line_numbers[:half])
    return read_dataset(options.calibration_data or DEMO_SAMPLES_PATH, text_column=options.text_column,
                        label_column=options.label_column, label_names=label_names,
                        text_pair_column=options.text_pair_column, text_pairs=task.text_pairs, task=task.kind,
                        ignore_labels=task.kind != SINGLE_LABEL)


def source_checkpoint(export: ExportArtifact) -> Path:
    """The checkpoint the export was made from, as it was then (same hash): for backends that ship
    its weights instead of the ONNX graph."""
    source = export.manifest["source_model"]
    folder = resolve_checkpoint(source)
    if checkpoint_hash(folder) != export.manifest["source_model_sha256"]:
        raise ModelLoadError(f"the checkpoint {source} changed since {export.folder} was exported from it",
                             "re-export it (roberta-deploy export), or restore the checkpoint")
    return folder


def check_fits_in_memory(profile: ShapeProfile, export_manifest: dict) -> None:
    """A static batch is computed whole at every call: refuse one this machine cannot hold before the
    build starts (batch 100,000 was killed at 24 GB, mid-build)."""
    needed = profile.activation_bytes(export_manifest["hidden_size"], export_manifest["num_attention_heads"])
    available = available_memory_bytes()
    if available is not None and needed > available:
        fitting = max(1, profile.max_batch * available // needed)
        raise UsageError(f"a static batch of {profile.max_batch} x {profile.max_seq} tokens needs about "
                         f"{needed / 2**30:.1f} GiB while it runs; this machine has {available / 2**30:.1f} GiB available",
                         f"pass --batch-size {fitting} or less, or --dynamic-shape")


def split_calibration(dataset: Dataset, calibration_count: int, held_back_count: int) -> tuple[Dataset, Dataset]:
    """Disjoint calibration and held-back subsets (seeded shuffle); overlap only when the file is too small."""
    calibration_indices, held_back_indices, _ = _split_indices(len(dataset), calibration_count, held_back_count)
    return _subset(dataset, calibration_indices), _subset(dataset, held_back_indices)


def held_out_of_calibration(dataset: Dataset, calibration_count: int, held_back_count: int) -> Dataset:
    """Every text the same split keeps out of calibration: the held-back texts and whatever is left over
    (just the held-back ones when the file is too small to keep them apart)."""
    calibration_indices, held_back_indices, order = _split_indices(len(dataset), calibration_count, held_back_count)
    calibrated = set(calibration_indices)
    return _subset(dataset, [index for index in order if index not in calibrated] or held_back_indices)


def _split_indices(count: int, calibration_count: int, held_back_count: int):
    order = list(range(count))
    random.Random(SAMPLE_SEED).shuffle(order)
    held_back_indices = order[:held_back_count]
    rest = order[held_back_count:] or order
    return rest[:calibration_count], held_back_indices, order


def _subset(dataset: Dataset, indices: list[int]) -> Dataset:
    return replace(dataset, texts=[dataset.texts[i] for i in indices],
                   labels=[dataset.labels[i] for i in indices] if dataset.labels is not None else None,
                   text_pairs=[dataset.text_pairs[i] for i in indices] if dataset.text_pairs is not None else None,
                   line_numbers=[dataset.line_numbers[i] for i in indices])


@dataclass(frozen=True)
class PaddedBatch:
    feeds: dict[str, np.ndarray]  # int64 (rows, seq) per input name, shaped as the engine runs them
    texts: int  # the first `texts` rows are real; the rest are filler rows of a larger engine shape


def _padded_batches(encoder, texts, profile: ShapeProfile, input_names, texts_per_batch: int) -> list[PaddedBatch]:
    """Batches of `texts_per_batch` texts (fewer if the engine takes fewer), padded to the shape the
    engine will run them at (static shapes, dynamic minimums). The one place that decides which rows
    are real, so the comparison never reads filler rows."""
    rows = min(texts_per_batch, profile.max_batch)
    encoded = encoder.encode(texts)
    batches = []
    for start in range(0, len(texts), rows):
        indices = list(range(start, min(start + rows, len(texts))))
        inputs = encoder.pad(encoded, indices, int(encoded.lengths[indices].max()))
        arrays = {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask,
                  "token_type_ids": inputs.token_type_ids}
        arrays = pad_to_shape(arrays, *profile.fit(*inputs.shape), encoder.pad_token_id)
        batches.append(PaddedBatch({name: arrays[name] for name in input_names}, len(indices)))
    return batches


def verify_bundle(bundle_dir: Path, export: ExportArtifact, held_back: Dataset, precision: str) -> dict:
    """Run the bundle through the runtime API and the fp32 ONNX reference on the same padded inputs."""
    from ..runtime.engine import Engine

    engine = Engine.load(bundle_dir)
    context = engine.create_context()
    batches = _padded_batches(engine.encoder, held_back.inputs, engine.profile, engine.input_names,
                              VERIFICATION_BATCH)
    built = [context.run(batch.feeds["input_ids"], batch.feeds["attention_mask"],
                         batch.feeds.get("token_type_ids"))[:batch.texts] for batch in batches]
    reference = [logits[:batch.texts] for logits, batch in
                 zip(onnx_reference_logits(export.onnx_path, [batch.feeds for batch in batches]), batches)]
    built_logits, reference_logits = np.concatenate(built), np.concatenate(reference)
    check = {**compare_with_reference(engine.task, built_logits, reference_logits, precision),
             "texts": len(held_back.texts), "text_pairs": held_back.text_pairs is not None,
             "text_source": held_back.source}
    if held_back.labels is not None and engine.task.kind == SINGLE_LABEL:
        gold = np.asarray(held_back.labels)
        check["accuracy"] = float((built_logits.argmax(1) == gold).mean())
        check["reference_accuracy"] = float((reference_logits.argmax(1) == gold).mean())
    return check
