"""A deployment folder's record and leftovers: a stale, wrong-typed or damaged deployment.json in a folder holding
this tool's marker is treated as stale (every candidate built and measured again, and the step says so); the same
in a foreign folder is refused; staging folders that killed runs left are removed by the next run that holds the
lock, while a live writer's are kept."""

from __future__ import annotations

import fcntl
import json
import os

import pytest
from test_cli import assert_one_line_error, invoke

from roberta_deploy.atomic import MARKER_FILE, remove_abandoned_staging
from roberta_deploy.errors import OutputExistsError
from roberta_deploy.jobs.deployment_record import previous_deployment

QUICK = ("--backend", "onnxruntime", "--no-serve", "--perf-seconds", 0.05, "--timing-rounds", 3, "--timing-cap", 1,
         "--max-seq-length", 64)
GOOD = {"kind": "deployment", "schema_version": 1, "model_sha256": "ab" * 32, "candidates": []}
DAMAGED = {
    "empty": "",
    "an empty object": "{}",
    "not JSON": "{\"kind\": ",
    "a list": "[1, 2]",
    "a candidate that is a string": json.dumps({**GOOD, "candidates": ["onnxruntime fp32"]}),
    "measurements that are a list": json.dumps({**GOOD, "candidates": [
        {"backend": "onnxruntime", "precision": "fp32", "measured": [1]}]}),
    "a newer schema": json.dumps({**GOOD, "schema_version": 99}),
    "a string schema": json.dumps({**GOOD, "schema_version": "1"}),
}


def our_folder(tmp_path, record: str):
    folder = tmp_path / "deployment"
    folder.mkdir()
    (folder / MARKER_FILE).write_text(json.dumps({"tool": "roberta-deploy", "entries": ["deployment.json"]}))
    (folder / "deployment.json").write_text(record, encoding="utf-8")
    return folder


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_a_damaged_record_in_our_folder_is_stale(case, tmp_path):
    previous, stale = previous_deployment(our_folder(tmp_path, DAMAGED[case]))
    assert previous is None and stale.startswith("deployment.json ")


def test_a_good_record_is_read_and_a_damaged_one_in_a_foreign_folder_refused(tmp_path):
    assert previous_deployment(our_folder(tmp_path, json.dumps(GOOD))) == (GOOD, None)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "deployment.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="is not a deployment"):
        previous_deployment(foreign)


def test_only_staging_nobody_holds_is_removed(tmp_path):
    (tmp_path / ".export.partial-0123").mkdir()
    (tmp_path / ".export.partial-0123" / "model.onnx").write_bytes(b"x" * 10)
    (tmp_path / ".export.lock").write_text("")
    (tmp_path / ".report.html.partial-77").write_text("half")
    (tmp_path / ".live.partial-99").mkdir()
    held = os.open(tmp_path / ".live.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert remove_abandoned_staging(tmp_path) == [".export.partial-0123", ".report.html.partial-77"]
        assert (tmp_path / ".live.partial-99").is_dir()
    finally:
        os.close(held)


def test_deploy_rebuilds_over_a_damaged_record_and_removes_what_killed_runs_left(tiny_checkpoints, tmp_path):
    output = tmp_path / "deployment"
    args = ("--model", tiny_checkpoints["bert"], "--output", output, *QUICK)
    first = invoke("deploy", *args)
    assert first.exit_code == 0, first.output

    (output / "deployment.json").write_text(json.dumps({**GOOD, "candidates": ["x"]}), encoding="utf-8")
    (output / ".export.partial-deadbeef").mkdir()
    (output / ".export.partial-deadbeef" / "model.onnx").write_bytes(b"\0" * 1000)
    (output / "bundles" / ".onnxruntime-fp32.partial-cafe").mkdir()
    again = invoke("deploy", *args)
    assert again.exit_code == 0, again.output
    assert "deployment.json has a candidates entry that is not a record" in again.output
    assert "treating it as stale; every candidate is built and measured again" in again.output
    assert "removed what interrupted runs left: .export.partial-deadbeef, bundles/.onnxruntime-fp32.partial-cafe" \
        in again.output
    assert "onnxruntime-fp32: building (deployment.json has no record of it yet)" in again.output
    assert not (output / ".export.partial-deadbeef").exists()
    report = json.loads((output / "deployment.json").read_text(encoding="utf-8"))
    assert report["candidates"][0]["status"] == "built, measured"

    (output / "deployment.json").write_text("{}", encoding="utf-8")  # empty: stale too, no --overwrite needed
    third = invoke("deploy", *args)
    assert third.exit_code == 0, third.output
    assert "deployment.json is not a deployment record: treating it as stale" in third.output


def test_a_damaged_record_in_a_folder_without_our_marker_is_refused(tiny_checkpoints, tmp_path):
    output = tmp_path / "someone-elses"
    output.mkdir()
    (output / "deployment.json").write_text("{}")
    result = invoke("deploy", "--model", tiny_checkpoints["bert"], "--output", output, *QUICK)
    assert_one_line_error(result, "holds files", "another --output")
