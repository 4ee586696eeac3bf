import json

import numpy as np
import onnx
import pytest

from roberta_deploy.errors import BundleError, ModelLoadError, UsageError
from roberta_deploy.build.export import ExportArtifact, ExportOptions, export_model


@pytest.mark.parametrize("model", ["bert", "roberta", "distilbert"])
def test_export_matches_pytorch_and_describes_itself(tiny_exports, model):
    artifact = tiny_exports[model]
    manifest = artifact.manifest
    check = manifest["checks"]["onnx_vs_pytorch"]
    assert check["passed"] and check["max_abs_logit_diff"] <= check["tolerance"] < 1e-3
    assert check["texts"] == 32
    assert manifest["labels"] == ["negative", "positive"]
    assert manifest["pad_token_id"] == 0
    graph = onnx.load(str(artifact.onnx_path)).graph
    assert [node.name for node in graph.input] == manifest["inputs"]
    dims = [dim.dim_param for dim in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "sequence"]
    # DistilBERT has no token_type_ids; BERT and RoBERTa take them.
    assert ("token_type_ids" in manifest["inputs"]) == (model != "distilbert")


def test_runtime_tokenizer_lower_cases_and_knows_chinese(tiny_exports):
    encoder = tiny_exports["bert"].text_encoder()
    encoded = encoder.encode(["酒店很好 GOOD"])
    ids = encoded.token_ids[0].tolist()
    assert ids[0] == 101 and ids[-1] == 102
    assert 100 not in ids  # no [UNK]: upper-case was lowered, each CJK char is its own token
    assert ids == encoder.encode(["酒店很好 good"]).token_ids[0].tolist()  # lower-cased
    assert len(encoder.encode(["酒店很好"]).token_ids[0]) == 2 + 4


def test_texts_past_max_seq_length_are_truncated_and_flagged(tiny_exports):
    encoder = tiny_exports["bert"].text_encoder(max_seq_length=16)
    encoded = encoder.encode(["好" * 100, "好"])
    assert encoded.lengths.tolist() == [16, 3]
    assert encoded.truncated.tolist() == [True, False]
    assert encoded.token_ids[0][-1] == 102


def test_missing_model_writes_nothing(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        export_model(ExportOptions(model=str(tmp_path / "missing"), output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_hub_id_without_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot fetch model"):
        export_model(ExportOptions(model="someone/not-cached-model", output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_overlong_max_seq_length_is_rejected(tiny_checkpoints, tmp_path):
    with pytest.raises(UsageError, match="exceeds the model's 512 positions"):
        export_model(ExportOptions(model=str(tiny_checkpoints["bert"]), output=tmp_path / "out", max_seq_length=600))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_without_overwrite(tiny_checkpoints, tiny_exports, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("earlier work")
    from roberta_deploy.errors import OutputExistsError

    with pytest.raises(OutputExistsError):
        export_model(ExportOptions(model=str(tiny_checkpoints["bert"]), output=target))
    assert (target / "keep.txt").read_text() == "earlier work"


def test_export_folder_checks_its_files(tiny_exports, tmp_path):
    import shutil

    copy = tmp_path / "export"
    shutil.copytree(tiny_exports["bert"].folder, copy)
    with open(copy / "model.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="model.onnx is corrupt"):
        ExportArtifact.load(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert np.isfinite(manifest["checks"]["onnx_vs_pytorch"]["max_abs_logit_diff"])


def test_export_records_the_vocabulary_sizes_the_runtime_checks_against(tiny_exports):
    from transformers import AutoConfig

    assert tiny_exports["bert"].manifest["vocab_size"] == AutoConfig.from_pretrained(
        str(tiny_exports["bert"].manifest["source_model"])).vocab_size
    assert tiny_exports["bert"].manifest["type_vocab_size"] == 2
    assert tiny_exports["roberta"].manifest["type_vocab_size"] == 1


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tiny_checkpoints, tmp_path):
    import shutil

    from transformers import AutoConfig

    folder = tmp_path / "mismatched"
    shutil.copytree(tiny_checkpoints["bert"], folder)
    config = AutoConfig.from_pretrained(str(folder))
    config.vocab_size = 1000  # the weights below are resized to match, the tokenizer is not
    from transformers import BertForSequenceClassification

    BertForSequenceClassification(config).save_pretrained(str(folder))
    with pytest.raises(ModelLoadError, match=r"has \d+ tokens but the model's embedding table only 1000"):
        export_model(ExportOptions(model=str(folder), output=tmp_path / "export"))
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".*"))
