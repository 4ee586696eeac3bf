"""`serve --ray` stopped at any moment of its start-up (inside or after ray.init, while shipping bundles, while the
replicas start): the documented exit code (130 for Ctrl-C, 143 for SIGTERM), one line of ours, no traceback or
C++ abort, and nothing left running of the local Ray it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import roberta_deploy

pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")

START_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_processes(session: int) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    found.append((entry / "cmdline").read_text().replace("\0", " ")[:120])
            except (OSError, ProcessLookupError):
                continue
    return found


@pytest.mark.parametrize("moment, sent, code", [
    ("started a local Ray instance", signal.SIGINT, 130),
    ("deploying", signal.SIGTERM, 143),
])
def test_a_stop_signal_during_ray_start_up_leaves_nothing_running(bundle_factory, moment, sent, code):
    package_root = str(Path(roberta_deploy.__file__).resolve().parents[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "roberta_deploy", "serve", "--ray", "--bundle", str(bundle_factory("openvino", "fp32")),
         "--port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # Ray's processes join this session: what is left of it after the exit is a leak
        env={**os.environ, "PYTHONPATH": package_root, "PYTHONFAULTHANDLER": "1"})
    lines: list[str] = []
    reached = threading.Event()

    def read() -> None:  # on a thread: a command that prints nothing must not block the test
        for line in process.stdout:
            lines.append(line)
            if moment in line:
                reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert reached.wait(START_S), "".join(lines)
        process.send_signal(sent)
        process.wait(120)
        reader.join(30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    output = "".join(lines)
    assert process.returncode == code, output
    assert "Traceback" not in output and "terminate called" not in output and "Fatal Python error" not in output
    assert ("interrupted" if code == 130 else "terminated") + "; no partial output was left" in output
    deadline = time.monotonic() + 30  # Ray's processes end on their own once their driver stopped them
    while session_processes(process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert session_processes(process.pid) == []
