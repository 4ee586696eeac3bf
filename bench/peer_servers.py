"""The servers bench/serve_peers.py compares, and the models each one serves, built once into the bench cache.

roberta-deploy's bundles are made with its own CLI (`export`, `build`); infinity-emb runs from its own virtual
environment outside the repository, with its models made by its own tool (`optimum-cli`), as a user of each
would do. Every server is a child process started in its own session, so stopping it also stops whatever it
started, and nothing is left running after a measurement.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from artifacts import ArtifactPaths, log
from serve_bench import Server, cli, environment

INFINITY_REQUIREMENTS = ("infinity-emb[server,torch,optimum]==0.0.78",
                         "torch==2.13.0")  # the CPU wheel on this disk; unpinned, pip pulls a multi-GB CUDA build
START_TIMEOUT_S = 600  # infinity took 25-45 s to become healthy on a busy 2-core machine; generous on purpose
STOP_TIMEOUT_S = 60


@dataclass(frozen=True)
class ServerSpec:
    """One served configuration: who serves it, on which engine, at which precision."""

    name: str
    project: str  # "roberta-deploy" or "infinity"
    how: str  # one line for the report


SERVERS = {spec.name: spec for spec in (
    ServerSpec("rd-openvino-int8", "roberta-deploy", "serve, OpenVINO int8 (NNCF, calibrated on train.tsv)"),
    ServerSpec("rd-onnxruntime-int8", "roberta-deploy", "serve, ONNX Runtime dynamic int8 (build --quantization dynamic)"),
    ServerSpec("rd-openvino-fp32", "roberta-deploy", "serve, OpenVINO fp32"),
    ServerSpec("infinity-optimum-int8", "infinity", "infinity_emb v2 --engine optimum, optimum-cli quantize (dynamic int8)"),
    ServerSpec("infinity-optimum-fp32", "infinity", "infinity_emb v2 --engine optimum, optimum-cli export onnx"),
    ServerSpec("infinity-torch-fp32", "infinity", "infinity_emb v2 --engine torch, fp32"),
)}
REFERENCE_SERVER = "rd-openvino-fp32"  # its offline `infer` labels are what every server's answers are checked against
BUNDLE_BUILDS = {  # roberta-deploy server -> `build` flags past --export/--output
    "rd-openvino-int8": ("--backend", "openvino", "--precision", "int8", "--calibration-data"),  # + the data file
    "rd-onnxruntime-int8": ("--backend", "onnxruntime", "--precision", "int8", "--quantization", "dynamic"),
    "rd-openvino-fp32": ("--backend", "openvino", "--precision", "fp32"),
}


@dataclass(frozen=True)
class Prepared:
    """What preparation made: the roberta-deploy bundle per (server, max length), the infinity venv and models,
    and the servers left out with the reason."""

    checkpoint: Path
    bundles: dict  # (server name, max length) -> bundle folder
    infinity_python: Path | None
    infinity_models: dict  # server name -> folder served (--model-id)
    quantize_flag: str | None
    skipped: dict  # server name -> why it is not measured


def cache_folder(workdir: Path) -> Path:
    return ArtifactPaths(workdir).folder / "peers"


def run_logged(command: list, what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a preparation step; raise with its last lines of output when it fails."""
    log(f"{what}: {' '.join(map(str, command))}")
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done


def prepare_bundles(checkpoint: Path, folder: Path, max_lengths, servers, data: Path, calibration: Path
                    ) -> tuple[dict, dict]:
    """roberta-deploy exports and bundles through its CLI (docs/serving.md, "Max length 512"). A bundle whose build
    flag this checkout does not know (--quantization dynamic, on another branch) is skipped, with the reason."""
    bundles, skipped = {}, {}
    for max_length in max_lengths:
        export = folder / f"export-{max_length}"
        if not export.is_dir():
            run_logged(cli("export", "--model", str(checkpoint), "--output", str(export), "--max-seq-length",
                           str(max_length), "--check-data", str(data)), f"export at {max_length}", env=environment())
        for name in servers:
            if name not in BUNDLE_BUILDS:
                continue
            bundle = folder / f"bundle-{max_length}-{name.removeprefix('rd-')}"
            flags = BUNDLE_BUILDS[name] + ((str(calibration),) if BUNDLE_BUILDS[name][-1] == "--calibration-data"
                                           else ())
            if not bundle.is_dir():
                try:
                    run_logged(cli("build", "--export", str(export), "--output", str(bundle), *flags),
                               f"{name} bundle at {max_length}", env=environment())
                except RuntimeError as error:
                    if "--quantization" not in flags:
                        raise
                    unknown = "No such option" in str(error)
                    skipped[name] = ("this checkout's `build` has no --quantization flag yet" if unknown
                                     else f"build failed: {str(error).splitlines()[-1]}")
                    log(f"{name}: skipped, {skipped[name]}")
                    continue
            bundles[name, max_length] = bundle
    return bundles, skipped


def prepare_infinity_venv(venv: Path) -> Path:
    """infinity-emb in its own venv (its transformers/optimum pins differ from roberta-deploy's). A marker file
    written after a successful install and import says the venv is complete."""
    python, marker = venv / "bin" / "python", venv / "peers-ready.txt"
    if marker.is_file() and marker.read_text().splitlines()[0] == " ".join(INFINITY_REQUIREMENTS):
        return python
    run_logged([sys.executable, "-m", "venv", "--clear", str(venv)], "infinity venv")
    run_logged([python, "-m", "pip", "install", *INFINITY_REQUIREMENTS], "infinity-emb install (minutes)")
    run_logged([python, "-c", "import infinity_emb, optimum.onnxruntime, torch"], "infinity import check")
    freeze = run_logged([python, "-m", "pip", "freeze"], "infinity venv versions").stdout
    marker.write_text(" ".join(INFINITY_REQUIREMENTS) + "\n" + freeze)
    return python


def quantize_flag() -> str:
    """optimum-cli's quantization target for this CPU, from what /proc/cpuinfo says it offers."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if {"avx512f", "avx512_vnni"} <= flags:
        return "--avx512_vnni"
    if "avx512f" in flags:
        return "--avx512"
    if "avx2" in flags:
        return "--avx2"
    raise RuntimeError("this CPU offers neither AVX-512 nor AVX2; optimum-cli has no x86 quantization for it")


def prepare_infinity_models(python: Path, checkpoint: Path, folder: Path, servers) -> tuple[dict, str | None]:
    """ONNX models for infinity's optimum engine: `optimum-cli export onnx`, and `onnxruntime quantize` of it.
    Each is a folder of its own: infinity serves the quantized file whenever one is present on a CPU.

    The fp32 model is served after `optimum-cli onnxruntime optimize -O2` (attention, LayerNorm and GELU fusions):
    infinity optimizes the graph itself at start, but with the optimum that its extra resolves to (2.x) that step
    fails ("OptimizationConfig ... unexpected keyword argument 'optimize_with_onnxruntime_only'") and it would serve
    the unfused graph; optimum 1.x, where the step works, cannot import with torch 2.13. The int8 model is
    quantized from the plain export, as infinity's docs do it."""
    optimum_cli = python.parent / "optimum-cli"
    exported, fp32, int8 = folder / "infinity-onnx-export", folder / "infinity-onnx-fp32-O2", folder / "infinity-onnx-int8"
    models, flag = {}, None
    if {"infinity-optimum-fp32", "infinity-optimum-int8"} & set(servers) and not exported.is_dir():
        _made_by([optimum_cli, "export", "onnx", "--model", checkpoint, "--task", "text-classification"], exported,
                 "optimum-cli export onnx")
    if "infinity-optimum-fp32" in servers and not fp32.is_dir():
        _made_by([optimum_cli, "onnxruntime", "optimize", "--onnx_model", exported, "-O2", "-o"], fp32,
                 "optimum-cli onnxruntime optimize -O2", exported)
    if "infinity-optimum-int8" in servers:
        flag = quantize_flag()
        if not int8.is_dir():
            _made_by([optimum_cli, "onnxruntime", "quantize", "--onnx_model", exported, flag, "-o"], int8,
                     f"optimum-cli onnxruntime quantize {flag}", exported)
        models["infinity-optimum-int8"] = int8
    if "infinity-optimum-fp32" in servers:
        models["infinity-optimum-fp32"] = fp32
    if "infinity-torch-fp32" in servers:
        models["infinity-torch-fp32"] = checkpoint
    return models, flag


def _made_by(command: list, folder: Path, what: str, source: Path | None = None) -> None:
    """Run an optimum-cli step whose last argument is the output folder, under a temporary name; the source's config
    and tokenizer files travel with the model (infinity loads them from the same folder)."""
    temporary = folder.with_name(folder.name + ".partial")
    shutil.rmtree(temporary, ignore_errors=True)
    run_logged([*command, temporary], what)
    for path in source.iterdir() if source else ():
        if path.suffix != ".onnx" and not (temporary / path.name).exists():
            shutil.copyfile(path, temporary / path.name)
    temporary.rename(folder)


# -- running servers ----------------------------------------------------------------------------------------

class RunningServer:
    """A started server: where to send requests, how to read an answer's label, and how to stop it."""

    port: int
    path: str
    process: psutil.Process

    def body(self, text: str) -> bytes:
        raise NotImplementedError

    def label(self, answer: dict | list) -> str:
        raise NotImplementedError

    def stop(self) -> int:
        raise NotImplementedError

    def notes(self) -> list[str]:
        """What the server said at start that decides its speed (which model file, graph optimization)."""
        return []

    def token_counts(self) -> tuple[float, float] | None:
        """(padded, real) tokens the engine has computed so far, where the server counts them; else None."""
        return None


class RobertaDeployServer(RunningServer):
    """`roberta-deploy serve --bundle B --port 0` with its defaults (serve_bench.Server starts and stops it)."""

    path = "/predict"

    def __init__(self, bundle: Path):
        self.server = Server(bundle)
        self.port, self.process = self.server.port, self.server.psutil

    def body(self, text: str) -> bytes:
        return json_bytes({"inputs": text})  # one text, as `roberta-deploy loadtest` sends it

    def label(self, answer) -> str:
        ranked = answer if isinstance(answer[0], dict) else answer[0]  # one text: [{label, score}, ...]
        return max(ranked, key=lambda entry: entry["score"])["label"]

    def stop(self) -> int:
        return self.server.stop()

    def token_counts(self) -> tuple[float, float] | None:
        return (self.server.metric("roberta_deploy_batch_tokens_sum"),
                self.server.metric("roberta_deploy_batch_real_tokens_total"))


class InfinityServer(RunningServer):
    """`infinity_emb v2` with its defaults (batch size 32, warm-up at start), on CPU, offline. Each server gets
    its own Hugging Face cache: infinity caches its optimized ONNX graph under the --model-id, which is "."
    for every ONNX folder, so two servers sharing one cache would load each other's model."""

    path = "/classify"

    def __init__(self, name: str, python: Path, model: Path, hf_home: Path, log_file: Path):
        self.port = free_port()
        engine = "torch" if name == "infinity-torch-fp32" else "optimum"
        model_id = str(model) if engine == "torch" else "."  # the optimum engine is started inside its folder
        # --no-model-warmup: infinity's warm-up sends "warm " x 512 (1,026 tokens with this vocab) untruncated, which
        # fails a 512-position BERT at start; the bench's own warm-up load precedes every measurement instead.
        command = [str(python.parent / "infinity_emb"), "v2", "--model-id", model_id, "--engine", engine,
                   "--device", "cpu", "--no-model-warmup", "--port", str(self.port), "--host", "127.0.0.1"]
        env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
        env.pop("PYTHONPATH", None)
        self.log_file = log_file
        with open(log_file, "w") as output:
            self.popen = subprocess.Popen(command, cwd=model, env=env, stdout=output, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        self.process = psutil.Process(self.popen.pid)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"{name} did not start (log {log_file}):\n{tail}")
            time.sleep(0.5)

    def _healthy(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as connection:
                connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return connection.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    def notes(self) -> list[str]:
        wanted = ("ptimiz", "onnx", "quantiz", "WARNING", "bettertransformer")
        return [line.strip() for line in self.log_file.read_text(errors="replace").splitlines()
                if any(word in line for word in wanted)][:20]

    def body(self, text: str) -> bytes:
        return json_bytes({"input": [text]})

    def label(self, answer) -> str:
        return max(answer["data"][0], key=lambda entry: entry["score"])["label"]

    def stop(self) -> int:
        """SIGTERM to its whole session (uvicorn shuts down gracefully), SIGKILL past STOP_TIMEOUT_S."""
        for sent in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.popen.pid, sent)
            except ProcessLookupError:
                break
            try:
                return self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                continue
        return self.popen.wait()


def start_server(name: str, prepared: Prepared, max_length: int, workdir: Path, logs: Path) -> RunningServer:
    if SERVERS[name].project == "roberta-deploy":
        return RobertaDeployServer(prepared.bundles[name, max_length])
    return InfinityServer(name, prepared.infinity_python, prepared.infinity_models[name],
                          cache_folder(workdir) / "infinity-hf-home" / name, logs / f"{name}-{max_length}.log")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def json_bytes(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")
