"""The command line end to end: each command's output, and one-line errors with no partial output."""

import json

import pytest
from typer.testing import CliRunner

from roberta_deploy.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and "(fix: " in lines[0]
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def cli_bundle(tiny_checkpoints, tmp_path_factory, samples_tsv):
    root = tmp_path_factory.mktemp("cli")
    result = invoke("export", "--model", tiny_checkpoints["bert"], "--output", root / "export",
                    "--check-data", samples_tsv, "--max-seq-length", 64)
    assert result.exit_code == 0, result.output
    assert "ONNX vs PyTorch max |diff|" in result.output
    result = invoke("build", "--export", root / "export", "--output", root / "bundle", "--backend", "openvino",
                    "--precision", "force_float32", "--calibration-data", samples_tsv)
    assert result.exit_code == 0, result.output
    assert "passed" in result.output
    return root / "bundle"


def test_infer_counts_every_row_of_the_dev_split(cli_bundle, dev_tsv, tmp_path):
    result = invoke("infer", "--bundle", cli_bundle, "--data", dev_tsv, "--output", tmp_path / "out",
                    "--batch-size", 32)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(rows) == metrics["examples"] == 1200
    assert [row["index"] for row in rows] == list(range(1200))
    correct = sum(row["label"] == row["gold"] for row in rows)
    assert metrics["correct"] == correct and metrics["accuracy"] == correct / 1200
    assert f"accuracy: {correct / 1200:.4f} ({correct}/1200)" in result.output
    # dev has texts far past 64 tokens: they are truncated and counted, not dropped.
    assert metrics["truncated"] == sum(row["truncated"] for row in rows) > 300
    assert all(abs(sum(row["probabilities"]) - 1) < 1e-4 for row in rows)


def test_streamed_infer_writes_what_the_whole_file_path_computes(cli_bundle, dev_tsv):
    # infer reads, classifies and writes a chunk at a time; with chunks far smaller than the file,
    # every row, index and metric is what classifying the whole file at once gives.
    import io

    from roberta_deploy.data import read_dataset, read_dataset_chunks
    from roberta_deploy.jobs.infer import classify_and_write, classify_dataset, prediction_rows
    from roberta_deploy.runtime.engine import THROUGHPUT, Engine

    with Engine.load(cli_bundle, hint=THROUGHPUT) as engine:
        dataset = read_dataset(dev_tsv, label_names=engine.label_names)
        whole = classify_dataset(engine, dataset)
        handle = io.StringIO()
        streamed = classify_and_write(engine, read_dataset_chunks(dev_tsv, label_names=engine.label_names,
                                                                  chunk_rows=100), handle)
    rows = [json.loads(line) for line in handle.getvalue().splitlines()]
    expected = list(prediction_rows(whole.predictions, dataset))
    assert [row["index"] for row in rows] == list(range(1200)) and [row["line"] for row in rows] == list(range(2, 1202))
    assert [(row["text"], row["label"], row["gold"]) for row in rows] == \
        [(row["text"], row["label"], row["gold"]) for row in expected]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(rows, expected)) < 1e-4
    ignored = {"elapsed_seconds", "texts_per_second"}
    assert {k: v for k, v in streamed.metrics.items() if k not in ignored} == \
        {k: v for k, v in whole.metrics.items() if k not in ignored}


def test_inspect_prints_the_manifest(cli_bundle):
    result = invoke("inspect", cli_bundle)
    assert result.exit_code == 0
    assert "openvino" in result.output and "against_fp32_reference" in result.output
    result = invoke("inspect", cli_bundle, "--json")
    assert json.loads(result.output)["precision"] == "fp32"


def test_perf_reports_latency_and_uses_real_lengths_with_data(cli_bundle, samples_tsv, tmp_path):
    result = invoke("perf", "--bundle", cli_bundle, "--duration", 0.3, "--warmup", 0.1, "--batch-size", 4,
                    "--json", tmp_path / "random.json")
    assert result.exit_code == 0, result.output
    assert "latency p99" in result.output and "throughput" in result.output
    random_report = json.loads((tmp_path / "random.json").read_text())
    assert random_report["mean_padded_length"] == 64 and random_report["calls"] > 0
    assert random_report["sequences"] == 4 * random_report["calls"]
    assert (random_report["hint"], random_report["threads"]) == ("latency", 1)
    result = invoke("perf", "--bundle", cli_bundle, "--duration", 0.3, "--warmup", 0, "--batch-size", 4,
                    "--data", samples_tsv, "--json", tmp_path / "data.json", "--iterations", 5,
                    "--hint", "throughput", "--cpu-threads", 2)
    assert result.exit_code == 0, result.output
    data_report = json.loads((tmp_path / "data.json").read_text())
    assert (data_report["hint"], data_report["threads"]) == ("throughput", 2)  # one context per core
    assert data_report["calls"] >= 5
    assert data_report["distinct_shapes"] > 1 and data_report["mean_padded_length"] < 64
    assert data_report["useful_tokens"] < data_report["sequences"] * 64


def test_eval_writes_the_accuracy_table_for_every_precision_this_cpu_offers(tiny_checkpoints, samples_tsv,
                                                                           tmp_path):
    from roberta_deploy.backends import default_precisions

    result = invoke("eval", "--model", tiny_checkpoints["bert"], "--data", samples_tsv, "--output", tmp_path / "eval",
                    "--batch-sizes", "1,32", "--max-seq-length", 64)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "accuracy.json").read_text())
    offered = default_precisions("openvino")
    assert offered[0] == "fp32" and "int8" in offered
    assert [(row["precision"], row["batch_size"]) for row in report["rows"]] == [
        (precision, batch) for precision in offered for batch in (1, 32)]
    for row in report["rows"]:
        assert row["examples"] == 202
        assert row["build_check"]["passed"]
    fp32 = report["rows"][:2]
    assert fp32[0]["correct"] == fp32[1]["correct"]  # batch size changes nothing at fp32
    assert "| int8 | 32 |" in (tmp_path / "eval" / "accuracy.md").read_text()
    from test_report import assert_self_contained_with_charts

    assert_self_contained_with_charts((tmp_path / "eval" / "report.html").read_text(encoding="utf-8"),
                                      ["chart-accuracy", "chart-throughput-batch", "chart-confusion-int8"])


@pytest.mark.parametrize("cpu", ["this CPU", "AVX2 only"])
def test_build_auto_times_every_offered_precision_and_keeps_the_fastest_within_budget(
        tiny_exports, samples_tsv, tmp_path, monkeypatch, cpu):
    from roberta_deploy.backends import offered_precisions
    from roberta_deploy.backends import openvino as openvino_backend

    if cpu == "AVX2 only":  # what OpenVINO reports on an AMD Zen 3
        monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda: {"FP32", "INT8"})
    result = invoke("build", "--export", tiny_exports["bert"].folder, "--output", tmp_path / "auto",
                    "--precision", "auto", "--accuracy-budget", 0.5, "--calibration-data", samples_tsv,
                    "--calibration-samples", 32, "--timing-cap", 1)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    selection = manifest["precision_selection"]
    candidates = selection["candidates"]
    assert [row["precision"] for row in candidates] == list(offered_precisions("openvino"))
    assert selection["scored_texts"] == 202 - 32  # every text not used for calibration
    for row in candidates:
        if "accuracy" not in row:
            assert row["verdict"].startswith("rejected")
            continue
        rounds, rate = row["throughput_rounds"], row["texts_per_second_interval"]
        assert rounds["rounds"] >= 5 and rate["low"] <= row["texts_per_second"] == rate["value"] <= rate["high"]
        assert row["points_vs_fp32"] == pytest.approx((row["accuracy"] - selection["fp32_accuracy"]) * 100)
        assert f"{row['points_vs_fp32']:+.2f} points vs fp32" in result.output  # the sign as measured
    # 170 texts cannot resolve 0.5 points (1,200 would): the gate is agreement with fp32, and it says so.
    assert selection["accuracy_gate"]["gate"] == "agreement with fp32" and "1,200 labelled texts" in result.output
    within = [row for row in candidates if "accuracy" in row and row["paired_vs_fp32"]["disagreements"] == 0]
    fastest = max(within, key=lambda row: row["texts_per_second"])
    rounds = {row["precision"]: row["throughput_rounds"]["rates"] for row in within}
    # Round by round: five rounds reach no 95% interval, so the fastest must win every round to clear another.
    tied = [row for row in within if row is fastest or min(
        a / b for a, b in zip(rounds[fastest["precision"]], rounds[row["precision"]])) <= 1.0]
    chosen = min(tied, key=lambda row: ("fp32", "fp16", "bf16", "int8").index(row["precision"]))
    assert chosen["verdict"].startswith("chosen") and chosen["precision"] == manifest["precision"]
    assert selection["tied_within_noise"] == (len(tied) > 1)
    assert sum(row["verdict"].startswith("chosen") for row in candidates) == 1
    assert [path.name for path in tmp_path.iterdir()] == ["auto"]  # the scratch builds are gone


@pytest.mark.parametrize("make_file, fragments", [
    (lambda path: path.write_text(""), ["is empty"]),
    (lambda path: path.write_text("label\ttext_a\n1\t好\n0\n"), ["bad.tsv:3: malformed row"]),
    (lambda path: path.write_text("label\ttext_a\nmaybe\t好\n"), ["unknown label 'maybe'"]),
    (lambda path: path.write_text("label\ttext_a\n1\t\n"), ["bad.tsv:2: empty text"]),
    (lambda path: None, ["does not exist"]),
])
def test_infer_bad_data_is_one_line_and_writes_nothing(cli_bundle, tmp_path, make_file, fragments):
    data = tmp_path / "bad.tsv"
    make_file(data)
    result = invoke("infer", "--bundle", cli_bundle, "--data", data, "--output", tmp_path / "out")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_bad_flags_are_one_line_errors(cli_bundle, tiny_exports, tmp_path):
    export = tiny_exports["bert"].folder
    assert_one_line_error(invoke("build", "--export", export, "--output", tmp_path / "b", "--precision", "fp7"),
                          "unknown precision 'fp7'")
    assert_one_line_error(invoke("build", "--export", export, "--output", tmp_path / "b", "--backend", "tpu"),
                          "unknown backend 'tpu'")
    assert_one_line_error(invoke("build", "--export", export, "--output", tmp_path / "b", "--backend",
                                 "onnxruntime", "--precision", "fp16"), "onnxruntime cannot build fp16")
    assert_one_line_error(invoke("build", "--export", export, "--output", tmp_path / "b", "--static-shape",
                                 "--max-batch", 8), "describe dynamic shapes")
    assert_one_line_error(invoke("perf", "--bundle", cli_bundle, "--hint", "fast"), "unknown performance hint 'fast'")
    assert_one_line_error(invoke("perf", "--bundle", cli_bundle, "--data", tmp_path / "x.tsv", "--seq-len", 8),
                          "--seq-len and --data")
    assert_one_line_error(invoke("infer", "--bundle", tmp_path / "nothing", "--data", export, "--output",
                                 tmp_path / "o"), "does not exist")
    assert_one_line_error(invoke("eval", "--output", tmp_path / "e", "--batch-sizes", "1,x"), "--batch-sizes")
    assert not any(tmp_path.iterdir())


def test_corrupt_bundle_is_one_line(cli_bundle, tmp_path, samples_tsv):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(cli_bundle, copy)
    with open(copy / "openvino_model.bin", "r+b") as handle:
        handle.write(b"garbage")
    assert_one_line_error(invoke("infer", "--bundle", copy, "--data", samples_tsv, "--output", tmp_path / "o"),
                          "openvino_model.bin is corrupt", "rebuild the bundle")
    assert not (tmp_path / "o").exists()


def test_run_does_the_whole_pipeline_in_one_command(tiny_checkpoints, samples_tsv, tmp_path):
    lines = samples_tsv.read_text(encoding="utf-8").split("\n")
    data = tmp_path / "slice.tsv"
    data.write_text("\n".join(lines[:121]) + "\n", encoding="utf-8")
    output = tmp_path / "run"
    result = invoke("run", "--model", tiny_checkpoints["bert"], "--data", data, "--output", output,
                    "--backend", "onnxruntime", "--perf-seconds", 0.2, "--max-seq-length", 64)
    assert result.exit_code == 0, result.output
    summary = json.loads((output / "summary.json").read_text())
    assert [row["precision"] for row in summary["rows"]] == ["fp32", "int8"]  # what ORT offers on a CPU
    assert summary["examples"] == 120
    for row in summary["rows"]:
        assert 0 <= row["accuracy"] <= 1 and row["throughput_texts_per_second"] > 0
        assert row["latency_p50_ms_batch1"] <= row["latency_p99_ms_batch1"]
    assert (output / "export" / "manifest.json").is_file()
    assert (output / "bundles" / "onnxruntime-int8" / "manifest.json").is_file()
    assert (output / "perf" / "int8-throughput.json").is_file()
    assert "int8" in result.output and "texts/s" in result.output
    again = invoke("run", "--model", tiny_checkpoints["bert"], "--data", data, "--output", output)
    assert_one_line_error(again, "already exists", "--overwrite")
