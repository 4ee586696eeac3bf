"""Session fixtures: tiny random BERT, RoBERTa and DistilBERT classifiers built from the shared vocab,
their exports, and a few bundles. Everything else in the suite reuses these."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("ROBERTA_DEPLOY_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))
DEV_TSV = SHARED_DATA / "chnsenticorp" / "dev.tsv"
TRAIN_TSV = SHARED_DATA / "chnsenticorp" / "train.tsv"
VOCAB = SHARED_DATA / "vocab" / "bert-base-chinese-vocab.txt"
LABELS = {0: "negative", 1: "positive"}


def _tokenizer_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(VOCAB, folder / "vocab.txt")
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "BertTokenizer", "do_lower_case": true, "model_max_length": 512}', encoding="utf-8")


def make_checkpoint(folder: Path, model_type: str, seed: int = 0) -> Path:
    """A 2-layer, 64-wide random classifier of `model_type` with the bert-base-chinese vocab."""
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

    torch.manual_seed(seed)
    _tokenizer_folder(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    common = dict(vocab_size=21128, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    if model_type == "bert":
        model = BertForSequenceClassification(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                         intermediate_size=128, **common))
    elif model_type == "roberta":
        # pad_token_id must be the vocab's [PAD] (0): RoBERTa derives positions from it.
        model = RobertaForSequenceClassification(RobertaConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            pad_token_id=0, max_position_embeddings=514, type_vocab_size=1, **common))
    elif model_type == "distilbert":
        model = DistilBertForSequenceClassification(DistilBertConfig(dim=64, n_layers=2, n_heads=2, hidden_dim=128,
                                                                     pad_token_id=0, **common))
    else:
        raise ValueError(model_type)
    # Random classifier heads give logits near zero; scale them so labels are not coin flips.
    with torch.no_grad():
        head = model.classifier if model_type != "roberta" else model.classifier.out_proj
        head.weight.mul_(20.0)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not DEV_TSV.is_file():
        pytest.fail(f"shared data not found at {SHARED_DATA}; set ROBERTA_DEPLOY_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def dev_tsv(shared_data) -> Path:
    return DEV_TSV


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: make_checkpoint(root / name, name) for name in ("bert", "roberta", "distilbert")}


@pytest.fixture(scope="session")
def tiny_exports(tiny_checkpoints, tmp_path_factory, dev_tsv) -> dict:
    from roberta_deploy.build.export import ExportOptions, export_model

    root = tmp_path_factory.mktemp("exports")
    return {name: export_model(ExportOptions(model=str(folder), output=root / name, check_data=dev_tsv))
            for name, folder in tiny_checkpoints.items()}


@pytest.fixture(scope="session")
def bundle_factory(tiny_exports, tmp_path_factory, dev_tsv):
    """Build (once per distinct request) a bundle of the tiny BERT export."""
    from roberta_deploy.build.bundle import BuildOptions, build_engine

    root = tmp_path_factory.mktemp("bundles")
    cache: dict = {}

    def build(backend: str = "openvino", precision: str = "fp32", model: str = "bert", **shape) -> Path:
        key = (backend, precision, model, tuple(sorted(shape.items())))
        if key not in cache:
            output = root / f"{model}-{backend}-{precision}-{len(cache)}"
            build_engine(BuildOptions(export_dir=tiny_exports[model].folder, output=output, backend=backend,
                                      precision=precision, calibration_data=dev_tsv, calibration_samples=64,
                                      **shape))
            cache[key] = output
        return cache[key]

    return build
