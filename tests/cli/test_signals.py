"""Every command that can be interrupted ends with its documented exit code on Ctrl-C (SIGINT) and SIGTERM, with
no partial output and never a native abort (134 or -6): 130 and 143, except `serve`, which drains and exits 0.
Each command runs as a real process; the signal is sent once it is at work (its output reserved, its engine
library loaded, or its first connection made)."""

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

COMMAND = [sys.executable, "-m", "roberta_deploy"]
START_S = 180  # importing torch and OpenVINO on a loaded 2-core machine
EXIT_S = 120
SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143)]


@pytest.fixture(scope="module")
def many_rows(samples_tsv, tmp_path_factory) -> Path:
    """About 12,000 rows: long enough that every command is still at work when the signal comes."""
    header, rows = samples_tsv.read_text(encoding="utf-8").split("\n", 1)
    path = tmp_path_factory.mktemp("signals-data") / "many.tsv"
    path.write_text(header + "\n" + rows.rstrip("\n") + "\n" + (rows.rstrip("\n") + "\n") * 59, encoding="utf-8")
    return path


def loaded(process: subprocess.Popen, library: str) -> bool:
    try:
        return library in Path(f"/proc/{process.pid}/maps").read_text()
    except OSError:
        return False


class SilentServer:
    """A loopback listener that accepts and never answers: loadtest waits on it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        try:
            while True:
                connection, _ = self.sock.accept()
                self.connections.append(connection)
                self.accepted.set()
        except OSError:
            return

    def close(self):
        for connection in self.connections:
            connection.close()
        self.sock.close()


def command_line(name: str, tmp_path: Path, inputs: dict, server: SilentServer) -> tuple[list[str], callable]:
    """The arguments of `name` and a check that it is at work."""
    output = tmp_path / "out"
    at_work = lambda process: (tmp_path / ".out.lock").exists()  # noqa: E731  the output is reserved
    checkpoint, data, bundle, export = (str(inputs[key]) for key in ("checkpoint", "data", "bundle", "export"))
    arguments = {
        "export": ["export", "--model", checkpoint, "--output", str(output)],
        "build": ["build", "--export", export, "--output", str(output), "--backend", "openvino", "--precision",
                  "int8", "--calibration-data", data],
        "finetune": ["finetune", "--model", checkpoint, "--train", data, "--dev", data, "--output", str(output)],
        "infer": ["infer", "--bundle", bundle, "--data", data, "--output", str(output)],
        "eval": ["eval", "--model", checkpoint, "--data", data, "--output", str(output)],
        "run": ["run", "--model", checkpoint, "--data", data, "--output", str(output)],
        "deploy": ["deploy", "--model", checkpoint, "--data", data, "--output", str(output), "--no-serve"],
        "perf": ["perf", "--bundle", bundle, "--duration", "60"],
        "serve": ["serve", "--bundle", bundle, "--port", "0"],
        "loadtest": ["loadtest", f"http://127.0.0.1:{server.port}", "--data", data, "--concurrency", "2",
                     "--duration", "60", "--output", str(output)],
    }[name]
    if name in ("perf", "serve"):
        at_work = lambda process: loaded(process, "libopenvino")  # noqa: E731
    elif name == "loadtest":
        at_work = lambda process: server.accepted.is_set()  # noqa: E731
    return arguments, at_work


@pytest.fixture(scope="module")
def inputs(tiny_checkpoints, tiny_exports, bundle_factory, many_rows) -> dict:
    return {"checkpoint": tiny_checkpoints["bert"], "export": tiny_exports["bert"].folder,
            "bundle": bundle_factory("openvino", "fp32"), "data": many_rows}


@pytest.mark.parametrize("sent, code", SIGNALS, ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("name", ["export", "build", "finetune", "infer", "eval", "run", "deploy", "perf", "serve",
                                  "loadtest"])
def test_every_command_ends_with_its_code_on_a_signal(name, sent, code, inputs, tmp_path):
    server = SilentServer()
    work = tmp_path / "work"
    work.mkdir()
    arguments, at_work = command_line(name, work, inputs, server)
    process = subprocess.Popen([*COMMAND, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # a native abort shows its stacks
    try:
        deadline = time.monotonic() + START_S
        while not at_work(process) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, f"{name} ended before the signal: {process.communicate()[1]}"
        assert at_work(process), f"{name} was not at work after {START_S} s"
        time.sleep(0.3)
        process.send_signal(sent)
        _, stderr = process.communicate(timeout=EXIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
        server.close()
    expected = 0 if name == "serve" else code  # serve drains and stops, as asked
    assert process.returncode == expected, stderr
    assert "terminate called" not in stderr and "Traceback" not in stderr and "Fatal Python error" not in stderr
    leftovers = [str(path) for path in work.rglob(".*") if ".partial-" in path.name or path.name.endswith(".lock")]
    assert leftovers == [], "staging left behind"
    # deploy's folder keeps what it finished (its record says so, and the next deploy resumes from it)
    assert os.listdir(work) == (["out"] if name == "deploy" and (work / "out").exists() else []), "partial output"


WRAPPING_LIBRARY = """
import os, signal, sys, time
import typer
from roberta_deploy.cli.exits import reports_errors
from roberta_deploy.interrupts import install_stop_handlers

install_stop_handlers()

@reports_errors
def command():
    try:
        if sys.argv[1] == "signal":
            os.kill(os.getpid(), signal.SIG%s)
            time.sleep(30)  # the handler raises here
        raise ValueError("a library's own failure")
    except BaseException as error:
        raise RuntimeError("a library's error") from error  # as torch's ONNX tracer wraps what our code raised

try:
    command()
except typer.Exit as ended:
    sys.exit(ended.exit_code)
"""


@pytest.mark.parametrize("sent, code", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_a_signal_that_a_library_wrapped_in_its_own_error_still_ends_with_its_code(sent, code):
    # CI: `run` got SIGTERM while torch traced the export; the Terminated came back as a RuntimeError: exit 1.
    script = WRAPPING_LIBRARY % sent.name[3:]
    result = subprocess.run([sys.executable, "-c", script, "signal"], capture_output=True, text=True, timeout=60)
    assert result.returncode == code, result.stderr
    assert "no partial output was left" in result.stderr and "Traceback" not in result.stderr
    # Without a signal the same error is not hidden: a traceback and exit 1, as for any bug.
    result = subprocess.run([sys.executable, "-c", script, "none"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "RuntimeError: a library's error" in result.stderr
