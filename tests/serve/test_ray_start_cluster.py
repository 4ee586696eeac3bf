"""A Ray cluster as users start one: `ray start --head` and `ray start --address` processes (two nodes of one
CPU on this machine, token authentication on, small object stores), then `infer --ray --address` and
`serve --ray --address` against it, as docs/scaling.md tells. A driver without the token is told so. Only the
processes this test started are stopped (their process groups), never `ray stop`, which would end every Ray
on the machine."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from serve_client import post_json

import roberta_deploy

START_S = 120
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(**extra) -> dict:
    """What every node and driver runs with: roberta-deploy importable (installed on every node in a real cluster)."""
    package_root = str(Path(roberta_deploy.__file__).resolve().parents[1])
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
    return {**clean, "RAY_USAGE_STATS_ENABLED": "0", **extra,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


class RayNode:
    """`ray start --block ...` in a process group of its own, its output in a file."""

    def __init__(self, folder: Path, name: str, args: list[str], env: dict):
        self.log = folder / f"{name}.log"
        ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
        with open(self.log, "w") as handle:
            self.process = subprocess.Popen([ray_cli, "start", "--block", "--node-ip-address", "127.0.0.1",
                                             "--num-cpus", "1", "--object-store-memory", str(100 * 2**20), *args],
                                            stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + START_S
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"ray start ({name}) did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL to what is left of it: only this node's processes."""
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:
                try:  # the node's own children (raylet, workers) share the group
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    if not shutil.which("ray", path=str(Path(sys.executable).parent)):
        pytest.skip("the ray command is not installed beside this Python")
    token = secrets.token_hex(16)
    env = environment(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    folder = Path(tempfile.mkdtemp(prefix="rd-ray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = free_port()
    nodes = []
    try:
        nodes.append(RayNode(folder, "head", ["--head", "--port", str(port), "--include-dashboard", "false",
                                              "--temp-dir", str(folder / "t")], env))
        nodes.append(RayNode(folder, "worker", ["--address", f"127.0.0.1:{port}"], env))
        yield {"address": f"127.0.0.1:{port}", "env": env, "folder": folder}
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(folder, ignore_errors=True)


def run_cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roberta_deploy", *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=env)


def test_a_driver_without_the_token_is_told_it_is_an_authentication_failure(cluster, bundle_factory, samples_tsv,
                                                                            tmp_path):
    result = run_cli("infer", "--ray", "--address", cluster["address"], "--bundle", str(bundle_factory()),
                     "--data", str(samples_tsv), "--output", str(tmp_path / "out"), env=environment())
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(error) == 1, result.stderr[-2000:]
    assert "token authentication" in error[0] and "RAY_AUTH_TOKEN" in error[0]
    assert not (tmp_path / "out").exists()


def test_infer_ray_on_both_nodes_equals_infer(cluster, bundle_factory, samples_tsv, tmp_path):
    bundle = bundle_factory()
    header, *rows = samples_tsv.read_text(encoding="utf-8").splitlines()
    data = tmp_path / "reviews.tsv"  # 8,080 rows: eight blocks of Ray Data's, for two actors
    data.write_text("\n".join([header, *rows * 40]) + "\n", encoding="utf-8")
    here = run_cli("infer", "--bundle", str(bundle), "--data", str(data), "--output", str(tmp_path / "here"),
                   env=environment())
    assert here.returncode == 0, here.stderr
    on_ray = run_cli("infer", "--ray", "--address", cluster["address"], "--replicas", "2", "--replica-cpus", "1",
                     "--bundle", str(bundle), "--data", str(data), "--output", str(tmp_path / "ray"),
                     env=cluster["env"])
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    reference = [json.loads(line) for line in (tmp_path / "here" / "predictions.jsonl").read_text().splitlines()]
    ours = [json.loads(line) for line in (tmp_path / "ray" / "predictions.jsonl").read_text().splitlines()]
    assert [row["label"] for row in ours] == [row["label"] for row in reference]
    assert [row["index"] for row in ours] == list(range(len(reference)))
    metrics = json.loads((tmp_path / "ray" / "metrics.json").read_text())
    assert metrics["accuracy"] == json.loads((tmp_path / "here" / "metrics.json").read_text())["accuracy"]
    assert metrics["ray"]["nodes"] == 2, metrics["ray"]


def test_serve_ray_on_the_cluster_answers_and_stops_on_sigterm(cluster, bundle_factory, tmp_path):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "roberta_deploy", "serve", "--ray", "--address",
                                cluster["address"], "--bundle", f"tiny={bundle_factory()}", "--replicas", "2",
                                "--replica-cpus", "1", "--port", str(port), "--bundle-cache", str(tmp_path / "cache")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cluster["env"])
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if " ready: " in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(START_S * 2) and process.poll() is None, "\n".join(lines[-40:])
        status, _, body = post_json(port, "/predict", {"inputs": "房间干净整洁，服务热情"})
        assert status == 200 and body, body
        process.send_signal(signal.SIGTERM)
        assert process.wait(120) == 0, "\n".join(lines[-40:])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
