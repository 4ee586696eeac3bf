"""`roberta-deploy serve --ray` on a local two-node Ray cluster (ray.cluster_utils.Cluster: two raylets of one
CPU each on this machine, started once per test session, dashboard off), driven as users run it: the CLI in a
subprocess joins the cluster with --address, and the clients talk to Ray Serve's HTTP proxy. The `serve`
protocol tests run unchanged against it; then both nodes serving, a replica killed under load, and draining
on shutdown. Every call and wait has a timeout, so a hang fails a test instead of blocking it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from serve_client import Background, call, metric, post_json, wait_until
from test_serve import (AUTH, KEY, ServerProcess, dev_texts, held_reference, held_texts,  # noqa: F401 (fixtures)
                        reference, scores_by_label, serve_bundle,
                        test_huggingface_inference_client_gets_every_label_with_the_engines_scores,
                        test_raw_http_predict_equals_engine_predict,
                        test_tritonclient_http_reads_logits_probabilities_and_labels)

import roberta_deploy
from roberta_deploy.serve.metrics import metric_value
from roberta_deploy.serve.ray_deployment import EngineHealth

START_TIMEOUT_S = 180  # importing ray, joining, shipping and warming two replicas on a loaded 2-core machine
REQUEST_TIMEOUT_S = 30


def test_ray_flags_without_ray_are_refused_before_anything_starts(tmp_path):
    """Needs no Ray: the CLI checks its flags first."""
    for flags in (["--replicas", "2"], ["--ray", "--replicas", "2", "--autoscale", "1:2"],
                  ["--ray", "--autoscale", "2"], ["--ray", "--replica-cpus", "0"], ["--ray", "--port", "0"]):
        result = subprocess.run([sys.executable, "-m", "roberta_deploy", "serve", "--bundle", str(tmp_path), *flags],
                                capture_output=True, text=True, timeout=120, env=environment())
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (flags, result.stderr)


def test_without_the_ray_extra_serve_ray_is_a_one_line_error_naming_it(tmp_path):
    # None in sys.modules makes `import ray` fail as it does where ray is not installed.
    program = ("import sys; sys.modules['ray'] = None; from roberta_deploy.cli import main; "
               f"sys.argv = ['roberta-deploy', 'serve', '--ray', '--bundle', {str(tmp_path)!r}]; main()")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
                            env=environment())
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "pip install 'roberta-deploy[ray]'" in lines[0]


def test_the_health_check_fails_only_when_every_batch_since_the_last_failed():
    from fake_engine import FakeEngine

    from roberta_deploy.runtime.batcher import Batcher
    from roberta_deploy.serve.models import ServedModel

    batcher = Batcher(FakeEngine(), max_wait_ms=0).start()
    models = {"fake": ServedModel(name="fake", engine=batcher.engine, batcher=batcher)}
    health = EngineHealth()
    try:
        assert health.problem(models) is None
        with pytest.raises(Exception):
            batcher.submit("broken!").result(REQUEST_TIMEOUT_S)  # "!" fails its batch in the fake engine
        assert "failed each of its last 1 batches" in health.problem(models)
        batcher.submit("broken!").exception(REQUEST_TIMEOUT_S)
        batcher.submit("fine").result(REQUEST_TIMEOUT_S)
        wait_until(lambda: batcher.stats.batches == 1, "the batch is counted")  # counted after its answer
        assert health.problem(models) is None  # one good batch among bad ones: the engine still works
    finally:
        batcher.close()
    assert "not running" in health.problem(models)


def test_the_deployment_takes_as_many_requests_per_replica_as_serve_and_scales_on_them(tmp_path):
    from roberta_deploy.serve.options import Limits, ServeOptions, parse_bundle_specs
    from roberta_deploy.serve.ray_deployment import RayOptions, deployment_settings

    options = ServeOptions(bundles=parse_bundle_specs([str(tmp_path)]), limits=Limits(max_concurrent_requests=40))
    fixed = deployment_settings(options, RayOptions(replicas=3, replica_cpus=2))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 40 and fixed["ray_actor_options"] == {"num_cpus": 2}
    scaled = deployment_settings(options, RayOptions(autoscale=(0, 4), target_ongoing_requests=8))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 4, "initial_replicas": 1,
                                            "target_ongoing_requests": 8, "look_back_period_s": 30.0,
                                            "upscale_delay_s": 30.0, "downscale_delay_s": 600.0}
    assert RayOptions(replica_cpus=1.5).cpu_threads == 2 and RayOptions(replica_cpus=0.5).cpu_threads == 1


def environment(**extra) -> dict:
    package_root = str(Path(roberta_deploy.__file__).resolve().parents[1])
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **extra,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """Two nodes of one CPU each: with one CPU per replica, two replicas land one on each node. Started once per
    test session (only this module uses it), and stopped when the module is done, so later tests get its
    memory and CPU back."""
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Autoscaling decides on requests in flight that replicas and the proxy report every 10 s by default: every
    # second here, so that the autoscaling test takes seconds. Read by the cluster's processes at start.
    os.environ["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "1"
    os.environ["RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "1"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    yield cluster
    cluster.shutdown()


class RayServer(ServerProcess):
    """`python -m roberta_deploy serve --ray [--address CLUSTER] ...` (or another command taking --ray, such as
    deploy) in a subprocess; its output (stdout and stderr together) collected on a thread. Without `address`
    the command starts a local Ray instance of its own. Stops and kills as test_serve's ServerProcess does;
    ready when the command says so."""

    def __init__(self, port: int, *args: str, address: str | None = None, command: str = "serve"):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "roberta_deploy", command, "--ray", *(["--address", address] if address else []),
             "--port", str(port), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=environment(ROBERTA_DEPLOY_API_KEY=KEY))
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT_S) or self.process.poll() is not None:
            self.kill()
            pytest.fail("serve --ray did not get ready:\n" + "\n".join(self.lines))

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if " ready: " in line:
                self._ready.set()
        self._ready.set()  # ended before ready: the constructor reports it


@pytest.fixture(scope="module")
def shipped_bundle(serve_bundle, tmp_path_factory):  # noqa: F811 (the fixture imported from test_serve)
    """A copy the test may delete once it is shipped: replicas must not need the driver's folder."""
    copy = tmp_path_factory.mktemp("ray") / "tiny"
    shutil.copytree(serve_bundle, copy)
    return copy


@pytest.fixture(scope="module")
def bundle_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-bundle-cache")


@pytest.fixture(scope="module")
def server(ray_cluster, shipped_bundle, bundle_cache):
    """Two replicas, the API key from the environment, and the small limits of test_serve's server."""
    process = RayServer(free_port(), "--bundle", f"tiny={shipped_bundle}", "--replicas", "2",
                        "--replica-cpus", "1", "--bundle-cache", str(bundle_cache), "--max-client-batch-size", "8",
                        "--payload-limit", "20000", "--max-input-chars", "1000", address=ray_cluster.address)
    yield process
    assert process.stop(timeout=120) == 0


def replicas_seen(port: int, scrapes: int = 40) -> dict[str, dict]:
    """Scrape /metrics `scrapes` times (Ray routes each to one replica): replica id -> its info labels and the
    inference requests it answered with success."""
    seen = {}
    for _ in range(scrapes):
        status, _, content = call(port, "GET", "/metrics", headers=AUTH, timeout=REQUEST_TIMEOUT_S)
        if status != 200:
            continue  # a replica that is going away
        text = content.decode()
        info = [sample for sample in _samples(text, "roberta_deploy_replica_info")]
        if info:
            served = metric_value(text, "roberta_deploy_requests_total",
                                  lambda labels: labels.get("outcome") == "success")
            seen[info[0]["replica"]] = {**info[0], "served": served}
    return seen


def _samples(text: str, name: str) -> list[dict]:
    from prometheus_client.parser import text_string_to_metric_families

    return [sample.labels for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name]


def test_limits_and_auth_over_ray(server):
    status, _, body = post_json(server.port, "/predict", {"inputs": ["好"] * 9}, AUTH)
    assert status == 422 and "--max-client-batch-size" in body["error"]
    status, _, body = post_json(server.port, "/predict", {"inputs": "好" * 1001}, AUTH)
    assert status == 422 and "--max-input-chars" in body["error"]
    status, headers, body = post_json(server.port, "/predict", {"inputs": "好"})
    assert status == 401 and "Bearer" in headers["www-authenticate"] and "--api-key" in body["error"]
    assert call(server.port, "GET", "/v2/health/live")[0] == 200  # liveness needs no key, as in serve


def test_replicas_on_both_nodes_answer(server, ray_cluster, dev_texts):  # noqa: F811
    for text in dev_texts:
        assert post_json(server.port, "/predict", {"inputs": text}, AUTH)[0] == 200
    seen = {}
    wait_until(lambda: seen.update(replicas_seen(server.port, scrapes=10)) or len(seen) >= 2,
               "both replicas answered a scrape", timeout=60)
    nodes = {ray_cluster.head_node.node_id, *(node.node_id for node in ray_cluster.worker_nodes)}
    assert {replica["node"] for replica in seen.values()} == nodes
    assert all(replica["served"] > 0 for replica in seen.values()), seen


def test_a_replica_killed_under_load_loses_no_request_silently_and_comes_back(server, shipped_bundle, bundle_cache,
                                                                              dev_texts):  # noqa: F811
    before = replicas_seen(server.port)
    assert len(before) == 2
    # From here no replica may read the driver's folder or the cache: a new one fetches the object store's copy.
    shutil.rmtree(shipped_bundle)
    for folder in bundle_cache.iterdir():
        shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    outcomes: list = []
    stop = threading.Event()

    def client(number: int) -> None:
        while not stop.is_set():
            try:
                status, _, _ = call(server.port, "POST", "/predict", {"inputs": dev_texts[number]}, AUTH,
                                    timeout=REQUEST_TIMEOUT_S)
                outcomes.append((time.monotonic(), status))
            except OSError as error:  # a timeout or a dropped connection: what must not happen
                outcomes.append((time.monotonic(), error))

    clients = [threading.Thread(target=client, args=(number,), daemon=True) for number in range(6)]
    for thread in clients:
        thread.start()
    wait_until(lambda: len(outcomes) >= 20, "the load is running")
    victim = sorted(before.values(), key=lambda replica: replica["replica"])[0]
    os.kill(int(victim["pid"]), signal.SIGKILL)
    killed_at = time.monotonic()
    live = {}

    def back_to_two() -> bool:
        live.update(replicas_seen(server.port, scrapes=10))
        live.pop(victim["replica"], None)
        return len(live) >= 2

    try:
        wait_until(back_to_two, "a new replica replaced the killed one", timeout=120)
        wait_until(lambda: sum(1 for at, status in outcomes if at > killed_at and status == 200) >= 20,
                   "requests are answered again")
    finally:
        stop.set()
        for thread in clients:
            thread.join(REQUEST_TIMEOUT_S + 5)
    assert not any(thread.is_alive() for thread in clients), "a client hung"
    errors = [status for _, status in outcomes if not isinstance(status, int)]
    assert not errors, errors[:3]
    statuses = {status for _, status in outcomes}
    assert statuses <= {200} | set(range(500, 600)), statuses
    assert victim["node"] in {replica["node"] for replica in live.values()}  # replaced where the CPU was freed
    assert any(folder.name != ".lock" for folder in bundle_cache.iterdir())  # unpacked again from the store


def test_sigterm_drains_every_accepted_request_then_exits_0(server, ray_cluster, serve_bundle, held_texts,
                                                            held_reference):  # noqa: F811
    reference = held_reference
    # The module's deployment goes first: Serve's proxy keeps the port it was started with, and one application
    # holds its routes.
    assert server.stop(timeout=120) == 0
    # The partial batch waits long enough for all four requests to be seen in flight together, even when a
    # loaded machine or Ray's proxy spreads their arrival; on SIGTERM the batcher runs it at once.
    process = RayServer(server.port, "--bundle", f"tiny={serve_bundle}", "--replicas", "1",
                        "--max-wait-ms", "10000", address=ray_cluster.address)
    try:
        in_flight = [Background(post_json, process.port, "/predict", {"inputs": text}, AUTH)
                     for text in held_texts]
        wait_until(lambda: metric(process.port, "roberta_deploy_requests_in_flight", AUTH) == 4,
                   "four requests are in flight")
        process.process.send_signal(signal.SIGTERM)
        answers = [request.result(60) for request in in_flight]
        assert [status for status, _, _ in answers] == [200] * 4
        for (_, _, body), probabilities in zip(answers, reference.probabilities):
            assert scores_by_label(body) == pytest.approx(dict(zip(reference.label_names, probabilities.tolist())),
                                                          abs=1e-4)
        assert process.stop(timeout=120) == 0
        log = "\n".join(process.lines)
        assert log.index("stopping:") < log.index("stopped: every accepted request was answered")
    finally:
        process.kill()


def test_autoscaling_adds_a_replica_under_load_and_removes_it_without_losing_a_request(server, ray_cluster,
                                                                                        serve_bundle, dev_texts):  # noqa: F811
    import ray

    from roberta_deploy.serve.options import ServeOptions, parse_bundle_specs
    from roberta_deploy.serve.ray_deployment import RayOptions, deploy

    assert server.stop(timeout=120) == 0  # Serve's proxy keeps the module's port; one application holds it
    ray.init(address=ray_cluster.address, configure_logging=False, log_to_driver=False)
    # This test process is the driver now. Two requests in flight per replica is the target: six clients call
    # for three replicas (two, the most the two 1-CPU nodes hold), one client for one, with a margin on both
    # sides of the rounding. Ray wants the look-back window longer than its (deprecated) 10 s metrics interval.
    endpoint = deploy(ServeOptions(bundles=parse_bundle_specs([f"tiny={serve_bundle}"]), port=server.port,
                                   api_key=KEY),
                      RayOptions(address=ray_cluster.address, autoscale=(1, 2), target_ongoing_requests=2,
                                 look_back_period_s=11, upscale_delay_s=0, downscale_delay_s=2))
    outcomes: list = []
    clients_wanted = [6]
    stop = threading.Event()

    def client(number: int) -> None:
        while not stop.is_set():
            if number >= clients_wanted[0]:
                stop.wait(0.05)
                continue
            try:
                status, _, _ = call(server.port, "POST", "/predict", {"inputs": dev_texts[number] * 8}, AUTH,
                                    timeout=REQUEST_TIMEOUT_S)
                outcomes.append(status)
            except OSError as error:
                outcomes.append(error)

    clients = [threading.Thread(target=client, args=(number,), daemon=True) for number in range(6)]
    try:
        assert len(replicas_seen(server.port)) == 1
        for thread in clients:
            thread.start()
        wait_until(lambda: len(replicas_seen(server.port, scrapes=10)) == 2, "a second replica was added",
                   timeout=90)
        clients_wanted[0] = 1  # less load: the autoscaler removes a replica, which drains first
        wait_until(lambda: len(replicas_seen(server.port, scrapes=10)) == 1, "a replica was removed", timeout=90)
    finally:
        stop.set()
        for thread in clients:
            thread.join(REQUEST_TIMEOUT_S + 5)
        endpoint.close()
    assert outcomes and set(outcomes) == {200}, [outcome for outcome in outcomes if outcome != 200][:3]


def test_replicas_that_cannot_load_the_bundle_end_the_command_with_their_reason(server, ray_cluster, serve_bundle,
                                                                                 tmp_path):  # noqa: F811
    import json

    assert server.stop(timeout=120) == 0
    bundle = tmp_path / "cuda-only"
    shutil.copytree(serve_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    manifest["device"] = "cuda"  # valid, and verified on the driver; an OpenVINO engine refuses it on load
    (bundle / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "roberta_deploy", "serve", "--ray", "--address", ray_cluster.address,
                             "--port", str(server.port), "--bundle", str(bundle)],
                            capture_output=True, text=True, timeout=START_TIMEOUT_S, env=environment())
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert result.returncode == 1, result.stderr
    assert last.startswith("error: the replicas failed to start: ") and "cuda" in last, result.stderr
