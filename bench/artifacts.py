"""The files every configuration of bench/compare.py runs from, built once into a cache folder.

One random BERT-base checkpoint (fixed seed) is the source of all of them: the roberta-deploy export
and bundles are made with the package API, the peers' ONNX Runtime and OpenVINO models the way their
own tools would make them. Each artifact is built under a temporary name and renamed when complete,
so an interrupted run never leaves half a model in the cache.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from roberta_deploy.atomic import atomic_directory

VOCAB_PATH = Path("/work/shared/data/vocab/bert-base-chinese-vocab.txt")
MODEL_SEED = 0
MAX_SEQ_LENGTH = 128
# BERT-base: what the speed targets are stated for.
HIDDEN_SIZE = 768
NUM_LAYERS = 12
NUM_HEADS = 12
INTERMEDIATE_SIZE = 3072
LABELS = ("negative", "positive")
PEER_CALIBRATION_SAMPLES = 128  # texts for the peers' int8 calibration, as many as the bundle's
PEER_CALIBRATION_BATCH = 8
CENTRING_SAMPLES = 128  # texts the random classifier's decision boundary is centred on
RECIPE_VERSION = 2  # bump when a recipe below changes, so stale cached models are not reused


@dataclass(frozen=True)
class ArtifactPaths:
    """Where each prepared model lives under the cache root (--workdir)."""

    cache_root: Path

    @property
    def folder(self) -> Path:  # one folder per recipe version: a changed recipe never reuses old models
        return self.cache_root / f"recipe-{RECIPE_VERSION}"

    @property
    def checkpoint(self) -> Path:  # Hugging Face folder: config, weights, vocab.txt, tokenizer_config.json
        return self.folder / "checkpoint"

    @property
    def export(self) -> Path:  # roberta-deploy export: model.onnx + tokenizer + manifest
        return self.folder / "export"

    @property
    def ort_fp32(self) -> Path:
        return self.folder / "onnxruntime-fp32" / "model.onnx"

    @property
    def ort_int8(self) -> Path:
        return self.folder / "onnxruntime-int8" / "model.onnx"

    @property
    def openvino_int8(self) -> Path:
        return self.folder / "openvino-int8-nncf" / "model.xml"

    def bundle(self, precision: str) -> Path:
        return self.folder / f"bundle-openvino-{precision}"


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries the markdown table."""
    print(f"[compare] {message}", file=sys.stderr, flush=True)


def _is_cached(folder: Path, what: str) -> bool:
    if folder.is_dir():
        log(f"{what}: cached in {folder}")
        return True
    log(f"{what}: building into {folder}")
    return False


def _cached(folder: Path, what: str, build: Callable[[Path], None]) -> None:
    """Build `folder` with build(temporary_folder) unless a complete copy is already cached."""
    if not _is_cached(folder, what):
        with atomic_directory(folder, overwrite=True) as temporary:
            build(temporary)


def prepare_checkpoint(paths: ArtifactPaths, centring_texts: list[str]) -> None:
    _cached(paths.checkpoint, "random BERT-base checkpoint",
            lambda folder: _write_random_checkpoint(folder, centring_texts))


def _write_random_checkpoint(folder: Path, centring_texts: list[str]) -> None:
    """BertForSequenceClassification with seeded random weights, plus a folder tokenizer.

    The tokenizer is loaded from the folder (vocab.txt + tokenizer_config.json): in transformers 5,
    BertTokenizerFast(vocab_file=...) ignores the file and maps every token to [UNK].
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    shutil.copyfile(VOCAB_PATH, folder / "vocab.txt")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}, indent=2) + "\n", encoding="utf-8")
    vocab_size = len(VOCAB_PATH.read_text(encoding="utf-8").split("\n")) - 1  # split on \n only: U+2028 is a token
    config = BertConfig(vocab_size=vocab_size, hidden_size=HIDDEN_SIZE, num_hidden_layers=NUM_LAYERS,
                        num_attention_heads=NUM_HEADS, intermediate_size=INTERMEDIATE_SIZE,
                        max_position_embeddings=512, num_labels=len(LABELS), pad_token_id=0,
                        id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)},
                        architectures=["BertForSequenceClassification"])
    torch.manual_seed(MODEL_SEED)
    model = BertForSequenceClassification(config).eval()
    _centre_classifier(model, load_tokenizer(folder), centring_texts)
    model.save_pretrained(str(folder))


def _centre_classifier(model, tokenizer, texts: list[str]) -> None:
    """Shift the classifier bias so that half of real texts fall on each side of the decision boundary.

    A randomly initialised classifier gives every review the same label, which would make "agreement
    with fp32" 100% for any engine, however wrong its logits. Centred, labels depend on the text, and
    an engine whose logits drift flips the reviews near the boundary, as a trained model's would.
    """
    import torch

    differences = []
    with torch.inference_mode():
        for start in range(0, len(texts), 16):
            inputs = tokenizer(texts[start:start + 16], padding=True, truncation=True, max_length=MAX_SEQ_LENGTH,
                               return_tensors="pt")
            logits = model(**inputs).logits
            differences.append((logits[:, 1] - logits[:, 0]).numpy())
        median = float(np.median(np.concatenate(differences)))
        model.classifier.bias[0] += median / 2
        model.classifier.bias[1] -= median / 2


def load_tokenizer(checkpoint: Path):
    """The checkpoint's fast tokenizer, refused if real text comes out as mostly [UNK]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    ids = tokenizer("这间酒店环境和服务态度亦算不错", add_special_tokens=False)["input_ids"]
    if not ids or sum(token == tokenizer.unk_token_id for token in ids) > len(ids) // 2:
        raise RuntimeError(f"the tokenizer in {checkpoint} maps Chinese text to [UNK]; check vocab.txt")
    return tokenizer


def prepare_export(paths: ArtifactPaths, check_data: Path) -> None:
    from roberta_deploy.build.export import ExportOptions, export_model

    if _is_cached(paths.export, "roberta-deploy export (ONNX, checked against PyTorch)"):
        return
    # export_model writes through a temporary folder itself, so it may target the cache name directly
    export_model(ExportOptions(model=str(paths.checkpoint), output=paths.export, max_seq_length=MAX_SEQ_LENGTH,
                               check_data=check_data))


def prepare_bundle(paths: ArtifactPaths, precision: str, calibration_data: Path) -> dict:
    """An OpenVINO bundle with dynamic shapes, built and verified by the package's build_engine."""
    from roberta_deploy.build.bundle import BuildOptions, build_engine
    from roberta_deploy.manifest import KIND_BUNDLE, read_manifest

    folder = paths.bundle(precision)
    if not _is_cached(folder, f"roberta-deploy openvino {precision} bundle (build_engine)"):
        build_engine(BuildOptions(export_dir=paths.export, output=folder, backend="openvino", precision=precision,
                                  dynamic_shape=True, batch_size=32, calibration_data=calibration_data))
    return read_manifest(folder, KIND_BUNDLE, verify_files=False)


def prepare_ort_fp32(paths: ArtifactPaths) -> None:
    """Transformer fusions as Optimum's ORTOptimizer applies them at O2 (attention, LayerNorm, GELU)."""
    from onnxruntime.transformers.optimizer import optimize_model

    def build(temporary: Path) -> None:
        optimized = optimize_model(str(paths.export / "model.onnx"), model_type="bert", num_heads=NUM_HEADS,
                                   hidden_size=HIDDEN_SIZE, opt_level=2, use_gpu=False)
        optimized.save_model_to_file(str(temporary / paths.ort_fp32.name))
        fused = {name: count for name, count in optimized.get_fused_operator_statistics().items() if count}
        (temporary / "fusions.json").write_text(json.dumps(fused, indent=2) + "\n", encoding="utf-8")

    _cached(paths.ort_fp32.parent, "ONNX Runtime fp32 (transformer optimizer)", build)


def prepare_ort_int8(paths: ArtifactPaths) -> None:
    """Dynamic int8 of the fused model, with the settings of Optimum's AutoQuantizationConfig.avx512_vnni
    (is_static=False, per_channel=False): int8 symmetric weights, uint8 activations, MatMul and Add."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def build(temporary: Path) -> None:
        quantize_dynamic(str(paths.ort_fp32), str(temporary / paths.ort_int8.name), per_channel=False,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Add"],
                         extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                        # fused com.microsoft ops have no type info without this
                                        "DefaultTensorType": onnx.TensorProto.FLOAT})

    _cached(paths.ort_int8.parent, "ONNX Runtime int8 (quantize_dynamic)", build)


def prepare_openvino_int8(paths: ArtifactPaths, calibration_texts: list[str]) -> None:
    """NNCF post-training int8 of the exported ONNX, as NNCF's BERT examples do it: transformer preset,
    calibration on real texts padded to 128. The IR keeps a dynamic batch so latency and throughput
    runs can reshape it."""
    import nncf
    import openvino as ov

    def build(temporary: Path) -> None:
        core = ov.Core()
        model = core.read_model(str(paths.export / "model.onnx"))
        model.reshape({port.get_any_name(): ov.PartialShape([-1, MAX_SEQ_LENGTH]) for port in model.inputs})
        feeds = padded_feed_batches(load_tokenizer(paths.checkpoint), calibration_texts, PEER_CALIBRATION_BATCH,
                                    [port.get_any_name() for port in model.inputs])
        with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars must not reach the table on stdout
            quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(feeds))
        ov.save_model(quantized, str(temporary / paths.openvino_int8.name), compress_to_fp16=False)

    _cached(paths.openvino_int8.parent, "OpenVINO int8 (NNCF)", build)


def padded_feed_batches(tokenizer, texts: list[str], batch_size: int, input_names: list[str]) -> list[dict]:
    """Texts tokenized in batches, each padded to MAX_SEQ_LENGTH: int64 (batch, 128) per input name."""
    feeds = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start:start + batch_size], padding="max_length", truncation=True,
                            max_length=MAX_SEQ_LENGTH, return_tensors="np")
        feeds.append({name: np.asarray(encoded[name], dtype=np.int64) for name in input_names})
    return feeds
