import json
import shutil

import numpy as np
import pytest

from roberta_deploy.backends import default_precisions, get_backend, offered_precisions
from roberta_deploy.build.bundle import BuildOptions, build_engine
from roberta_deploy.runtime.engine import Engine
from roberta_deploy.errors import BundleError, ShapeError, UnsupportedPrecisionError, UsageError
from roberta_deploy.precision import TOLERANCES

# What this CPU offers, asked of the machine: an AMX Xeon, a Zen 4 and a Zen 3 each run what applies to them.
OFFERED = [(backend, precision) for backend in ("openvino", "onnxruntime") for precision in offered_precisions(backend)]
# OpenVINO's OPTIMIZATION_CAPABILITIES on the CPUs this project meets; reported instead of this CPU's, so
# the refusal paths run everywhere.
# (capabilities, what builds, what run/eval build by default: fp16 measured slower than bf16 where both exist)
CPU_CAPABILITIES = {
    "Zen 3 (AVX2 only)": ({"FP32", "INT8"}, ("fp32", "int8"), ("fp32", "int8")),
    "Zen 4 / Sapphire Rapids": ({"FP32", "BF16", "INT8"}, ("fp32", "bf16", "int8"), ("fp32", "bf16", "int8")),
    "Xeon with AVX512-FP16": ({"FP32", "BF16", "FP16", "INT8"}, ("fp32", "fp16", "bf16", "int8"),
                              ("fp32", "bf16", "int8")),
}


@pytest.mark.parametrize("backend, precision", OFFERED)
def test_every_offered_combination_builds_within_tolerance(bundle_factory, backend, precision):
    bundle = bundle_factory(backend, precision)
    manifest = json.loads((bundle / "manifest.json").read_text())
    check = manifest["checks"]["against_fp32_reference"]
    assert manifest["backend"] == backend and manifest["precision"] == precision
    assert check["passed"] and check["max_abs_logit_diff"] <= check["tolerance"]
    assert check["texts"] == 64 and check["label_agreement"] >= 0.9
    assert manifest["checks"]["onnx_vs_pytorch"]["passed"]
    assert manifest["source_model_sha256"] and manifest["library_versions"]["numpy"]


@pytest.mark.parametrize("model", ["roberta", "distilbert"])
def test_other_architectures_build_and_run(bundle_factory, model):
    engine = Engine.load(bundle_factory("openvino", "int8", model=model))
    predictions = engine.predict(["酒店很好", "太差了"])
    assert predictions.logits.shape == (2, 2)


@pytest.mark.parametrize("cpu", CPU_CAPABILITIES)
def test_what_a_cpu_cannot_run_is_refused_and_only_what_it_offers_is_suggested(tiny_exports, tmp_path,
                                                                                monkeypatch, cpu):
    from roberta_deploy.backends import openvino as openvino_backend

    capabilities, offered, defaults = CPU_CAPABILITIES[cpu]
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda: capabilities)
    assert offered_precisions("openvino") == offered and default_precisions("openvino") == defaults
    assert get_backend("openvino").capabilities() == tuple(sorted(capabilities))
    assert offered_precisions("onnxruntime") == ("fp32", "int8")
    for backend in ("openvino", "onnxruntime"):
        for precision in ("fp16", "bf16"):
            if precision in offered_precisions(backend):
                continue
            with pytest.raises(UnsupportedPrecisionError) as caught:
                build_engine(BuildOptions(export_dir=tiny_exports["bert"].folder, output=tmp_path / "b",
                                          backend=backend, precision=precision))
            fix = caught.value.fix
            here, _, elsewhere = fix.partition("use --precision ")[2].partition(", or --backend openvino --precision ")
            suggested = {word.strip(",") for word in here.split() if word.strip(",") in ("fp32", "fp16", "bf16", "int8")}
            assert "fp32" in suggested and precision not in suggested, fix
            assert suggested <= set(offered_precisions(backend)), fix  # nothing this CPU refuses too
            assert not elsewhere or elsewhere in offered_precisions("openvino"), fix
            assert not (tmp_path / "b").exists()
    if "bf16" in offered:  # ORT has no bf16 kernels: point to the backend that has them here
        assert "--backend openvino --precision bf16" in get_backend("onnxruntime").unsupported_reason("bf16")


def test_vendor_alias_builds_the_canonical_precision(bundle_factory):
    bundle = bundle_factory("onnxruntime", "qint8_mixed_float16")
    assert json.loads((bundle / "manifest.json").read_text())["precision"] == "int8"


@pytest.mark.parametrize("field, value, message", [
    ("precision", "fp8", "unknown precision"), ("backend", "tensorrt", "unknown backend")])
def test_unknown_precision_or_backend(tiny_exports, tmp_path, field, value, message):
    options = {"export_dir": tiny_exports["bert"].folder, "output": tmp_path / "b", field: value}
    with pytest.raises(UsageError, match=message):
        build_engine(BuildOptions(**options))


def test_static_shape_pads_smaller_inputs_and_rejects_larger(bundle_factory):
    engine = Engine.load(bundle_factory("openvino", "fp32", dynamic_shape=False, batch_size=4, max_seq_length=32,
                                        seq_buckets=(16,)))
    assert engine.profile.static_seq_lengths == (16, 32)
    inputs = engine.encoder.encode_padded(["酒店很好", "太差了", "还行"])
    logits = engine.create_context().run(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)
    assert logits.shape == (3, 2)
    with pytest.raises(ShapeError, match=r"input shape \(5, 8\) is outside the bundle's static batch 4"):
        engine.create_context().run(np.ones((5, 8), np.int64), np.ones((5, 8), np.int64))
    with pytest.raises(ShapeError, match="outside"):
        engine.create_context().run(np.ones((1, 40), np.int64), np.ones((1, 40), np.int64))


def test_static_shapes_default_to_three_compiled_lengths(bundle_factory):
    engine = Engine.load(bundle_factory("openvino", "int8", dynamic_shape=False, batch_size=2, max_seq_length=64))
    assert engine.profile.static_seq_lengths == (16, 32, 64)
    single = Engine.load(bundle_factory("onnxruntime", "fp32", dynamic_shape=False, batch_size=2, seq_buckets=(128,)))
    assert single.profile.static_seq_lengths == (128,)
    predictions = engine.predict(["好", "好" * 20, "好" * 100])
    assert predictions.token_lengths.tolist() == [3, 22, 64]


def test_static_shape_gives_the_same_labels_as_dynamic(bundle_factory, samples_tsv):
    from roberta_deploy.data import read_dataset

    texts = read_dataset(samples_tsv).texts[:40]
    static = Engine.load(bundle_factory("onnxruntime", "fp32", dynamic_shape=False, batch_size=8, seq_buckets=(64,)))
    dynamic = Engine.load(bundle_factory("onnxruntime", "fp32"))
    difference = np.abs(static.predict(texts).logits - dynamic.predict(texts).logits).max()
    assert difference <= TOLERANCES["fp32"].absolute


def test_dynamic_ranges_are_enforced(bundle_factory):
    engine = Engine.load(bundle_factory("onnxruntime", "fp32", min_batch=2, max_batch=8, min_seq=4, max_seq=64))
    context = engine.create_context()
    ok = np.ones((2, 4), np.int64)
    assert context.run(ok, ok).shape == (2, 2)
    # Below the minimum (2, 4): padded up inside, filler rows dropped, masked columns change nothing.
    one = context.run(np.array([[101, 2000]]), np.ones((1, 2), np.int64))
    padded = context.run(np.array([[101, 2000, 0, 0]] * 2), np.array([[1, 1, 0, 0]] * 2))
    assert one.shape == (1, 2)
    assert np.abs(one - padded[:1]).max() <= TOLERANCES["fp32"].absolute
    with pytest.raises(ShapeError, match="outside"):
        context.run(np.ones((9, 8), np.int64), np.ones((9, 8), np.int64))


@pytest.mark.parametrize("flags, message", [
    ({"dynamic_shape": False, "min_batch": 2}, "describe dynamic shapes"),
    ({"dynamic_shape": True, "seq_buckets": (32,)}, "--seq-buckets is for static shapes"),
    ({"min_batch": 9, "max_batch": 4}, "batch range [9, 4] is empty"),
    ({"max_seq": 256}, "exceeds the export's max_seq_length"),
])
def test_contradictory_shape_flags_are_rejected(tiny_exports, tmp_path, flags, message):
    with pytest.raises(UsageError) as caught:
        build_engine(BuildOptions(export_dir=tiny_exports["bert"].folder, output=tmp_path / "b", **flags))
    assert message in caught.value.problem
    assert not (tmp_path / "b").exists()


def corrupt_copy(bundle, tmp_path, edit):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    edit(copy)
    return copy


def test_missing_or_corrupt_bundle_files_are_detected_by_hash(bundle_factory, tmp_path):
    bundle = bundle_factory("openvino", "fp32")
    missing = corrupt_copy(bundle, tmp_path / "a", lambda folder: (folder / "openvino_model.bin").unlink())
    with pytest.raises(BundleError, match="missing openvino_model.bin"):
        Engine.load(missing)

    def flip_byte(folder):
        data = bytearray((folder / "tokenizer" / "tokenizer.json").read_bytes())
        data[50] ^= 1
        (folder / "tokenizer" / "tokenizer.json").write_bytes(bytes(data))

    with pytest.raises(BundleError, match="tokenizer.json is corrupt"):
        Engine.load(corrupt_copy(bundle, tmp_path / "b", flip_byte))
    with pytest.raises(BundleError, match="manifest.json is corrupt"):
        Engine.load(corrupt_copy(bundle, tmp_path / "c", lambda folder: (folder / "manifest.json").write_text("{")))


def test_bundle_from_a_newer_schema_is_refused(bundle_factory, tmp_path):
    def bump(folder):
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["schema_version"] = 99
        (folder / "manifest.json").write_text(json.dumps(manifest))

    with pytest.raises(BundleError) as caught:
        Engine.load(corrupt_copy(bundle_factory("openvino", "fp32"), tmp_path, bump))
    assert "newer than this roberta-deploy understands" in caught.value.problem
    assert "upgrade roberta-deploy" in caught.value.fix


def test_an_export_is_not_a_bundle(tiny_exports):
    with pytest.raises(BundleError, match="is a 'export' folder, not a bundle"):
        Engine.load(tiny_exports["bert"].folder)


def test_drift_past_tolerance_fails_the_build_and_leaves_nothing(tiny_exports, tmp_path, monkeypatch):
    from roberta_deploy import precision
    from roberta_deploy.errors import NumericalCheckError

    # An impossible int8 tolerance stands in for a model that quantizes badly.
    monkeypatch.setitem(precision.TOLERANCES, "int8", precision.Tolerance(0.0, 0.0))
    with pytest.raises(NumericalCheckError, match="logits differ from fp32"):
        build_engine(BuildOptions(export_dir=tiny_exports["bert"].folder, output=tmp_path / "b",
                                  backend="onnxruntime", precision="int8", calibration_samples=16))
    assert list(tmp_path.iterdir()) == []
    kept = build_engine(BuildOptions(export_dir=tiny_exports["bert"].folder, output=tmp_path / "kept",
                                     backend="onnxruntime", precision="int8", calibration_samples=16,
                                     allow_tolerance_failure=True))
    assert kept.manifest["checks"]["against_fp32_reference"]["passed"] is False


def test_verification_reads_real_rows_against_their_own_gold_labels_when_min_batch_is_large(
        bundle_factory, samples_tsv):
    from roberta_deploy.build.bundle import _padded_batches, split_calibration
    from roberta_deploy.data import read_dataset

    bundle = bundle_factory("onnxruntime", "fp32", min_batch=20, max_batch=64)
    engine = Engine.load(bundle)
    texts = read_dataset(samples_tsv).texts[:50]
    batches = _padded_batches(engine.encoder, texts, engine.profile, engine.input_names, 16)
    assert [batch.texts for batch in batches] == [16, 16, 16, 2]
    assert all(batch.feeds["input_ids"].shape[0] == 20 for batch in batches)  # filler rows up to min_batch
    encoded = engine.encoder.encode(texts)
    real_rows = [row for batch in batches for row in batch.feeds["input_ids"][:batch.texts]]
    assert len(real_rows) == 50
    for row, ids in zip(real_rows, encoded.token_ids):  # the real rows are the texts, in order
        assert row[:len(ids)].tolist() == ids.tolist()

    manifest = json.loads((bundle / "manifest.json").read_text())
    check = manifest["checks"]["against_fp32_reference"]
    _, held_back = split_calibration(read_dataset(samples_tsv, label_names=engine.label_names), 64, 64)
    labels = engine.predict(held_back.texts).labels
    assert check["texts"] == 64
    assert check["accuracy"] == pytest.approx(float((labels == np.asarray(held_back.labels)).mean()))
