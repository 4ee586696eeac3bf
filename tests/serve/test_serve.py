"""`roberta-deploy serve` as users run it: a subprocess on a free loopback port serving a real tiny bundle,
called with the clients its users already have (huggingface_hub's InferenceClient, tritonclient.http)
and raw HTTP. Every call and wait has a timeout, so a hang fails the test instead of blocking it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_client import Background, call, metric, post_json, wait_until

import roberta_deploy
from roberta_deploy.data import read_dataset
from roberta_deploy.runtime.engine import Engine

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
START_TIMEOUT_S = 120  # importing, compiling and warming up on a loaded 2-core machine
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class ServerProcess:
    """`python -m roberta_deploy serve --port 0 ...` (or another serving command, such as deploy); its output
    (stdout and stderr together) is collected on a thread."""

    def __init__(self, *args: str, env: dict | None = None, command: str = "serve"):
        package_root = str(Path(roberta_deploy.__file__).resolve().parents[1])
        environment = {**os.environ, **(env or {}),
                       "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen([sys.executable, "-m", "roberta_deploy", command, "--port", "0", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._listening.wait(START_TIMEOUT_S):
            self.kill()
            pytest.fail("the server did not start listening:\n" + "\n".join(self.lines))
        self.port = int(LISTENING.search("\n".join(self.lines)).group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if LISTENING.search(line):
                self._listening.set()
        self._listening.set()  # ended before listening: the constructor reports it

    def wait_ready(self, headers=None) -> None:
        wait_until(lambda: self.process.poll() is None and call(self.port, "GET", "/health", headers=headers)[0] == 200,
                   "the server is ready", timeout=START_TIMEOUT_S)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("the server did not exit after " + signal.Signals(sig).name)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


@pytest.fixture(scope="module")
def serve_bundle(bundle_factory) -> Path:
    return bundle_factory("openvino", "fp32")


@pytest.fixture(scope="module")
def dev_texts(dev_tsv) -> list[str]:
    return read_dataset(dev_tsv).texts[:24]


@pytest.fixture(scope="module")
def reference(serve_bundle, dev_texts):
    """Engine.predict on the same texts, in this process: what every protocol must answer."""
    return Engine.load(serve_bundle).predict(dev_texts)


@pytest.fixture(scope="module")
def held_texts(dev_texts) -> list[str]:
    """Four texts of about one length: the online batcher cuts a batch at once when the waiting rows differ so
    much in length that one batch would compute padding (runtime/online.py), so only texts of one length
    class wait together for --max-wait-ms and stay in flight long enough to act on."""
    return [text[:24] for text in dev_texts[:4]]


@pytest.fixture(scope="module")
def held_reference(serve_bundle, held_texts):
    return Engine.load(serve_bundle).predict(held_texts)


@pytest.fixture(scope="module")
def server(serve_bundle):
    """An API key from the environment, and small limits so each can be crossed cheaply."""
    process = ServerProcess("--bundle", f"tiny={serve_bundle}", "--max-client-batch-size", "8",
                            "--payload-limit", "20000", "--max-input-chars", "1000",
                            env={"ROBERTA_DEPLOY_API_KEY": KEY})
    process.wait_ready(AUTH)
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def slow_batches(serve_bundle):
    """Partial batches wait 4 s for company, so requests stay in flight long enough to act on them."""
    process = ServerProcess("--bundle", str(serve_bundle), "--name", "tiny", "--max-wait-ms", "4000",
                            "--max-concurrent-requests", "3")
    process.wait_ready()
    yield process
    assert process.stop() == 0


def scores_by_label(answer) -> dict[str, float]:
    return {entry["label"]: entry["score"] for entry in answer}


def test_huggingface_inference_client_gets_every_label_with_the_engines_scores(server, dev_texts, reference,
                                                                               monkeypatch):
    from huggingface_hub import InferenceClient, constants
    from huggingface_hub.errors import HfHubHTTPError

    # The suite runs with HF_HUB_OFFLINE=1, which makes huggingface_hub refuse every URL, loopback included.
    # Lift it for this test only: the client below talks to nothing but 127.0.0.1.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    client = InferenceClient(model=server.url, api_key=KEY, timeout=30)
    for text, probabilities in zip(dev_texts[:6], reference.probabilities):
        answer = client.text_classification(text)
        assert len(answer) == len(reference.label_names)
        assert {item.label: item.score for item in answer} == pytest.approx(
            dict(zip(reference.label_names, probabilities.tolist())), abs=1e-4)
    top = client.text_classification(dev_texts[0], top_k=1)
    assert [item.label for item in top] == [reference.label_names[reference.labels[0]]]
    with pytest.raises(HfHubHTTPError) as raised:
        InferenceClient(model=server.url, timeout=30).text_classification(dev_texts[0])
    assert raised.value.response.status_code == 401


def test_tritonclient_http_reads_logits_probabilities_and_labels(server, dev_texts, reference):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)
    assert client.is_server_live() and client.is_server_ready(headers=AUTH)
    assert client.is_model_ready("tiny", headers=AUTH)
    metadata = client.get_model_metadata("tiny", headers=AUTH)
    assert metadata["inputs"][0]["name"] == "text" and metadata["inputs"][0]["datatype"] == "BYTES"
    texts = dev_texts[:8]
    for binary in (True, False):
        tensor = triton.InferInput("text", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array([text.encode() for text in texts], dtype=np.object_), binary_data=binary)
        outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("logits", "probabilities",
                                                                                      "label")]
        # A fresh dict per call: tritonclient adds Inference-Header-Content-Length to the dict it is given.
        result = client.infer("tiny", [tensor], outputs=outputs, headers=dict(AUTH))
        assert np.allclose(result.as_numpy("logits"), reference.logits[:8], atol=1e-4)
        assert np.allclose(result.as_numpy("probabilities"), reference.probabilities[:8], atol=1e-4)
        labels = [label.decode() if binary else label for label in result.as_numpy("label")]  # as from Triton
        assert labels == \
               [reference.label_names[index] for index in reference.labels[:8]]
    # No outputs named: the client asks for every output in binary.
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts[:2]], dtype=np.object_))
    assert np.allclose(client.infer("tiny", [tensor], headers=dict(AUTH)).as_numpy("logits"), reference.logits[:2],
                       atol=1e-4)
    with pytest.raises(triton.InferenceServerException) as raised:
        client.infer("tiny", [tensor])
    assert "--api-key" in str(raised.value)
    client.close()


def test_raw_http_predict_equals_engine_predict(server, dev_texts, reference):
    for start in range(0, 24, 8):
        status, headers, body = post_json(server.port, "/predict", {"inputs": dev_texts[start:start + 8]}, AUTH)
        assert status == 200 and int(headers["x-compute-tokens"]) >= 8
        for answer, probabilities in zip(body, reference.probabilities[start:start + 8]):
            assert scores_by_label(answer) == pytest.approx(dict(zip(reference.label_names, probabilities.tolist())),
                                                            abs=1e-4)
            assert answer[0]["score"] >= answer[-1]["score"]
    status, _, body = post_json(server.port, "/", {"inputs": dev_texts[0]}, AUTH)
    assert status == 200 and scores_by_label(body[0]) == pytest.approx(
        dict(zip(reference.label_names, reference.probabilities[0].tolist())), abs=1e-4)
    status, _, info = call(server.port, "GET", "/info", headers=AUTH)
    info = json.loads(info)
    assert info["model_id"] == "tiny" and info["backend"] == "openvino" and info["precision"] == "fp32"
    assert info["labels"] == list(reference.label_names) and info["max_client_batch_size"] == 8


def test_limits_and_auth_over_http(server):
    status, _, body = post_json(server.port, "/predict", {"inputs": ["好"] * 9}, AUTH)
    assert status == 422 and "--max-client-batch-size" in body["error"]
    status, _, body = post_json(server.port, "/predict", {"inputs": "好" * 1001}, AUTH)
    assert status == 422 and "--max-input-chars" in body["error"]
    status, _, body = post_json(server.port, "/predict", {"inputs": ["好" * 900] * 8}, AUTH)
    assert status == 413 and "--payload-limit" in body["error"]
    status, headers, body = post_json(server.port, "/predict", {"inputs": "好"})
    assert status == 401 and "Bearer" in headers["www-authenticate"]
    assert metric(server.port, "roberta_deploy_requests_total", AUTH, outcome="unauthorized") >= 1


def test_readiness_comes_after_warm_up_and_liveness_before(serve_bundle):
    process = ServerProcess("--bundle", str(serve_bundle))
    try:
        assert call(process.port, "GET", "/v2/health/live")[0] == 200
        statuses = []
        wait_until(lambda: statuses.append(call(process.port, "GET", "/health")[0]) or statuses[-1] == 200,
                   "the server is ready", timeout=START_TIMEOUT_S)
        assert set(statuses[:-1]) <= {503}
        assert [call(process.port, "GET", "/v2/health/ready")[0] for _ in range(3)] == [200] * 3
        log = "\n".join(process.lines)
        assert log.index("listening") < log.index("warmed up") < log.index("ready:")
    finally:
        assert process.stop(signal.SIGINT) == 0


def test_concurrent_requests_are_merged_into_batches(slow_batches, dev_texts):
    port = slow_batches.port
    before = metric(port, "roberta_deploy_batch_size_count", model="tiny")
    # One text three times: texts of far-apart lengths are not merged (the padding cap), and then whether two
    # of them share a batch depends on the order they arrive in (3 batches in 2 of the 6 orders: a flake).
    requests = [Background(post_json, port, "/predict", {"inputs": dev_texts[0]}) for _ in range(3)]
    assert [request.result()[0] for request in requests] == [200] * 3
    assert metric(port, "roberta_deploy_batch_size_count", model="tiny") - before < 3
    assert metric(port, "roberta_deploy_batch_size_sum", model="tiny") >= 3


def test_overload_is_answered_429_with_retry_after(slow_batches, dev_texts, held_texts):
    port = slow_batches.port
    held = [Background(post_json, port, "/predict", {"inputs": text}) for text in held_texts[:3]]
    wait_until(lambda: metric(port, "roberta_deploy_requests_in_flight") == 3, "three requests are in flight")
    status, headers, body = post_json(port, "/predict", {"inputs": dev_texts[3]})
    assert status == 429 and headers["retry-after"] == "1" and "--max-concurrent-requests" in body["error"]
    assert [request.result()[0] for request in held] == [200] * 3


def test_a_disconnected_client_is_counted_as_dropped(slow_batches, dev_texts):
    port = slow_batches.port
    body = json.dumps({"inputs": dev_texts[5]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: metric(port, "roberta_deploy_queue_size", model="tiny") == 1, "the request waits")
    wait_until(lambda: metric(port, "roberta_deploy_requests_total", outcome="dropped") == 1, "it is counted")
    wait_until(lambda: metric(port, "roberta_deploy_batcher_dropped_total", model="tiny") == 1,
               "the batcher dropped it before compute")


def test_sigterm_answers_every_request_in_flight_then_exits_0(serve_bundle, held_texts, held_reference):
    reference = held_reference
    process = ServerProcess("--bundle", str(serve_bundle), "--max-wait-ms", "4000")
    try:
        process.wait_ready()
        in_flight = [Background(post_json, process.port, "/predict", {"inputs": text}) for text in held_texts]
        wait_until(lambda: metric(process.port, "roberta_deploy_requests_in_flight") == 4, "four requests in flight")
        process.process.send_signal(signal.SIGTERM)
        answers = [request.result() for request in in_flight]
        assert [status for status, _, _ in answers] == [200] * 4
        for (_, _, body), probabilities in zip(answers, reference.probabilities):
            assert scores_by_label(body) == pytest.approx(dict(zip(reference.label_names, probabilities.tolist())),
                                                          abs=1e-4)
        assert process.stop() == 0, "\n".join(process.lines)
        log = "\n".join(process.lines)
        assert "SIGTERM" in log and "every accepted request was answered" in log
    finally:
        process.kill()


def test_sigterm_repeated_while_the_server_stops_still_exits_0(serve_bundle):
    """A supervisor that sends SIGTERM again (as this file's stop() does when the process has not exited yet)
    must not change the exit code. Before the fix a repeat that landed after the server put the command line's
    handlers back ended it with 143, with a traceback's 1 (CI) or by the signal itself."""
    process = ServerProcess("--bundle", str(serve_bundle))
    try:
        process.wait_ready()
        process.process.send_signal(signal.SIGTERM)
        while process.process.poll() is None:  # every 2 ms until it is gone, so every stage of the exit gets one
            with contextlib.suppress(ProcessLookupError):
                process.process.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        assert process.stop() == 0, "\n".join(process.lines)
    finally:
        process.kill()


def test_a_bad_bundle_is_a_one_line_error_before_listening(tmp_path):
    package_root = str(Path(roberta_deploy.__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-m", "roberta_deploy", "serve", "--bundle", str(tmp_path / "missing"),
                             "--port", "0"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": package_root})
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0], result.stderr
    assert "listening" not in result.stderr
