"""`roberta-deploy deploy` end to end on a tiny model: every candidate this CPU offers is built, scored and timed,
the choice and the reports follow from what was measured, a second deploy reuses every artifact and serves the
chosen bundle (real HTTP against the real process, answers equal to Engine.predict, SIGTERM exits 0), the same on
Ray Serve with --ray, and bad input (Ray's flags included) fails before any build with a one-line error and nothing
written."""

from __future__ import annotations

import json
import math
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import assert_one_line_error, invoke
from test_report import assert_self_contained_with_charts
from test_serve import AUTH, ServerProcess
from serve_client import call, post_json, wait_until

from roberta_deploy.jobs import deploy as deploy_module
from roberta_deploy.backends import get_backend, offered_precisions
from roberta_deploy.data import read_dataset
from roberta_deploy.defaults import AUTO_BACKENDS
from roberta_deploy.errors import UsageError
from roberta_deploy.machine import this_cpu
from roberta_deploy.runtime.batching import online_lengths
from roberta_deploy.runtime.engine import Engine

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")

# Short timing keeps the suite quick; nothing here asserts a speed, only that the choice follows the figures.
QUICK = ("--perf-seconds", 0.05, "--timing-rounds", 3, "--timing-cap", 1, "--max-seq-length", 64)
PRECISION_ORDER = ("fp32", "fp16", "bf16", "int8")
BACKEND_ORDER = ("onnxruntime", "openvino", "torch")
CALIBRATION = 128
SAMPLES = 202


def installed_backends() -> list[str]:
    names = []
    for name in AUTO_BACKENDS:
        try:
            names.append(get_backend(name).name)
        except UsageError:
            continue
    return names


def offered_candidates() -> list[tuple[str, str, str | None]]:
    """(backend, precision, int8 mode) of every candidate deploy builds here: ONNX Runtime's int8 twice, calibrated
    (the default, no mode recorded) and dynamic."""
    return [(backend, precision, mode) for backend in installed_backends() for precision in offered_precisions(backend)
            for mode in ((None, "dynamic") if (backend, precision) == ("onnxruntime", "int8") else (None,))]


def shown_precision(row: dict) -> str:
    """The precision column of deploy's tables: 'int8 (dynamic)' for the dynamic candidate."""
    return row["precision"] + (f" ({row['quantization']})" if row.get("quantization") else "")


def lower_ratio(faster: list[float], slower: list[float]) -> float:
    """The lower end of the 95% order-statistic interval of the median per-round ratio faster / slower (the whole
    range when fewer than 6 rounds cannot reach 95%)."""
    ratios = sorted(a / b for a, b in zip(faster, slower))
    n, k = len(ratios), 1
    while k + 1 <= (n + 1) // 2 and 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n >= 0.95:
        k += 1
    return ratios[k - 1]


def expected_choice(candidates: list[dict], budget: float, scored_texts: int) -> dict:
    """The rule, recomputed from the recorded figures: within the budget (scored_texts held-back texts cannot
    resolve a budget under 6 x 100 / scored_texts points, so by disagreements with fp32), the fastest median
    round wins when its per-round speed ratio over every other stays above 1 (interval); else, among those it
    does not clear, the most exact precision, then the simpler backend, then static int8 before dynamic."""
    measured = [row for row in candidates if "measured" in row]
    if budget > 0 and scored_texts >= 600 / budget:
        within = [row for row in measured if -row["points_vs_fp32"] <= budget + 1e-9]
    else:
        within = [row for row in measured
                  if row["paired_vs_fp32"]["disagreements"] * 100 / scored_texts <= budget + 1e-9]
    rates = {row["bundle"]: row["measured"]["throughput_rounds"]["rates"] for row in within}
    fastest = max(within, key=lambda row: float(np.median(rates[row["bundle"]])))
    tied = [row for row in within if row is fastest
            or lower_ratio(rates[fastest["bundle"]], rates[row["bundle"]]) <= 1.0]
    return min(tied, key=lambda row: (PRECISION_ORDER.index(row["precision"]), BACKEND_ORDER.index(row["backend"]),
                                      row.get("quantization") is not None))


def manifest_times(output) -> dict[str, str]:
    """The `created` time and sha256 of every manifest under the output: a rebuild changes both."""
    from roberta_deploy.manifest import file_sha256

    return {str(path.relative_to(output)): (json.loads(path.read_text())["created"], file_sha256(path))
            for path in sorted(output.rglob("manifest.json"))}


def assert_predict_equals_the_engine(port: int, bundle, texts, headers=None) -> None:
    """/predict answers each text with the engine's label and every label's score, computed in this process on the
    served bundle from the batch the server runs for a text sent alone: one row padded to its online length
    class. (Engine.predict pads to a multiple of 8 instead; a dynamic int8 bundle, which deploy may choose, scales
    activations from the whole padded batch, so its scores move by ~3e-4 with the padding: CI saw it.)"""
    engine = Engine.load(bundle)
    context = engine.create_context()
    classes = online_lengths(engine.max_seq_length)
    for text in texts:
        status, _, answer = post_json(port, "/predict", {"inputs": text}, headers)
        encoded = engine.encoder.encode([text])
        length = min(length for length in classes if length >= int(encoded.lengths[0]))
        row = engine.encoder.pad(encoded, [0], length)
        probabilities = engine.task.scores(context.run(row.input_ids, row.attention_mask, row.token_type_ids))[0]
        assert status == 200
        assert answer[0]["label"] == engine.label_names[int(np.argmax(probabilities))]
        assert {item["label"]: item["score"] for item in answer} == pytest.approx(
            dict(zip(engine.label_names, probabilities.tolist())), abs=1e-4)


@pytest.fixture(scope="module")
def deployment(tiny_checkpoints, samples_tsv, tmp_path_factory):
    output = tmp_path_factory.mktemp("deploy") / "tiny"
    args = ("--model", tiny_checkpoints["bert"], "--data", samples_tsv, "--output", output, *QUICK)
    result = invoke("deploy", *args, "--no-serve")
    assert result.exit_code == 0, result.output
    return output, args, result


def test_the_choice_and_the_reports_follow_from_what_every_candidate_measured(deployment):
    output, _, result = deployment
    report = json.loads((output / "deployment.json").read_text(encoding="utf-8"))
    candidates = report["candidates"]
    assert [(row["backend"], row["precision"], row.get("quantization")) for row in candidates] == offered_candidates()
    assert report["scored_texts"] == SAMPLES - CALIBRATION and report["accuracy_checked"]
    measured = [row for row in candidates if "measured" in row]
    reference = measured[0]
    assert reference["precision"] == "fp32" and reference["backend"] == installed_backends()[0]
    for row in measured:
        figures = row["measured"]
        assert row["status"] == "built, measured"
        rounds = figures["throughput_rounds"]
        assert rounds["rounds"] >= 3 and len(rounds["rates"]) == len(rounds["others_cpu_share"]) == rounds["rounds"]
        rate = figures["texts_per_second_interval"]
        assert figures["texts_per_second"] == rate["value"] == pytest.approx(float(np.median(rounds["rates"])), rel=1e-3)
        assert rate["low"] <= rate["value"] <= rate["high"] and rate["low"] >= min(rounds["rates"]) - 1e-3
        accuracy = figures["accuracy_interval"]
        assert accuracy["low"] < figures["accuracy"] == accuracy["value"] <= accuracy["high"] or figures["accuracy"] == 1
        assert row["points_vs_fp32"] == pytest.approx((figures["accuracy"] - reference["measured"]["accuracy"]) * 100)
        labels, reference_labels = (np.asarray(r["measured"]["predicted_labels"]) for r in (row, reference))
        assert row["agreement_with_fp32"] == pytest.approx(float(np.mean(labels == reference_labels)))
        assert row["paired_vs_fp32"]["disagreements"] == int((labels != reference_labels).sum())
        discordant = row["paired_vs_fp32"]["only_reference_right"] + row["paired_vs_fp32"]["only_candidate_right"]
        assert discordant <= row["paired_vs_fp32"]["disagreements"] and 0 < row["paired_vs_fp32"]["mcnemar_exact_p"] <= 1
        assert figures["latency_ms_batch1"]["median"] <= figures["latency_ms_batch1"]["p99"]
        assert figures["latency_p50_ms_interval"]["low"] <= figures["latency_p50_ms_interval"]["high"]
        bundle = json.loads((output / row["bundle"] / "manifest.json").read_text())
        assert (bundle["backend"], bundle["precision"]) == (row["backend"], row["precision"])
        # Every int8 bundle says how it was quantized; the dynamic one was not calibrated.
        int8_mode = row.get("quantization") or "static"
        assert bundle.get("quantization") == (int8_mode if row["precision"] == "int8" else None)
        assert (bundle["calibration"] is None) == (bundle.get("quantization") != "static")
        assert bundle["checks"]["against_fp32_reference"]["passed"]
    for row in candidates:
        if "measured" not in row:
            assert row["verdict"].startswith("rejected")
    chosen = expected_choice(candidates, 0.5, report["scored_texts"])
    choice = report["choice"]
    # 74 held-back texts cannot resolve half a point: said once, with the count that would.
    assert choice["accuracy_gate"]["gate"] == "agreement with fp32" and choice["accuracy_gate"]["needed_texts"] == 1200
    assert "74 held-back texts cannot resolve a 0.5-point budget (one text is 1.35 points; 1,200 labelled texts " \
           "would)" in " ".join(result.output.split())
    assert choice["tied_within_noise"] == (len(choice["tied_with"]) > 1)
    assert ("tied within noise" in choice["reason"]) == choice["tied_within_noise"]
    assert (choice["backend"], shown_precision(choice)) == (chosen["backend"], shown_precision(chosen))
    assert choice["bundle"] == chosen["bundle"] and chosen["verdict"].startswith("chosen")
    assert sum(row["verdict"].startswith("chosen") for row in candidates) == 1
    assert report["machine"]["cpu_model"] == this_cpu()["model"]
    assert report["machine"]["cpu_flags"] == this_cpu()["flags"]
    assert (output / "export" / "manifest.json").is_file() and report["export"]["status"] == "exported"

    markdown = (output / "deployment.md").read_text(encoding="utf-8")
    assert f"**Chosen: {choice['backend']} {shown_precision(choice)}**" in markdown
    assert "cannot resolve a 0.5-point budget" in markdown and "load average" in markdown
    for row in measured:
        accuracy, rate = row["measured"]["accuracy_interval"], row["measured"]["texts_per_second_interval"]
        assert (f"| {row['backend']} | {shown_precision(row)} | built, measured | {accuracy['value']:.4f} "
                f"({accuracy['low']:.4f}-{accuracy['high']:.4f}) | {row['points_vs_fp32']:+.2f} | "
                f"{row['paired_vs_fp32']['disagreements']} of {report['scored_texts']} | ") in markdown
        assert f"| {rate['value']:,.1f} ({rate['low']:,.1f}-{rate['high']:,.1f}) |" in markdown
    assert this_cpu()["model"] in markdown
    assert_self_contained_with_charts((output / "report.html").read_text(encoding="utf-8"),
                                      ["chart-accuracy", "chart-throughput", "chart-latency"])
    assert f"chosen: {choice['backend']} {shown_precision(choice)}" in result.output


def test_a_new_budget_chooses_again_from_the_same_artifacts(deployment):
    output, args, _ = deployment
    before = manifest_times(output)
    result = invoke("deploy", *args, "--no-serve", "--accuracy-budget", 0)
    assert result.exit_code == 0, result.output
    assert manifest_times(output) == before
    report = json.loads((output / "deployment.json").read_text(encoding="utf-8"))
    assert {row["status"] for row in report["candidates"]} <= {"reused", "reused (rejected)"}
    chosen = expected_choice(report["candidates"], 0, report["scored_texts"])
    assert "no number of texts resolves a budget of 0" in report["choice"]["accuracy_gate"]["note"]
    assert report["choice"]["bundle"] == chosen["bundle"]
    assert "building" not in result.output and "reusing" in result.output


def test_a_second_deploy_reuses_everything_and_serves_what_the_engine_predicts(deployment, samples_tsv):
    output, args, _ = deployment
    before = manifest_times(output)
    server = ServerProcess(*(str(arg) for arg in args), command="deploy")
    try:
        server.wait_ready()
        # Ready (/health 200) can come before deploy has printed where it serves: wait for the last line it prints.
        wait_until(lambda: any(line.startswith("try: curl") for line in server.lines), "the curl line is printed")
        log = "\n".join(server.lines)
        assert "building" not in log and "exporting" not in log, log
        assert "reusing the export" in log
        report = json.loads((output / "deployment.json").read_text(encoding="utf-8"))
        assert report["export"]["status"] == "reused"
        assert {row["status"] for row in report["candidates"]} <= {"reused", "reused (rejected)"}
        choice = report["choice"]
        name = Path(choice["bundle"]).name
        assert re.search(rf"serving {name} at {server.url}", log), log
        assert f"try: curl -s {server.url}/predict" in log and f"POST /v2/models/{name}/infer" in log

        assert_predict_equals_the_engine(server.port, output / choice["bundle"], read_dataset(samples_tsv).texts[:6])
        status, _, info = call(server.port, "GET", "/info")
        info = json.loads(info)
        assert status == 200 and (info["backend"], info["precision"]) == (choice["backend"], choice["precision"])
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, "\n".join(server.lines)
    assert manifest_times(output) == before  # nothing was rebuilt


def test_deploy_ray_serves_the_chosen_bundle_on_a_local_ray_and_sigterm_leaves_nothing_deployed(deployment,
                                                                                                   samples_tsv):
    """`deploy --ray` without --address starts a Ray instance of its own (ray.init(address="local"): a new one even
    where a cluster runs on this machine, so it cannot meet test_ray_serve's) and stops it on SIGTERM."""
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    from test_ray_serve import RayServer, free_port

    output, args, _ = deployment
    before = manifest_times(output)
    server = RayServer(free_port(), *(str(arg) for arg in args), command="deploy")
    try:
        wait_until(lambda: any(line.startswith("try: curl") for line in server.lines), "the curl line is printed")
        log = "\n".join(server.lines)
        assert "building" not in log and "started a local Ray instance" in log, log
        choice = json.loads((output / "deployment.json").read_text(encoding="utf-8"))["choice"]
        name = Path(choice["bundle"]).name
        assert f"serving {name} at {server.url}" in log and f"POST /v2/models/{name}/infer" in log, log
        assert f"try: curl -s {server.url}/predict" in log and "Authorization: Bearer" in log, log

        assert_predict_equals_the_engine(server.port, output / choice["bundle"], read_dataset(samples_tsv).texts[:4],
                                         AUTH)
    finally:
        code = server.stop(signal.SIGTERM, timeout=120)
    log = "\n".join(server.lines)
    assert code == 0, log
    assert log.index("stopping:") < log.index("stopped: every accepted request was answered"), log
    with pytest.raises(OSError):  # the proxy went with the Ray instance: nothing is left deployed
        call(server.port, "GET", "/v2/health/live", timeout=5)
    assert manifest_times(output) == before


def test_another_model_into_the_same_output_is_refused(deployment, tiny_checkpoints):
    output, _, _ = deployment
    before = manifest_times(output)
    result = invoke("deploy", "--model", tiny_checkpoints["roberta"], "--output", output, "--no-serve", *QUICK)
    assert_one_line_error(result, "holds the deployment of another model", "--overwrite")
    assert manifest_times(output) == before


def test_without_data_accuracy_is_not_checked_and_fp32_is_kept(tiny_checkpoints, tmp_path):
    output = tmp_path / "plain"
    result = invoke("deploy", "--model", tiny_checkpoints["bert"], "--backend", "onnxruntime", "--output", output,
                    "--no-serve", *QUICK)
    assert result.exit_code == 0, result.output
    assert "accuracy was not checked" in result.output
    report = json.loads((output / "deployment.json").read_text(encoding="utf-8"))
    assert not report["accuracy_checked"]
    assert [(row["backend"], row["precision"]) for row in report["candidates"]] == [("onnxruntime", "fp32")]
    assert report["choice"]["precision"] == "fp32" and "accuracy" not in report["candidates"][0]["measured"]
    assert "Accuracy was not checked" in (output / "deployment.md").read_text(encoding="utf-8")

    # Another setting: nothing made with the old one is reused, and each step says why.
    before = manifest_times(output)
    result = invoke("deploy", "--model", tiny_checkpoints["bert"], "--backend", "onnxruntime", "--output", output,
                    "--no-serve", *QUICK, "--max-seq-length", 32)
    assert result.exit_code == 0, result.output
    assert "was made with --max-seq-length 64, not 32" in result.output
    assert "onnxruntime-fp32: building (made with other settings: export_manifest_sha256)" in result.output
    after = manifest_times(output)
    assert after.keys() == before.keys() and all(after[name] != before[name] for name in before)
    report = json.loads((output / "deployment.json").read_text(encoding="utf-8"))
    assert report["export"]["status"] == "exported" and report["candidates"][0]["status"] == "built, measured"
    assert json.loads((output / "export" / "manifest.json").read_text())["max_seq_length"] == 32


@pytest.mark.parametrize("case", ["no labels", "negative budget", "nan budget", "offline hub id", "missing folder",
                                  "output inside the model", "auto without data"])
def test_bad_input_fails_before_any_build_and_writes_nothing(case, tiny_checkpoints, samples_tsv, tmp_path,
                                                             monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a build started")

    monkeypatch.setattr(deploy_module, "export_model", no_build)
    monkeypatch.setattr(deploy_module, "build_engine", no_build)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unlabelled = tmp_path / "unlabelled.tsv"
    unlabelled.write_text("text_a\n酒店很干净\n太吵了\n", encoding="utf-8")
    model, output = tiny_checkpoints["bert"], tmp_path / "out"
    arguments, fragments = {
        "no labels": (["--data", unlabelled], ["has no label column"]),
        "negative budget": (["--data", samples_tsv, "--accuracy-budget", -0.5], ["--accuracy-budget -0.5"]),
        "nan budget": (["--data", samples_tsv, "--accuracy-budget", "nan"], ["not a finite number"]),
        "offline hub id": (["--data", samples_tsv], ["cannot fetch model 'nobody/no-such-model'", "HF_HUB_OFFLINE"]),
        "missing folder": (["--data", samples_tsv], ["does not exist"]),
        "output inside the model": (["--data", samples_tsv], ["overlaps the input"]),
        "auto without data": (["--precision", "auto"], ["--precision auto needs labelled texts"]),
    }[case]
    if case == "offline hub id":
        model = "nobody/no-such-model"
    elif case == "missing folder":
        model = tmp_path / "no-such-folder"
    elif case == "output inside the model":
        output = tiny_checkpoints["bert"] / "deployment"
    before = sorted(path.name for path in tmp_path.iterdir())
    result = invoke("deploy", "--model", model, "--output", output, *arguments, *QUICK)
    assert_one_line_error(result, *fragments)
    assert not output.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == before


@pytest.mark.parametrize("flags, fragment", [
    (["--replicas", "2"], "--replicas only applies to serving on Ray"),
    (["--bundle-cache", "cache"], "--bundle-cache only applies to serving on Ray"),
    (["--ray", "--port", "0"], "--port 0 cannot be used with --ray"),
    (["--ray", "--autoscale", "2"], "--autoscale '2' is not MIN:MAX"),
    (["--ray", "--replicas", "2", "--autoscale", "1:2"], "both set the replica count"),
    (["--ray", "--replica-cpus", "0"], "--replica-cpus 0.0 must be greater than 0"),
    (["--ray", "--no-serve"], "--ray only applies when deploy serves"),
    (["--ray"], "pip install 'roberta-deploy[ray]'"),
])
def test_bad_ray_flags_fail_before_any_build_and_write_nothing(flags, fragment, tiny_checkpoints, samples_tsv,
                                                              tmp_path, monkeypatch):
    """The same checks as `serve --ray` (one definition in cli/serve.py), none of which needs Ray: here ray cannot be
    imported (None in sys.modules makes `import ray` fail as it does where ray is not installed)."""
    def no_build(*args, **kwargs):
        raise AssertionError("a build started")

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr(deploy_module, "export_model", no_build)
    monkeypatch.setattr(deploy_module, "build_engine", no_build)
    output = tmp_path / "out"
    result = invoke("deploy", "--model", tiny_checkpoints["bert"], "--data", samples_tsv, "--output", output,
                    *flags, *QUICK)
    assert_one_line_error(result, fragment)
    assert not any(tmp_path.iterdir())


def test_every_candidate_rejected_is_a_numerical_check_error_naming_each_reason():
    from roberta_deploy.build.candidates import Candidate, CandidateSpec, choose
    from roberta_deploy.errors import NumericalCheckError

    rejected = [Candidate(CandidateSpec("openvino", "int8"), rejected="max |diff| 0.9 past 0.1"),
                Candidate(CandidateSpec("onnxruntime", "int8"), rejected="max |diff| 0.8 past 0.1")]
    with pytest.raises(NumericalCheckError, match="every candidate was rejected: openvino int8: max .*onnxruntime"):
        choose(rejected, None, None)


def test_a_model_folder_given_as_dot_is_deployed_under_its_own_name(tmp_path, monkeypatch):
    from roberta_deploy.cli.deploy import _folder_name

    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path / "my-model")
    assert _folder_name(".") == _folder_name("./") == "my-model"
    assert _folder_name("org/hub-model") == "org--hub-model"


@pytest.mark.parametrize("backend, precision", [("auto", "auto"), ("onnxruntime", "int8"), ("openvino", "int8")])
def test_onnxruntime_int8_is_a_candidate_calibrated_and_dynamic_where_onnxruntime_is_offered(backend, precision):
    specs = deploy_module._candidates(backend, precision, scored=True)
    assert specs[0].precision == "fp32"
    folders = [spec.folder_name for spec in specs]
    has_onnxruntime = backend in ("auto", "onnxruntime") and "onnxruntime" in installed_backends()
    assert ("onnxruntime-int8-dynamic" in folders) == has_onnxruntime
    if has_onnxruntime:  # the calibrated one keeps its name (and so its bundle folder and records)
        assert folders.index("onnxruntime-int8") + 1 == folders.index("onnxruntime-int8-dynamic")
        assert specs[folders.index("onnxruntime-int8-dynamic")].name == "onnxruntime int8 dynamic"
    assert not any(spec.quantization for spec in specs if spec.backend != "onnxruntime")
