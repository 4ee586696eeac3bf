"""One hostile client against the real server (a subprocess serving a tiny bundle on 127.0.0.1): slow bodies,
half-sent headers, a connection flood, response amplification, malformed bodies, hang-ups, SIGTERM with slow
clients held. While each attack runs a well-behaved client keeps getting 200s. Deadlines are set short by
flag so the suite stays fast; every loop is bounded in count and time."""

from __future__ import annotations

import json
import resource
import selectors
import signal
import socket
import threading
import time

import pytest
from serve_client import Background, call, metric, wait_until
from test_serve import ServerProcess

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")

SLOW_BODIES = 600  # more than the default 512 requests in flight
HALF_HEADERS = 300
HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 2, 10
NORMAL_REQUESTS = 20
NORMAL_TIMEOUT_S = 5
SLOW_BODY_HEAD = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{")
HALF_HEADER = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
GOOD = {"inputs": "房间很干净，服务也很好"}


def raise_file_limit(needed: int) -> None:
    """Room for this process's attack sockets (the server raises its own limit to fit --max-connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open-file limit ({hard}) leaves no room for {needed} sockets")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def open_connections(port: int, count: int, first_bytes: bytes) -> list[socket.socket]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if first_bytes:
                sock.sendall(first_bytes)
            sockets.append(sock)
    except BaseException:
        close_all(sockets)
        raise
    return sockets


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def wait_closed_by_server(sockets: list[socket.socket], timeout: float) -> tuple[int, list[bytes]]:
    """Read each socket until the server closes it (or resets it), for at most `timeout` seconds; return how
    many are still open and what the server sent before closing."""
    selector = selectors.DefaultSelector()  # epoll: no limit on descriptor numbers, unlike select()
    received = {sock: b"" for sock in sockets}
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    open_count = len(sockets)
    deadline = time.monotonic() + timeout
    while open_count and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            try:
                data = key.fileobj.recv(65536)
            except (ConnectionResetError, BlockingIOError) as error:
                if isinstance(error, BlockingIOError):
                    continue
                data = b""
            if data:
                received[key.fileobj] += data
            else:
                selector.unregister(key.fileobj)
                open_count -= 1
    selector.close()
    return open_count, list(received.values())


class NormalClient:
    """A well-behaved client on its own thread: NORMAL_REQUESTS requests one after the other, each counted good
    only if it is answered 200 within NORMAL_TIMEOUT_S."""

    def __init__(self, port: int, requests: int = NORMAL_REQUESTS, pause_s: float = 0.1):
        self.statuses: list[int | str] = []
        self._background = Background(self._run, port, requests, pause_s)

    def _run(self, port: int, requests: int, pause_s: float) -> None:
        for _ in range(requests):
            started = time.monotonic()
            try:
                status = call(port, "POST", "/predict", GOOD, timeout=NORMAL_TIMEOUT_S)[0]
                self.statuses.append(status if time.monotonic() - started <= NORMAL_TIMEOUT_S else "late")
            except OSError as error:
                self.statuses.append(type(error).__name__)
            time.sleep(pause_s)

    def good_share(self) -> float:
        self._background.result(timeout=NORMAL_REQUESTS * (NORMAL_TIMEOUT_S + 1) + 30)
        return sum(status == 200 for status in self.statuses) / len(self.statuses)


@pytest.fixture(scope="module")
def server(bundle_factory):
    raise_file_limit(2 * SLOW_BODIES + 200)
    process = ServerProcess("--bundle", str(bundle_factory("openvino", "fp32")), "--name", "tiny",
                            "--header-timeout", str(HEADER_TIMEOUT_S), "--body-timeout", str(BODY_TIMEOUT_S),
                            "--max-connections", str(SLOW_BODIES + 300))
    try:
        process.wait_ready()
        yield process
    finally:
        assert process.stop() == 0
        log = "\n".join(process.lines)
        assert "Traceback" not in log, log


def test_slow_bodies_hold_no_inference_slot_and_are_cut_at_the_body_deadline(server):
    port = server.port
    dropped_before = metric(port, "roberta_deploy_requests_total", outcome="dropped")
    slow = open_connections(port, SLOW_BODIES, SLOW_BODY_HEAD)
    try:
        wait_until(lambda: metric(port, "roberta_deploy_connections_open") >= SLOW_BODIES, "every slow body is open")
        normal = NormalClient(port)
        for sock in slow:  # one more byte each, as a client dripping its body would send
            sock.sendall(b" ")
        share = normal.good_share()
        assert share >= 0.9, normal.statuses
        still_open, answers = wait_closed_by_server(slow, timeout=BODY_TIMEOUT_S + 50)
        assert still_open == 0
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)
    finally:
        close_all(slow)
    assert metric(port, "roberta_deploy_connections_cut_total", reason="body_timeout") >= SLOW_BODIES
    wait_until(lambda: metric(port, "roberta_deploy_requests_total", outcome="dropped") - dropped_before
               >= SLOW_BODIES, "every cut request is counted as dropped")
    assert metric(port, "roberta_deploy_requests_total", outcome="internal_error") == 0


def test_half_sent_headers_are_closed_at_the_header_deadline(server):
    port = server.port
    half = open_connections(port, HALF_HEADERS, HALF_HEADER)
    try:
        normal = NormalClient(port, requests=10)
        started = time.monotonic()
        still_open, answers = wait_closed_by_server(half, timeout=65)
        assert still_open == 0 and time.monotonic() - started < 65
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)
        assert normal.good_share() >= 0.9, normal.statuses
    finally:
        close_all(half)
    assert metric(port, "roberta_deploy_connections_cut_total", reason="header_timeout") >= HALF_HEADERS


def test_silent_connections_are_closed_too(server):
    silent = open_connections(server.port, 50, b"")
    try:
        still_open, _ = wait_closed_by_server(silent, timeout=65)
        assert still_open == 0
    finally:
        close_all(silent)


def test_amplifying_requests_are_refused_without_stalling_others(server):
    port = server.port
    texts = ["这家酒店的房间很大"] * 32
    amplifying = json.dumps({"inputs": [{"name": "text", "shape": [32], "datatype": "BYTES", "data": texts}],
                             "outputs": [{"name": "logits"}] * 60_000}).encode()
    attackers = [Background(lambda: call(port, "POST", "/v2/models/tiny/infer", raw=amplifying)) for _ in range(6)]
    normal = NormalClient(port, requests=10)
    for attacker in attackers:
        status, _, body = attacker.result(timeout=60)
        assert status == 422 and b"asked for twice" in body
    assert normal.good_share() >= 0.9, normal.statuses


@pytest.mark.parametrize("path, body", [
    ("/predict", b'{"inputs": "\\ud800"}'),
    ("/", b'{"inputs": "\\ud800"}'),
    ("/v2/models/tiny/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["\\ud800"]}]}'),
    ("/predict", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("/v2/models/tiny/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": '
                              + b"[" * 995 + b'"a"' + b"]" * 995 + b"}]}"),
    ("/v2/models/tiny/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"], '
                              b'"parameters": "binary_data_size"}]}'),
    ("/v2/models/tiny/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}], '
                              b'"outputs": [{"name": "label", "parameters": [1]}]}'),
    ("/predict", b"\xff\xfe{"),
])
def test_malformed_bodies_are_4xx_on_the_real_tokenizer(server, path, body):
    status, headers, content = call(server.port, "POST", path, raw=body)
    assert 400 <= status < 500, content
    assert json.loads(content)["error"] and headers["x-request-id"]


def test_hang_ups_are_counted_as_dropped_not_internal_errors(server):
    port = server.port
    before = metric(port, "roberta_deploy_requests_total", outcome="dropped")
    body = json.dumps(GOOD).encode()
    for _ in range(20):  # half the body, then gone
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
    normal = NormalClient(port, requests=5)
    assert normal.good_share() >= 0.8, normal.statuses
    wait_until(lambda: metric(port, "roberta_deploy_requests_total", outcome="dropped") - before >= 20,
               "each hang-up is counted as dropped")
    assert metric(port, "roberta_deploy_requests_total", outcome="internal_error") == 0


def test_a_flood_past_max_connections_is_answered_503_and_sigterm_ends_within_the_drain_timeout(bundle_factory):
    """A second server: a small connection cap, long body deadline, a 3 s drain."""
    cap, drain_s = 40, 3
    process = ServerProcess("--bundle", str(bundle_factory("openvino", "fp32")), "--name", "tiny",
                            "--max-connections", str(cap), "--body-timeout", "120", "--drain-timeout", str(drain_s))
    flood, slow = [], []
    try:
        process.wait_ready()
        flood = open_connections(process.port, cap + 20, b"")
        _, answers = wait_closed_by_server(flood[cap:], timeout=30)
        assert sum(answer.startswith(b"HTTP/1.1 503") for answer in answers) >= 19
        close_all(flood)
        wait_until(lambda: call(process.port, "GET", "/health")[0] == 200, "the flood's connections are gone")
        slow = open_connections(process.port, 5, SLOW_BODY_HEAD)
        wait_until(lambda: metric(process.port, "roberta_deploy_connections_open") >= 5, "five slow bodies held")
        process.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        wait_until(lambda: not _answers_200(process.port), "readiness goes false at once", timeout=2)
        code = process.process.wait(drain_s + 30)  # the drain, then closing the batchers and the interpreter
        assert code == 0
        assert time.monotonic() - started < drain_s + 30
        process.stop()
        log = "\n".join(process.lines)
        assert "SIGTERM: not ready" in log and "stopped:" in log
    finally:
        close_all(flood)
        close_all(slow)
        process.kill()


def _answers_200(port: int) -> bool:
    try:
        return call(port, "GET", "/health", timeout=2)[0] == 200
    except OSError:
        return False
