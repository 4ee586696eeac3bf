"""export: a Hugging Face sequence classifier -> model.onnx + tokenizer + manifest, checked against PyTorch.

The export folder is the single source every backend builds from; its manifest records the model's
hash, labels, inputs and the measured PyTorch/ONNX difference.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..atomic import OutputFolder
from ..quiet import quiet_in_this_thread
from .checkpoint import (check_tokenizer_on_texts, checkpoint_hash, load_fast_tokenizer, quiet_transformers,
                         resolve_checkpoint)
from ..data import read_dataset
from ..defaults import DEFAULT_MAX_SEQ_LENGTH, DEMO_SAMPLES_PATH
from ..errors import ModelLoadError, NumericalCheckError, UsageError
from ..manifest import KIND_EXPORT, read_manifest, write_manifest
from ..runtime.tokenization import TOKENIZER_DIR, TOKENIZER_FILE, TOKENIZER_META_FILE, TextEncoder
from ..tasks import Task

ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 17
PARITY_SAMPLES = 32
# fp32 PyTorch vs fp32 ONNX differ only by kernel order; anything larger is a wrong graph.
PARITY_ATOL = 1e-4
PARITY_RTOL = 1e-4


@dataclass(frozen=True)
class ExportOptions:
    model: str  # checkpoint folder or hub id
    output: Path
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH  # longest input the deployed model will see
    opset: int = DEFAULT_OPSET
    check_data: Path | None = None  # texts for the parity check; the bundled samples when None
    overwrite: bool = False


@dataclass(frozen=True)
class ExportArtifact:
    """A checked export folder and its manifest, as `build` consumes it."""

    folder: Path
    manifest: dict

    @classmethod
    def load(cls, folder: str | Path) -> "ExportArtifact":
        folder = Path(folder)
        return cls(folder, read_manifest(folder, KIND_EXPORT))

    @property
    def onnx_path(self) -> Path:
        return self.folder / ONNX_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.folder / TOKENIZER_DIR

    def text_encoder(self, max_seq_length: int | None = None) -> TextEncoder:
        return TextEncoder.from_folder(self.tokenizer_dir, max_seq_length or self.manifest["max_seq_length"])


def parity_tolerance(reference: np.ndarray) -> float:
    return PARITY_ATOL + PARITY_RTOL * float(np.abs(reference).max(initial=0.0))


def load_check_texts(path: Path | None, limit: int = PARITY_SAMPLES) -> tuple[list[str], list[tuple[str, str]]]:
    """Texts and text pairs for the parity check: the file's pairs when it has pair columns, else pairs
    of its texts, so the check also runs segment B (token type 1 in BERT) and the tokenizer's pair
    template, whatever the model was trained on."""
    dataset = read_dataset(path or DEMO_SAMPLES_PATH, ignore_labels=True)
    texts = dataset.texts[:limit]
    if dataset.text_pairs is not None:
        return texts, dataset.inputs[:limit // 2]
    return texts, [(texts[index], texts[-1 - index]) for index in range(min(limit // 2, len(texts) // 2))]


def trained_on_pairs(folder: Path, config) -> bool | None:
    """Whether the checkpoint was fine-tuned on text pairs, when it says so: our finetune.json, or the
    `sentence_transformers` block a CrossEncoder writes into config.json. None when unknown."""
    finetune_record = folder / "finetune.json"
    if finetune_record.is_file():
        try:
            pairs = json.loads(finetune_record.read_text(encoding="utf-8")).get("text_pairs")
        except (OSError, ValueError, AttributeError):
            pairs = None
        if isinstance(pairs, bool):
            return pairs
    return True if getattr(config, "sentence_transformers", None) is not None else None


def export_model(options: ExportOptions, on_step: Callable[[str], None] | None = None) -> ExportArtifact:
    """Export, then check ONNX against PyTorch on real texts; raise NumericalCheckError past tolerance."""
    step = on_step or (lambda message: None)
    output = OutputFolder(options.output, overwrite=options.overwrite, inputs=(options.model, options.check_data))
    if options.max_seq_length < 8:
        raise UsageError(f"--max-seq-length {options.max_seq_length} is too short", "use at least 8 tokens")
    if not 11 <= options.opset <= 21:
        raise UsageError(f"--opset {options.opset} is not supported", "use an opset between 11 and 21 (default 17)")
    check_texts, pairs = load_check_texts(options.check_data)
    # Reserved before the slow load, so a second writer of the same output fails at once, and Ctrl-C or SIGTERM
    # during the load finds the output already ours to clean up.
    with output:
        step("loading checkpoint")
        folder = resolve_checkpoint(options.model)
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        try:
            config = AutoConfig.from_pretrained(str(folder))
        except Exception as error:
            raise ModelLoadError(f"cannot read the config of {folder}: {error}".splitlines()[0],
                                 "point --model at a Hugging Face checkpoint") from None
        architectures = config.architectures or []
        if architectures and not any(name.endswith("ForSequenceClassification") for name in architectures):
            raise ModelLoadError(f"{folder} holds a {architectures[0]}, not a sequence classifier",
                                 "fine-tune it first (roberta-deploy finetune) or pass a *ForSequenceClassification checkpoint")
        try:
            with quiet_transformers():
                model = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager")
        except Exception as error:
            raise ModelLoadError(f"cannot load {folder} as a sequence classifier: {error}".splitlines()[0],
                                 "check that the weights match config.json") from None
        model.eval()
        tokenizer = load_fast_tokenizer(folder)
        unknown_share = check_tokenizer_on_texts(tokenizer, check_texts)
        max_positions = getattr(config, "max_position_embeddings", None)
        # RoBERTa offsets positions by padding_idx + 1, so its usable length is two less.
        usable_positions = max_positions - (2 if config.model_type in ("roberta", "xlm-roberta") else 0) \
            if max_positions else None
        if usable_positions and options.max_seq_length > usable_positions:
            raise UsageError(f"--max-seq-length {options.max_seq_length} exceeds the model's {usable_positions} positions",
                             f"use --max-seq-length {usable_positions} or less")
        forward_parameters = inspect.signature(model.forward).parameters
        input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in forward_parameters else [])
        labels = [str(config.id2label[index]) for index in range(config.num_labels)]
        task = Task.from_config(getattr(config, "problem_type", None), config.num_labels, trained_on_pairs(folder, config))
        if len(tokenizer) > config.vocab_size:
            raise ModelLoadError(f"the tokenizer of {folder} has {len(tokenizer)} tokens but the model's embedding table "
                                 f"only {config.vocab_size}: texts would map to ids past the table",
                                 "use the tokenizer the model was trained with")

        with output.staging() as work:
            step("writing tokenizer")
            tokenizer_dir = work / TOKENIZER_DIR
            tokenizer.save_pretrained(str(tokenizer_dir))
            config.save_pretrained(str(work))  # config.json: what transformers and Optimum read (id2label, model_type)
            if not (tokenizer_dir / TOKENIZER_FILE).is_file():
                raise ModelLoadError("the tokenizer did not save a tokenizer.json", "use a checkpoint with a fast tokenizer")
            meta = {"pad_token_id": int(tokenizer.pad_token_id), "unk_token_id": tokenizer.unk_token_id,
                    "unknown_token_share_on_check_texts": round(unknown_share, 5)}
            (tokenizer_dir / TOKENIZER_META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            encoder = TextEncoder.from_folder(tokenizer_dir, options.max_seq_length)
            inputs = encoder.encode_padded(check_texts)
            _check_runtime_tokenizer_matches(tokenizer, check_texts, inputs.input_ids, options.max_seq_length)
            pair_inputs = encoder.encode_padded(pairs) if pairs else None
            if pairs:
                _check_runtime_tokenizer_matches(tokenizer, pairs, pair_inputs.input_ids, options.max_seq_length,
                                                 pair_inputs.token_type_ids)
                type_vocab_size = getattr(config, "type_vocab_size", None)
                if "token_type_ids" in input_names and type_vocab_size and \
                        int(pair_inputs.token_type_ids.max()) >= type_vocab_size:
                    # A BERT-style pair template on a model with one token type: such pairs would index
                    # past its embedding table (the runtime refuses them), so they are not checked either.
                    if task.text_pairs:
                        raise ModelLoadError(f"the tokenizer gives token type ids up to "
                                             f"{int(pair_inputs.token_type_ids.max())} for text pairs, but the model has "
                                             f"{type_vocab_size} token type(s)",
                                             "use the tokenizer the model was fine-tuned with")
                    pairs, pair_inputs = [], None

            step("exporting to ONNX")
            onnx_path = work / ONNX_FILE
            example = tuple(torch.from_numpy(getattr(inputs, name)[:2]) for name in input_names)
            dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
            dynamic_axes["logits"] = {0: "batch"}
            with torch.no_grad(), quiet_in_this_thread(("torch",)):
                # The tracer warns about shape-dependent Python branches in transformers; the parity
                # check below at two other shapes is what proves the graph generalises.
                torch.onnx.export(model, example, str(onnx_path), input_names=input_names, output_names=["logits"],
                                  dynamic_axes=dynamic_axes, opset_version=options.opset, do_constant_folding=True,
                                  dynamo=False)

            step("checking ONNX against PyTorch")
            shortest = np.argsort(encoder.encode(check_texts).lengths)[:5]
            short_inputs = encoder.encode_padded([check_texts[index] for index in shortest])
            feeds_list = [batch.as_feeds(input_names) for batch in (inputs, short_inputs, pair_inputs) if batch is not None]
            max_difference, tolerance = 0.0, 0.0
            for feeds, exported in zip(feeds_list, onnx_reference_logits(onnx_path, feeds_list)):
                with torch.no_grad():
                    reference = model(**{name: torch.from_numpy(value) for name, value in feeds.items()}).logits.numpy()
                max_difference = max(max_difference, float(np.abs(reference - exported).max()))
                tolerance = max(tolerance, parity_tolerance(reference))
            if not max_difference <= tolerance:
                raise NumericalCheckError(
                    f"ONNX logits differ from PyTorch by {max_difference:.3g} (tolerance {tolerance:.3g})",
                    "try another --opset, or report the model type; nothing was written")
            manifest = write_manifest(work, KIND_EXPORT, {
                "source_model": str(options.model),
                "source_model_sha256": checkpoint_hash(folder),
                "architecture": architectures[0] if architectures else type(model).__name__,
                "model_type": config.model_type,
                "num_labels": config.num_labels,
                "labels": labels,
                **task.to_manifest(),
                "max_seq_length": options.max_seq_length,
                "opset": options.opset,
                "inputs": input_names,
                "outputs": ["logits"],
                "dynamic_axes": {"batch": 0, "sequence": 1},
                "hidden_size": config.hidden_size,
                "num_attention_heads": config.num_attention_heads,
                "num_hidden_layers": config.num_hidden_layers,
                "vocab_size": config.vocab_size,
                "type_vocab_size": getattr(config, "type_vocab_size", None),
                "pad_token_id": int(tokenizer.pad_token_id),
                "parameters": int(sum(parameter.numel() for parameter in model.parameters())),
                "checks": {"onnx_vs_pytorch": {
                    "passed": True, "max_abs_logit_diff": max_difference, "tolerance": tolerance,
                    "texts": len(check_texts), "pairs": len(pairs), "shapes": [list(feeds["input_ids"].shape) for feeds in feeds_list],
                    "text_source": str(options.check_data or DEMO_SAMPLES_PATH)}},
            })
        return ExportArtifact(Path(options.output), manifest)


def _check_runtime_tokenizer_matches(tokenizer, texts: Sequence, runtime_ids: np.ndarray, max_seq_length: int,
                                     runtime_type_ids: np.ndarray | None = None) -> None:
    """The runtime reads tokenizer.json without transformers; it must give the very same ids (and, for
    pairs, token type ids and longest-first truncation)."""
    if texts and not isinstance(texts[0], str):
        expected = tokenizer([first for first, _ in texts], [second for _, second in texts], truncation=True,
                             max_length=max_seq_length)
    else:
        expected = tokenizer(list(texts), truncation=True, max_length=max_seq_length)
    for row, ids in enumerate(expected["input_ids"]):
        same_types = runtime_type_ids is None or "token_type_ids" not in expected or \
            list(runtime_type_ids[row, :len(ids)]) == list(expected["token_type_ids"][row])
        if list(runtime_ids[row, :len(ids)]) != list(ids) or not same_types:
            what = "text" if isinstance(texts[row], str) else "text pair"
            raise ModelLoadError(f"the saved tokenizer.json encodes {what} {row} differently from the checkpoint's tokenizer",
                                 "report this checkpoint; its tokenizer cannot be saved as tokenizer.json faithfully")


def onnx_reference_logits(onnx_path: Path, feeds_list: Sequence[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """fp32 logits of an exported model with basic graph optimizations only: the reference for every check."""
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return [session.run(["logits"], feeds)[0] for feeds in feeds_list]
    try:
        import openvino as ov
    except ImportError:
        raise UsageError("neither onnxruntime nor openvino is installed",
                         "pip install 'roberta-deploy[onnxruntime]' or 'roberta-deploy[openvino]'") from None
    compiled = ov.Core().compile_model(str(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return [compiled(feeds)[0] for feeds in feeds_list]
