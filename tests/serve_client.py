"""Raw HTTP for the server tests (http.client, a timeout on every call) and a helper that waits with a bound."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

CALL_TIMEOUT_S = 30  # generous: only a hang comes near it
WAIT_S = 30


def call(port: int, method: str, path: str, body=None, headers: dict | None = None, *, raw: bytes | None = None,
         timeout: float = CALL_TIMEOUT_S) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        sent = {"Content-Type": "application/json"} if payload is not None else {}
        sent.update(headers or {})
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post_json(port: int, path: str, body, headers: dict | None = None) -> tuple[int, dict, object]:
    status, response_headers, content = call(port, "POST", path, body, headers)
    return status, response_headers, json.loads(content) if content else None


def wait_until(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if condition():
            return
        pause.wait(0.02)
    pytest.fail(f"timed out after {timeout:.0f}s waiting until {what}")


def metric(port: int, name: str, headers: dict | None = None, **labels) -> float:
    from roberta_deploy.serve.metrics import metric_value

    status, _, content = call(port, "GET", "/metrics", headers=headers)
    assert status == 200
    return metric_value(content.decode(), name,
                        lambda sample: all(sample.get(key) == value for key, value in labels.items()))


class Background:
    """Run `function` on a thread; `result()` joins with a timeout and re-raises its error."""

    def __init__(self, function, *args):
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(function, args), daemon=True)
        self._thread.start()

    def _run(self, function, args):
        try:
            self._value = function(*args)
        except BaseException as error:  # handed to result()
            self._error = error

    def result(self, timeout: float = CALL_TIMEOUT_S):
        self._thread.join(timeout)
        if self._thread.is_alive():
            pytest.fail("a background request did not finish in time")
        if self._error is not None:
            raise self._error
        return self._value
