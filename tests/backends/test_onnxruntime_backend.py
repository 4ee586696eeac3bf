"""ONNX Runtime's dynamic int8 (issue 21): built from the demo model without calibration, held to int8's tolerance
against fp32, self-described in its manifest, in agreement with fp32 on the demo samples; and the flag
combinations that have no dynamic build are one-line usage errors before any work."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, invoke

from roberta_deploy.build.bundle import BuildOptions, build_engine
from roberta_deploy.build.export import ExportOptions, export_model
from roberta_deploy.data import read_dataset
from roberta_deploy.defaults import DEMO_MODEL_DIR, DEMO_SAMPLES_PATH
from roberta_deploy.errors import EXIT_CODES, UsageError
from roberta_deploy.precision import TOLERANCES
from roberta_deploy.flags import available_cores
from roberta_deploy.runtime.batcher import Batcher
from roberta_deploy.runtime.engine import Engine

USAGE_EXIT = next(code for code, meaning in EXIT_CODES.items() if meaning.startswith("bad flags"))


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    return export_model(ExportOptions(model=str(DEMO_MODEL_DIR), output=tmp_path_factory.mktemp("demo") / "export",
                                      max_seq_length=128)).folder


@pytest.fixture(scope="module")
def demo_bundles(demo_export, tmp_path_factory):
    """The demo model's fp32 bundle and its dynamic int8 one (through the CLI, as a user builds it)."""
    root = tmp_path_factory.mktemp("bundles")
    build_engine(BuildOptions(export_dir=demo_export, output=root / "fp32", backend="onnxruntime"))
    result = invoke("build", "--export", demo_export, "--output", root / "dynamic", "--backend", "onnxruntime",
                    "--precision", "int8", "--quantization", "dynamic")
    assert result.exit_code == 0, result.output
    return root / "fp32", root / "dynamic", result.output


def test_a_dynamic_int8_build_passes_verification_and_records_its_mode(demo_bundles):
    _, dynamic, output = demo_bundles
    manifest = json.loads((dynamic / "manifest.json").read_text(encoding="utf-8"))
    check = manifest["checks"]["against_fp32_reference"]
    assert check["passed"] and check["max_abs_logit_diff"] <= check["tolerance"]
    assert check["tolerance"] >= TOLERANCES["int8"].absolute  # int8's own tolerance, not loosened
    assert manifest["precision"] == "int8" and manifest["quantization"] == "dynamic"
    quantization = manifest["backend_settings"]["quantization"]
    assert quantization["tool"] == "onnxruntime.quantization.quantize_dynamic" and quantization["mode"] == "dynamic"
    assert manifest["calibration"] is None  # nothing was calibrated
    assert "built onnxruntime int8 (dynamic) bundle" in output and ": passed" in output
    shown = invoke("inspect", dynamic)
    assert shown.exit_code == 0 and "quantize_dynamic" in shown.output


def test_dynamic_int8_predictions_agree_with_fp32_on_the_demo_samples(demo_bundles):
    fp32, dynamic, _ = demo_bundles
    texts = read_dataset(DEMO_SAMPLES_PATH).texts
    reference, quantized = (Engine.load(bundle).predict(texts) for bundle in (fp32, dynamic))
    assert len(texts) > 100
    assert float(np.mean(quantized.labels == reference.labels)) >= 0.98
    assert float(np.abs(quantized.probabilities - reference.probabilities).max()) < 0.1


def test_the_calibrated_int8_build_records_static(demo_export, tmp_path):
    manifest = build_engine(BuildOptions(export_dir=demo_export, output=tmp_path / "static", backend="onnxruntime",
                                         precision="int8", calibration_samples=16, verification_samples=16)).manifest
    assert manifest["quantization"] == "static" and manifest["calibration"]["texts"] == 16
    assert manifest["backend_settings"]["quantization"]["tool"] == "onnxruntime.quantization.quantize_static"


@pytest.mark.parametrize("flags, fragments", [
    (("--backend", "onnxruntime", "--precision", "fp32", "--quantization", "dynamic"),
     ("--quantization dynamic applies to int8, not fp32", "pass --precision int8")),
    (("--backend", "onnxruntime", "--quantization", "dynamic"), ("applies to int8, not fp32",)),
    (("--backend", "onnxruntime", "--precision", "auto", "--quantization", "dynamic"),
     ("--precision auto already tries every int8 mode",)),
    (("--backend", "openvino", "--precision", "int8", "--quantization", "dynamic"),
     ("the openvino backend has no dynamic int8 quantization", "pass --backend onnxruntime")),
    (("--backend", "torch", "--precision", "int8", "--quantization", "dynamic"), ("torch cannot build int8",)),
    (("--backend", "onnxruntime", "--precision", "int8", "--quantization", "weights"),
     ("unknown quantization 'weights'", "use one of static, dynamic")),
])
def test_a_mode_without_a_dynamic_build_is_a_usage_error(demo_export, tmp_path, flags, fragments):
    result = invoke("build", "--export", demo_export, "--output", tmp_path / "b", *flags)
    assert result.exit_code == USAGE_EXIT
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "b").exists()


def test_the_library_refuses_the_same_before_any_work(demo_export, tmp_path):
    with pytest.raises(UsageError, match="has no dynamic int8"):
        build_engine(BuildOptions(export_dir=demo_export, output=tmp_path / "b", backend="openvino",
                                  precision="int8", quantization="dynamic"))
    assert not (tmp_path / "b").exists()


def test_precision_auto_times_both_int8_modes_and_the_chosen_bundle_says_which(tiny_exports, samples_tsv, tmp_path):
    result = invoke("build", "--export", tiny_exports["bert"].folder, "--output", tmp_path / "auto", "--backend",
                    "onnxruntime", "--precision", "auto", "--calibration-data", samples_tsv,
                    "--calibration-samples", 32, "--timing-cap", 1)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text(encoding="utf-8"))
    rows = manifest["precision_selection"]["candidates"]
    assert [(row["precision"], row.get("quantization")) for row in rows] == [
        ("fp32", None), ("int8", None), ("int8", "dynamic")]
    assert "  int8 (dynamic): accuracy" in result.output
    chosen = next(row for row in rows if row["verdict"].startswith("chosen"))
    expected_mode = (chosen.get("quantization") or "static") if chosen["precision"] == "int8" else None
    assert manifest.get("quantization") == expected_mode


class RecordedSession:
    """Wraps an ONNX Runtime session's run: records each call's thread and shape; `gate` (an Event) holds runs
    until the test opens it."""

    def __init__(self, session, calls: list, name: str, gate=None):
        self.session, self.calls, self.name, self.gate = session, calls, name, gate
        self.real_run = session.run
        session.run = self.run

    def run(self, outputs, feeds):
        self.calls.append((self.name, threading.current_thread().name, feeds["input_ids"].shape))
        if self.gate is not None:
            assert self.gate.wait(60), "the test never opened the gate"
        return self.real_run(outputs, feeds)


def two_context_engine(bundle: Path) -> Engine:
    if available_cores() < 2:
        pytest.skip("two contexts need two cores")
    return Engine.load(bundle, contexts=2, cpu_threads=2)


def test_a_lone_run_gets_every_thread_and_concurrent_runs_share_a_one_thread_session(demo_bundles):
    engine = two_context_engine(demo_bundles[0])
    sessions = engine._backend_engine
    alone, shared = sessions.alone_sessions[None], sessions.shared_sessions[None]
    assert alone.get_session_options().intra_op_num_threads == 2
    assert shared.get_session_options().intra_op_num_threads == 1
    # memory patterns fragmented the arenas under many concurrent shapes (docs/serving.md)
    assert not alone.get_session_options().enable_mem_pattern and not shared.get_session_options().enable_mem_pattern
    texts = read_dataset(DEMO_SAMPLES_PATH).texts[:6]
    reference = engine.predict(texts).logits
    calls: list = []
    gate = threading.Event()
    RecordedSession(alone, calls, "alone", gate)
    RecordedSession(shared, calls, "shared")
    encoded = engine.encoder.encode(texts)
    batch = engine.encoder.pad(encoded, range(len(texts)), int(encoded.lengths.max()))
    first, second = engine.create_context(), engine.create_context()
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(first.run, batch.input_ids, batch.attention_mask, batch.token_type_ids)
        deadline = time.monotonic() + 60
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [name for name, _, _ in calls] == ["alone"]  # nothing else running: both threads
        beside = second.run(batch.input_ids, batch.attention_mask, batch.token_type_ids)  # one is in progress
        assert [name for name, _, _ in calls] == ["alone", "shared"]
        gate.set()
        logits = held.result(60)
    for result in (logits, beside):
        np.testing.assert_allclose(result, reference, atol=TOLERANCES["fp32"].bound(reference))
    third = second.run(batch.input_ids, batch.attention_mask, batch.token_type_ids)  # alone again
    assert [name for name, _, _ in calls][-1] == "alone"
    np.testing.assert_allclose(third, reference, atol=TOLERANCES["fp32"].bound(reference))
    engine.close()


def test_onnx_runtime_batches_at_most_1024_tokens_unless_told_otherwise(demo_bundles):
    # Measured: runs of 1,024 tokens did more texts/s than 2,048 or 4,096 (docs/serving.md).
    engine = two_context_engine(demo_bundles[0])
    assert engine.run_token_limit == 1024
    texts = read_dataset(DEMO_SAMPLES_PATH).texts
    calls: list = []
    RecordedSession(engine._backend_engine.alone_sessions[None], calls, "alone")
    engine.predict(texts * 40, batch_size=32)  # 32 rows would fit 4,096 tokens at the demo's lengths
    assert calls and max(rows * length for _, _, (rows, length) in calls) <= 1024, calls
    with Batcher(engine, contexts=2) as batcher:
        assert batcher.max_batch_tokens == 1024
    with Batcher(engine, contexts=2, max_batch_tokens=3000) as batcher:
        assert batcher.max_batch_tokens == 3000
    engine.close()


def test_a_server_batcher_reserves_its_largest_batch_on_both_session_sets(demo_bundles):
    # A server's batcher runs its largest batch before it is ready (memory taken at start, not minutes into
    # serving); with two contexts the shared session must take it from both at once, as serving will.
    engine = two_context_engine(demo_bundles[1])
    calls: list = []
    RecordedSession(engine._backend_engine.alone_sessions[None], calls, "alone")
    RecordedSession(engine._backend_engine.shared_sessions[None], calls, "shared")
    batcher = Batcher(engine, contexts=2, max_batch_tokens=512).start(reserve_largest_batch=True)
    try:
        largest = (512 // engine.max_seq_length, engine.max_seq_length)
        runs = [(name, thread) for name, thread, shape in calls if shape == largest]
        assert sorted(name for name, _ in runs) == ["alone", "shared", "shared"], calls
        assert len({thread for name, thread in runs if name == "shared"}) == 2  # from two threads at once
        assert batcher.submit("好").result(timeout=60).logits.shape == (1, 2)
    finally:
        batcher.close()
        engine.close()


def test_eval_scores_dynamic_int8_when_asked_and_says_so(tmp_path):
    output = tmp_path / "eval"
    result = invoke("eval", "--data", DEMO_SAMPLES_PATH, "--output", output, "--backend", "onnxruntime",
                    "--precisions", "fp32,int8", "--quantization", "dynamic", "--batch-sizes", "32",
                    "--max-seq-length", "64")
    assert result.exit_code == 0, result.output
    report = json.loads((output / "accuracy.json").read_text(encoding="utf-8"))
    assert report["int8_quantization"] == "dynamic"
    assert [row["precision"] for row in report["rows"]] == ["fp32", "int8"]
    manifest = json.loads((output / report["bundles"]["int8"] / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["quantization"] == "dynamic" and manifest["calibration"] is None
    assert report["rows"][1]["build_check"]["passed"]
    assert "int8 quantization dynamic" in (output / "accuracy.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("arguments, message", [
    (("--backend", "openvino", "--precisions", "fp32,int8"), "the openvino backend has no dynamic int8 quantization"),
    (("--backend", "onnxruntime", "--precisions", "fp32"), "which --precisions leaves out"),
])
def test_eval_refuses_dynamic_int8_it_cannot_build_before_any_work(tmp_path, arguments, message):
    result = invoke("eval", "--data", DEMO_SAMPLES_PATH, "--output", tmp_path / "eval", "--quantization", "dynamic",
                    *arguments)
    assert_one_line_error(result, message)
    assert result.exit_code == USAGE_EXIT
    assert not (tmp_path / "eval").exists()


def test_run_times_the_dynamic_int8_bundle_when_asked(tmp_path):
    output = tmp_path / "run"
    result = invoke("run", "--output", output, "--backend", "onnxruntime", "--precisions", "fp32,int8",
                    "--quantization", "dynamic", "--batch-sizes", "32", "--max-seq-length", "64", "--no-sweep",
                    "--perf-seconds", "0.5")
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    assert summary["int8_quantization"] == "dynamic"
    assert [row["precision"] for row in summary["rows"]] == ["fp32", "int8"]
    assert all(row["throughput_texts_per_second"] > 0 for row in summary["rows"])
    assert "int8 quantization dynamic" in (output / "summary.md").read_text(encoding="utf-8")
