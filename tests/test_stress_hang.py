"""A small run of bench/stress_hang.py on every CI run: fresh processes, each running two contexts of an
engine at the same moment, none may hang (the full run, 200+ processes, is in docs/benchmarks.md)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "stress_hang.py"


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_fresh_processes_running_two_contexts_at_once_never_hang(bundle_factory, tmp_path, backend):
    report_path = tmp_path / "stress.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--processes", "6", "--parallel", "2", "--contexts", "2", "--timeout", "120",
         "--backend", backend, "--bundle", str(bundle_factory(backend, "fp32")), "--json", str(report_path)],
        capture_output=True, text=True, timeout=1200)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(report_path.read_text())
    assert [result["mode"] for result in report["results"]] == ["contexts", "predict"]
    for result in report["results"]:
        assert (result["ok"], result["hung"], result["failed"]) == (6, 0, 0), result
