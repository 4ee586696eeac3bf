"""The torch backend: bundles of checkpoint weights run by PyTorch, verified like every bundle; the
refusals that name the alternative; the runtime without OpenVINO; and the CUDA path (skipped without a GPU)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from roberta_deploy.backends import get_backend
from roberta_deploy.backends.torch import TorchEngine, TorchRunner, _pad, cpu_has_native_bf16, cuda_device_count
from roberta_deploy.build.bundle import BuildOptions, build_engine
from roberta_deploy.cli import app
from roberta_deploy.data import read_dataset
from roberta_deploy.errors import ModelLoadError, UnsupportedPrecisionError, UsageError
from roberta_deploy.precision import TOLERANCES
from roberta_deploy.runtime.engine import Engine

HAS_CUDA = cuda_device_count() > 0
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
needs_cpu_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16/AMX)")
CPU_PRECISIONS = ["fp32", pytest.param("bf16", marks=needs_cpu_bf16)]


@pytest.fixture(scope="module")
def dev_texts(dev_tsv):
    return read_dataset(dev_tsv).texts[:96]


def transformers_logits(checkpoint: Path, engine: Engine, texts: list[str]) -> np.ndarray:
    """The checkpoint run by transformers as users run it (its default attention, 2-D mask), one text per call."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            feeds = engine.encoder.encode_padded([text]).as_feeds(engine.input_names)
            rows.append(model(**{name: torch.from_numpy(array) for name, array in feeds.items()}).logits[0].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("precision", CPU_PRECISIONS)
def test_a_torch_bundle_builds_and_verifies_on_the_cpu(bundle_factory, precision):
    bundle = bundle_factory("torch", precision)
    manifest = json.loads((bundle / "manifest.json").read_text())
    check = manifest["checks"]["against_fp32_reference"]
    assert (manifest["backend"], manifest["precision"], manifest["device"]) == ("torch", precision, "cpu")
    assert check["passed"] and check["max_abs_logit_diff"] <= check["tolerance"] and check["texts"] == 64
    assert {"config.json", "model.safetensors"} <= set(manifest["files"]) and "model.onnx" not in manifest["files"]
    assert manifest["backend_settings"]["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]


@pytest.mark.parametrize("model", ["bert", "roberta", "distilbert"])
def test_fp32_logits_equal_the_transformers_model(bundle_factory, tiny_checkpoints, dev_texts, model):
    engine = Engine.load(bundle_factory("torch", "fp32", model=model))
    expected = transformers_logits(tiny_checkpoints[model], engine, dev_texts)
    predictions = engine.predict(dev_texts, batch_size=16)  # bucketed and padded: the mask must hide the padding
    assert np.abs(predictions.logits - expected).max() <= TOLERANCES["fp32"].bound(expected)
    assert (predictions.labels == expected.argmax(1)).all()


@needs_cpu_bf16
def test_bf16_logits_stay_within_the_bf16_tolerance_of_transformers(bundle_factory, tiny_checkpoints, dev_texts):
    engine = Engine.load(bundle_factory("torch", "bf16"))
    assert engine.device_info()["dtype"] == "bfloat16"
    expected = transformers_logits(tiny_checkpoints["bert"], engine, dev_texts)
    predictions = engine.predict(dev_texts, batch_size=16)
    assert np.abs(predictions.logits - expected).max() <= TOLERANCES["bf16"].bound(expected)
    assert (predictions.labels == expected.argmax(1)).mean() >= 0.95


def test_the_backend_declares_what_it_computes_on_this_cpu():
    offered = get_backend("torch").precisions("cpu")
    assert "fp32" in offered and "fp16" not in offered and "int8" not in offered
    assert ("bf16" in offered) == cpu_has_native_bf16()


@pytest.mark.parametrize("precision, fragments", [
    ("fp16", ["no fast fp16 path on the CPU", "--device cuda", "use --precision"]),
    ("int8", ["--backend openvino --precision int8"])])
def test_precisions_it_cannot_run_on_the_cpu_are_refused_with_the_alternative(tiny_exports, tmp_path, precision,
                                                                            fragments):
    with pytest.raises(UnsupportedPrecisionError) as caught:
        build_engine(BuildOptions(export_dir=tiny_exports["bert"].folder, output=tmp_path / "b", backend="torch",
                                  precision=precision))
    for fragment in fragments:
        assert fragment in caught.value.fix
    alternative = "--precision bf16" if cpu_has_native_bf16() else "--precision fp32"
    assert precision != "fp16" or alternative in caught.value.fix
    assert not (tmp_path / "b").exists()


def test_bf16_is_refused_on_a_cpu_without_it(tiny_exports, tmp_path, monkeypatch):
    from roberta_deploy.backends import torch as torch_backend

    monkeypatch.setattr(torch_backend, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(UnsupportedPrecisionError, match="torch cannot build bf16") as caught:
        build_engine(BuildOptions(export_dir=tiny_exports["bert"].folder, output=tmp_path / "b", backend="torch",
                                  precision="bf16"))
    assert "no native bf16" in caught.value.fix and "--precision fp32" in caught.value.fix


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "(fix: " in lines[0], result.output
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_cuda_without_a_device_is_a_one_line_error(tiny_exports, bundle_factory, dev_tsv, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["build", "--export", str(tiny_exports["bert"].folder), "--output",
                                 str(tmp_path / "b"), "--backend", "torch", "--precision", "fp16", "--device", "cuda"])
    assert_one_line_error(result, "no CUDA device here", "use --device cpu")
    assert not (tmp_path / "b").exists()
    result = runner.invoke(app, ["infer", "--bundle", str(bundle_factory("torch", "fp32")), "--data", str(dev_tsv),
                                 "--output", str(tmp_path / "out"), "--device", "cuda"])
    assert_one_line_error(result, "no CUDA device here")
    assert not (tmp_path / "out").exists()


def test_cpu_only_backends_refuse_a_gpu_and_unknown_devices_are_named(tiny_exports, tmp_path):
    runner = CliRunner()
    base = ["build", "--export", str(tiny_exports["bert"].folder), "--output", str(tmp_path / "b")]
    assert_one_line_error(runner.invoke(app, base + ["--backend", "openvino", "--device", "cuda"]),
                          "openvino backend runs on cpu only", "--backend torch")
    assert_one_line_error(runner.invoke(app, base + ["--backend", "torch", "--device", "tpu"]), "unknown device 'tpu'")
    assert not (tmp_path / "b").exists()


def test_a_changed_checkpoint_is_refused_rather_than_shipped(tiny_checkpoints, dev_tsv, tmp_path):
    from roberta_deploy.build.export import ExportOptions, export_model

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoints["bert"], checkpoint)
    export_model(ExportOptions(model=str(checkpoint), output=tmp_path / "export", max_seq_length=32,
                               check_data=dev_tsv))
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "classifier_dropout": 0.5}))
    with pytest.raises(ModelLoadError, match="changed since"):
        build_engine(BuildOptions(export_dir=tmp_path / "export", output=tmp_path / "b", backend="torch"))
    assert not (tmp_path / "b").exists()


def test_loading_a_torch_bundle_prints_nothing(bundle_factory, capfd):
    engine = Engine.load(bundle_factory("torch", "fp32"))
    engine.predict(["酒店很好"])
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_perf_reports_the_device(bundle_factory):
    from roberta_deploy.jobs.perf import PerfOptions, run_benchmark

    report = run_benchmark(PerfOptions(bundle=bundle_factory("torch", "fp32"), duration=0.2, warmup=0.0,
                                       batch_size=2, seq_len=16))
    assert report.device["device"] == "cpu" and report.device["dtype"] == "float32"
    assert report.device["torch_threads"] >= 1 and report.calls > 0


# The runtime must load and run a torch bundle where OpenVINO (and ONNX Runtime) are not installed, as
# on the GPU machine. The child hides them from the import system, so `import openvino` fails and
# find_spec says "not installed", exactly as when the wheels are absent.
WITHOUT_OPENVINO = textwrap.dedent("""
    import json, sys
    from importlib.machinery import PathFinder

    HIDDEN = {"openvino", "onnxruntime", "nncf", "onnx"}

    class WithoutHidden(PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            return None if name.partition(".")[0] in HIDDEN else super().find_spec(name, path, target)

    sys.meta_path[:] = [WithoutHidden if finder is PathFinder else finder for finder in sys.meta_path]
    try:
        import openvino  # noqa: F401
        raise SystemExit("openvino is still importable")
    except ImportError:
        pass
    import roberta_deploy.runtime
    from roberta_deploy.runtime.engine import Engine

    loaded = {name.partition(".")[0] for name in sys.modules}
    heavy_at_import = sorted(loaded & ({"torch", "transformers"} | HIDDEN))
    predictions = Engine.load(sys.argv[1]).predict(sys.argv[2:])
    print(json.dumps({"logits": predictions.logits.tolist(), "heavy_at_import": heavy_at_import,
                      "hidden_loaded": sorted(HIDDEN & {name.partition(".")[0] for name in sys.modules})}))
""")


def test_the_runtime_runs_a_torch_bundle_without_openvino_or_onnxruntime(bundle_factory, dev_texts):
    bundle = bundle_factory("torch", "fp32")
    texts = dev_texts[:5]
    result = subprocess.run([sys.executable, "-c", WITHOUT_OPENVINO, str(bundle), *texts], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy_at_import"] == [] and report["hidden_loaded"] == []
    expected = Engine.load(bundle).predict(texts).logits
    assert np.abs(np.asarray(report["logits"]) - expected).max() <= TOLERANCES["fp32"].bound(expected)


def test_padding_to_a_graph_shape_changes_no_real_row(bundle_factory, dev_texts):
    """What the CUDA-graph path does to each batch (rows to a power of two, columns to a multiple of 16),
    checked here on the CPU: filler rows and masked columns leave the real rows' logits alone."""
    engine = Engine.load(bundle_factory("torch", "fp32"))
    torch_engine: TorchEngine = engine._backend_engine
    runner = TorchRunner(torch_engine)
    feeds = engine.encoder.encode_padded(dev_texts[:5]).as_feeds(engine.input_names)
    shape = runner._graph_shape(*feeds["input_ids"].shape)
    assert shape[0] == 8 and shape[1] % 16 == 0 and shape[1] >= feeds["input_ids"].shape[1]
    padded = _pad(feeds, shape, torch_engine.pad_token_id)
    assert padded["attention_mask"][5:, 0].all() and not padded["attention_mask"][5:, 1:].any()
    direct, through_padding = runner.infer(feeds), runner.infer(padded)[:5]
    assert np.abs(direct - through_padding).max() <= TOLERANCES["fp32"].bound(direct)


def test_graph_shapes_stay_inside_the_profile(bundle_factory):
    engine = Engine.load(bundle_factory("torch", "fp32", max_batch=48, max_seq=72))
    runner = TorchRunner(engine._backend_engine)
    assert runner._graph_shape(33, 65) == (48, 72)  # capped at the profile, never past it
    assert runner._graph_shape(1, 1) == (1, 16)
    assert runner._graph_shape(17, 17) == (32, 32)


# ---- the GPU half: these run only where PyTorch sees a CUDA device -------------------------------------

@pytest.fixture(scope="module")
def cuda_bundle(tiny_exports, tmp_path_factory, dev_tsv):
    def build(precision: str) -> Path:
        output = tmp_path_factory.mktemp("cuda") / f"torch-{precision}"
        build_engine(BuildOptions(export_dir=tiny_exports["bert"].folder, output=output, backend="torch",
                                  precision=precision, device="cuda", calibration_data=dev_tsv))
        return output
    return build


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_bundles_build_verify_and_capture_graphs(cuda_bundle, dev_texts, precision):
    bundle = cuda_bundle(precision)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["device"] == "cuda" and manifest["checks"]["against_fp32_reference"]["passed"]
    engine = Engine.load(bundle)
    reference = Engine.load(bundle, device="cpu") if precision != "fp16" else None
    predictions = engine.predict(dev_texts, batch_size=16)
    info = engine.device_info()
    assert info["device"].startswith("cuda") and info["name"] and info["memory_bytes"] > 0
    assert info["cuda_graphs"]["captured"] > 0 and info["cuda_graphs"]["capture_failures"] == []
    if reference is not None:
        expected = reference.predict(dev_texts, batch_size=16).logits
        assert np.abs(predictions.logits - expected).max() <= TOLERANCES[precision].bound(expected)


@needs_cuda
def test_a_replayed_graph_gives_what_the_eager_model_gives(cuda_bundle, dev_texts):
    import torch

    engine = Engine.load(cuda_bundle("fp16"))
    context = engine.create_context()
    feeds = engine.encoder.encode_padded(dev_texts[:7]).as_feeds(engine.input_names)
    first = context.run(feeds["input_ids"], feeds["attention_mask"], feeds.get("token_type_ids"))
    second = context.run(feeds["input_ids"], feeds["attention_mask"], feeds.get("token_type_ids"))  # replayed
    backend_engine = engine._backend_engine
    with torch.inference_mode():
        eager = backend_engine.forward({name: torch.from_numpy(array).to(backend_engine.device)
                                        for name, array in feeds.items()}).float().cpu().numpy()
    assert np.array_equal(first, second)
    assert np.abs(second - eager).max() <= TOLERANCES["fp16"].bound(eager)


@needs_cuda
def test_perf_reports_the_gpu(cuda_bundle):
    from roberta_deploy.jobs.perf import PerfOptions, run_benchmark

    report = run_benchmark(PerfOptions(bundle=cuda_bundle("fp16"), duration=0.5, warmup=0.2, batch_size=8))
    assert report.device["name"] and report.device["memory_bytes"] > 0


def test_an_unknown_device_is_refused_at_load(bundle_factory):
    with pytest.raises(UsageError, match="unknown device"):
        Engine.load(bundle_factory("torch", "fp32"), device="npu")


def test_the_text_classification_pipeline_runs_a_torch_bundle_and_names_a_missing_gpu(bundle_factory, tmp_path):
    from roberta_deploy import pipeline

    with pipeline(str(bundle_factory("torch", "fp32")), device="cpu") as classify:
        assert classify.engine.device == "cpu"
        assert classify("酒店很干净")[0]["label"] in ("negative", "positive")
    if not HAS_CUDA:
        with pytest.raises(UsageError, match="no CUDA device"):
            pipeline(str(bundle_factory("torch", "fp32")), device="cuda")


def test_an_fp16_bundle_is_refused_on_the_cpu_at_load(bundle_factory, tmp_path):
    # An fp16 bundle can only be built on a GPU; its manifest is all that differs from an fp32 one.
    bundle = tmp_path / "fp16"
    shutil.copytree(bundle_factory("torch", "fp32"), bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "precision": "fp16", "device": "cuda"}))
    with pytest.raises(UnsupportedPrecisionError, match="fp16 torch bundle cannot run on cpu") as caught:
        Engine.load(bundle, device="cpu")
    assert "fp16 is for --device cuda" in caught.value.fix


def test_a_torch_bundle_is_a_checkpoint_transformers_loads_as_it_is(bundle_factory, dev_texts):
    import transformers

    bundle = bundle_factory("torch", "fp32")
    theirs = transformers.pipeline("text-classification", model=str(bundle), device="cpu")
    ours = Engine.load(bundle).predict(dev_texts[:16])
    assert [row["label"] for row in theirs(dev_texts[:16], truncation=True, max_length=128)] == \
        [ours.label_names[label] for label in ours.labels]
