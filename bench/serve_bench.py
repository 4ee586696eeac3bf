"""The server against offline `infer` on the same bundle, measured in one run on this machine.

BERT-base int8 (the bundle bench/artifacts.py builds): ChnSentiCorp dev texts, one text per request,
64 closed-loop clients, against `roberta-deploy infer` over the same texts; p99 against the latency of one
full batch (`perf` at the batcher's batch shape). The demo bundle (2-layer BERT, int8): requests/s per core
and the server's own CPU per request. Optional soak: clients for N seconds with a share of them hanging up
at random; every answer is checked against the offline prediction for its text, and the server's resident
memory is sampled.

The load generator runs on the same cores as the server; its CPU time is reported too. Other processes'
share of the CPU during each measurement is recorded (the machine is shared).

    python bench/serve_bench.py --prepare-only                     # build the bundles (cached in --workdir)
    python bench/serve_bench.py --duration 60 --markdown out.md    # BERT-base and demo, side by side
    python bench/serve_bench.py --skip-throughput --soak-seconds 600
    python bench/serve_bench.py --bundle "bert-base 512 int8=/tmp/b512/bert-base-512-int8" --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, when run as a script

from artifacts import (CENTRING_SAMPLES, LABELS, ArtifactPaths, log, prepare_bundle, prepare_checkpoint,  # noqa: E402
                       prepare_export)
from measure import _system_busy_seconds  # noqa: E402
from report import machine_description, write_report  # noqa: E402

import roberta_deploy  # noqa: E402
from roberta_deploy.data import read_dataset  # noqa: E402
from roberta_deploy.defaults import DEMO_MODEL_DIR  # noqa: E402
from roberta_deploy.serve.loadtest import HttpConnection, LoadtestOptions, run_loadtest  # noqa: E402
from roberta_deploy.serve.metrics import metric_value  # noqa: E402

DEFAULT_DATA = Path("/work/shared/data/chnsenticorp/dev.tsv")
DEFAULT_CALIBRATION_DATA = Path("/work/shared/data/chnsenticorp/train.tsv")
DEFAULT_WORKDIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "roberta-deploy-bench"
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")
START_TIMEOUT_S = 300
MATCH_TOLERANCE = 1e-3  # probability difference under which a served answer matches the offline one


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Texts sent (one per request).")
    parser.add_argument("--calibration-data", type=Path, default=DEFAULT_CALIBRATION_DATA)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="Cache of built models.")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="Timed seconds per server measurement.")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--soak-seconds", type=float, default=0.0)
    parser.add_argument("--soak-clients", type=int, default=32)
    parser.add_argument("--disconnect-share", type=float, default=0.1)
    parser.add_argument("--soak-bundle", default="bert-base int8",
                        help="Which bundle the soak runs: bert-base int8, demo int8, or a --bundle NAME.")
    parser.add_argument("--bundle", action="append", default=[], metavar="NAME=PATH",
                        help="Measure this bundle instead of the built ones (repeatable), e.g. one exported at "
                             "--max-seq-length 512.")
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true", help="Only the soak.")
    parser.add_argument("--output", type=Path, default=None, help="JSON report (default: <workdir>/serve.json).")
    parser.add_argument("--markdown", type=Path, default=None)
    return parser.parse_args(argv)


def environment() -> dict:
    root = str(Path(roberta_deploy.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "roberta_deploy", *args]


# -- bundles ------------------------------------------------------------------------------------------------

def prepare(arguments) -> dict[str, Path]:
    from roberta_deploy.build.bundle import BuildOptions, build_engine
    from roberta_deploy.build.export import ExportOptions, export_model

    paths = ArtifactPaths(arguments.workdir.expanduser().resolve())
    prepare_checkpoint(paths, read_dataset(arguments.calibration_data).texts[:CENTRING_SAMPLES])
    prepare_export(paths, check_data=arguments.data)
    prepare_bundle(paths, "int8", arguments.calibration_data)
    demo_export, demo_bundle = paths.folder / "demo-export", paths.folder / "demo-bundle-openvino-int8"
    if not demo_export.is_dir():
        log(f"demo export: building into {demo_export}")
        export_model(ExportOptions(model=str(DEMO_MODEL_DIR), output=demo_export, check_data=arguments.data))
    if not demo_bundle.is_dir():
        log(f"demo int8 bundle: building into {demo_bundle}")
        build_engine(BuildOptions(export_dir=demo_export, output=demo_bundle, backend="openvino", precision="int8",
                                  calibration_data=arguments.calibration_data))
    return {"bert-base int8": paths.bundle("int8"), "demo int8": demo_bundle}


# -- measurements -------------------------------------------------------------------------------------------

class CpuShares:
    """CPU seconds of the machine, of this process and of its children between enter and exit."""

    def __init__(self, server: psutil.Process | None = None):
        self.server = server

    def __enter__(self):
        self._busy, self._started = _system_busy_seconds(), time.perf_counter()
        self._own, self._children = _own(), _children()
        self._server = _process_cpu(self.server)
        return self

    def __exit__(self, *exception):
        self.wall_s = time.perf_counter() - self._started
        self.busy_s = _system_busy_seconds() - self._busy
        self.own_s, self.children_s = _own() - self._own, _children() - self._children
        self.server_s = _process_cpu(self.server) - self._server
        ours = self.own_s + self.children_s + self.server_s
        self.others_share = max(0.0, self.busy_s - ours) / (self.wall_s * psutil.cpu_count())


def _own() -> float:
    times = os.times()
    return times.user + times.system


def _children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished children only (offline runs)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(process: psutil.Process | None) -> float:
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


def _event_loop_cpu(process: psutil.Process) -> float:
    """CPU seconds of the server's main thread: the event loop (HTTP, JSON, routing, tokenization in
    Batcher.submit, metrics), i.e. what serving adds per request on top of the batcher's workers."""
    for thread in process.threads():
        if thread.id == process.pid:
            return thread.user_time + thread.system_time
    raise RuntimeError("the server's main thread is not listed")


def offline_infer(bundle: Path, data: Path, scratch: Path) -> dict:
    output = scratch / f"infer-{bundle.name}"
    with CpuShares() as cpu:
        subprocess.run(cli("infer", "--bundle", str(bundle), "--data", str(data), "--output", str(output)),
                       check=True, env=environment(), capture_output=True, text=True)
    metrics = json.loads((output / "metrics.json").read_text())
    rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    return {"texts": metrics["examples"], "seconds": metrics["elapsed_seconds"],
            "texts_per_second": metrics["texts_per_second"], "others_cpu_share": cpu.others_share,
            "probabilities": {row["text"]: row["probabilities"] for row in rows}}


def full_batch_latency(bundle: Path, rows: int, scratch: Path) -> dict:
    """perf at the batcher's full batch (rows x 128), both contexts busy, as while serving."""
    report = scratch / f"perf-{bundle.name}.json"
    subprocess.run(cli("perf", "--bundle", str(bundle), "--hint", "throughput", "--batch-size", str(rows),
                       "--seq-len", "128", "--duration", "10", "--warmup", "2", "--json", str(report)),
                   check=True, env=environment(), capture_output=True, text=True)
    result = json.loads(report.read_text())
    return {"rows": rows, "seq_len": 128, "latency_ms": result["latency_ms"], "threads": result["threads"]}


def start_cli_server(arguments: list[str], line: re.Pattern, env: dict | None = None
                     ) -> tuple[subprocess.Popen, list[str], str]:
    """Start a roberta-deploy server command and wait until its stderr shows `line` (whose first group is the
    URL). Returns the process, the stderr lines (still being appended by a reader thread) and the URL; a server
    that exits or stays silent past START_TIMEOUT_S is killed and raised with what it printed."""
    process = subprocess.Popen(cli(*arguments), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**environment(), **(env or {})})
    lines: list[str] = []
    found = threading.Event()

    def read():
        for printed in process.stderr:
            lines.append(printed.rstrip())
            if line.search(printed):
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    # The reader also wakes us when stderr closes: a server that exited may not be reaped yet, so the line
    # itself, not the exit status, says whether it started.
    started = line.search("\n".join(lines)) if found.wait(START_TIMEOUT_S) else None
    if started is None or process.poll() is not None:
        process.kill()
        raise RuntimeError(f"{arguments[0]} did not start:\n" + "\n".join(lines))
    return process, lines, started.group(1)


class Server:
    def __init__(self, bundle: Path, *args: str):
        self.process, self.lines, self.url = start_cli_server(["serve", "--bundle", str(bundle), "--port", "0",
                                                               *args], LISTENING)
        self.port = int(self.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.get("/health")[0] != 200:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("server never became ready:\n" + "\n".join(self.lines))
            time.sleep(0.2)
        self.psutil = psutil.Process(self.process.pid)

    def get(self, path: str) -> tuple[int, str]:
        async def fetch():
            connection = HttpConnection("127.0.0.1", self.port)
            try:
                status, _, body = await connection.request("GET", path)
                return status, body.decode()
            finally:
                connection.close()

        try:
            return asyncio.run(fetch())
        except OSError:
            return 0, ""

    def metric(self, name: str) -> float:
        return metric_value(self.get("/metrics")[1], name)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(120)


def measure_server(bundle: Path, texts: list[str], clients: int, duration: float, warmup: float) -> dict:
    server = Server(bundle)
    try:
        rss_ready = server.psutil.memory_info().rss
        before = {name: server.metric(name) for name in ("roberta_deploy_texts_total",
                                                         "roberta_deploy_batch_inference_duration_seconds_sum",
                                                         "roberta_deploy_batch_size_count")}
        loop_before = _event_loop_cpu(server.psutil)
        with CpuShares(server.psutil) as cpu:
            level = run_loadtest(LoadtestOptions(url=server.url, texts=tuple(texts), concurrency=(clients,),
                                                 duration=duration, warmup=warmup))[0]
        loop_s = _event_loop_cpu(server.psutil) - loop_before
        after = {name: server.metric(name) for name in before}
        rss_end = server.psutil.memory_info().rss
    finally:
        exit_code = server.stop()
    answered = after["roberta_deploy_texts_total"] - before["roberta_deploy_texts_total"]
    batches = after["roberta_deploy_batch_size_count"] - before["roberta_deploy_batch_size_count"]
    engine_s = after["roberta_deploy_batch_inference_duration_seconds_sum"] - \
        before["roberta_deploy_batch_inference_duration_seconds_sum"]
    return {"clients": clients, "duration_s": duration, "requests_per_second": level.requests_per_second,
            "texts_per_second": level.texts_per_second, "latency_ms": level.latency_ms, "errors": level.errors,
            "errors_by_status": level.errors_by_status, "answered_in_window": level.requests,
            "texts_answered_incl_warmup": answered, "batches": batches,
            "mean_batch_rows": answered / batches if batches else None,
            "server_cpu_ms_per_request": 1000 * cpu.server_s / answered,
            "event_loop_cpu_ms_per_request": 1000 * loop_s / answered,
            "engine_wall_ms_per_request": 1000 * engine_s / answered,
            "loadgen_cpu_ms_per_request": 1000 * cpu.own_s / answered,
            "server_cpu_share": cpu.server_s / (cpu.wall_s * psutil.cpu_count()),
            "others_cpu_share": cpu.others_share, "rss_mb_ready": rss_ready / 1e6, "rss_mb_end": rss_end / 1e6,
            "exit_code": exit_code}


# -- soak ---------------------------------------------------------------------------------------------------

def soak(bundle: Path, texts: list[str], offline: dict, arguments) -> dict:
    server = Server(bundle)
    samples: list[tuple[float, float]] = []
    counts = {"requests": 0, "texts": 0, "disconnected": 0, "label_flips": 0, "beyond_tolerance": 0,
              "wrong_length": 0, "errors": 0}
    worst = [0.0]
    error_kinds: dict[str, int] = {}  # what each error was: a timeout, a refused connection, a status
    started = time.monotonic()
    stop_sampling = threading.Event()

    def sample_rss():
        while not stop_sampling.wait(5.0):
            samples.append((time.monotonic() - started, server.psutil.memory_info().rss / 1e6))

    async def client(seed: int):
        rng = random.Random(seed)
        connection = HttpConnection("127.0.0.1", server.port)
        deadline = started + arguments.soak_seconds
        while time.monotonic() < deadline:
            chosen = [texts[rng.randrange(len(texts))] for _ in range(rng.randint(1, 4))]
            body = json.dumps({"inputs": chosen}, ensure_ascii=False).encode()
            if rng.random() < arguments.disconnect_share:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
                await asyncio.sleep(rng.uniform(0, 0.05))
                writer.close()
                counts["disconnected"] += 1
                continue
            try:
                status, _, answer = await asyncio.wait_for(
                    connection.request("POST", "/predict", body, {"Content-Type": "application/json"}), 60)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as error:
                connection.close()
                counts["errors"] += 1
                error_kinds[type(error).__name__] = error_kinds.get(type(error).__name__, 0) + 1
                continue
            counts["requests"] += 1
            if status != 200:
                counts["errors"] += 1
                error_kinds[f"HTTP {status}"] = error_kinds.get(f"HTTP {status}", 0) + 1
                continue
            answer = json.loads(answer)
            if len(answer) != len(chosen):
                counts["wrong_length"] += 1
                continue
            for text, labels in zip(chosen, answer):
                counts["texts"] += 1
                expected = offline["probabilities"][text]
                served = [next(entry["score"] for entry in labels if entry["label"] == name) for name in
                          offline["label_names"]]
                difference = float(np.max(np.abs(np.array(served) - np.array(expected))))
                worst[0] = max(worst[0], difference)
                # Counted apart: a flipped label is a wrong answer; a larger score difference with the same
                # label is the engine's rounding under another padding.
                if int(np.argmax(served)) != int(np.argmax(expected)):
                    counts["label_flips"] += 1
                if difference > MATCH_TOLERANCE:
                    counts["beyond_tolerance"] += 1
        connection.close()

    async def main():
        await asyncio.gather(*(client(seed) for seed in range(arguments.soak_clients)))

    sampler = threading.Thread(target=sample_rss, daemon=True)
    try:
        rss_ready = server.psutil.memory_info().rss / 1e6
        sampler.start()
        with CpuShares(server.psutil) as cpu:
            asyncio.run(main())
        stop_sampling.set()
        sampler.join()
        dropped = server.metric("roberta_deploy_batcher_dropped_total")
        dropped_http = metric_value(server.get("/metrics")[1], "roberta_deploy_requests_total",
                                    lambda labels: labels.get("outcome") == "dropped")
    finally:
        stop_sampling.set()
        exit_code = server.stop()
    after_first_minute = next((rss for at, rss in samples if at >= min(60.0, arguments.soak_seconds / 10)), None)
    end = samples[-1][1] if samples else None
    return {"seconds": arguments.soak_seconds, "clients": arguments.soak_clients,
            "disconnect_share": arguments.disconnect_share, **counts, "max_probability_difference": worst[0],
            "dropped_before_compute": dropped, "dropped_counted_by_server": dropped_http,
            "rss_mb_ready": rss_ready, "rss_mb_baseline": after_first_minute, "rss_mb_end": end,
            "rss_growth_after_baseline": (end / after_first_minute - 1) if end and after_first_minute else None,
            "error_kinds": error_kinds, "rss_samples": samples, "others_cpu_share": cpu.others_share,
            "exit_code": exit_code}


# -- report -------------------------------------------------------------------------------------------------

def render_markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [f"Measured {machine['date']} on {machine['cpu_model']} ({machine['cores_available']} cores), "
             f"roberta-deploy {machine.get('roberta_deploy_revision')}; command: `{report['command']}`.",
             f"Load average before: {', '.join(f'{value:.2f}' for value in report['load_average_before'])}; "
             "other processes' CPU share during each measurement is in its row.", ""]
    if "throughput" in report:
        lines += ["| bundle | how | texts/s | vs offline | p50 ms | p90 ms | p99 ms | p99 / full batch | errors | "
                  "server CPU ms/req | of which event loop (HTTP, JSON, tokenizing) | load generator CPU ms/req | "
                  "requests/s per core | requests per server CPU-second | mean batch rows | others' CPU |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, result in report["throughput"].items():
            offline, served, batch = result["offline"], result["server"], result["full_batch"]
            lines.append(f"| {name} | offline `infer` ({offline['texts']} texts) | {offline['texts_per_second']:.1f} "
                         f"| 1.00 | | | | | | | | | | | | {offline['others_cpu_share']:.0%} |")
            latency = served["latency_ms"]
            lines.append(
                f"| {name} | server, {served['clients']} clients, 1 text/request, {served['duration_s']:g} s "
                f"| {served['texts_per_second']:.1f} | {served['texts_per_second'] / offline['texts_per_second']:.2f} "
                f"| {latency['p50']:.1f} | {latency['p90']:.1f} | {latency['p99']:.1f} "
                f"| {latency['p99'] / batch['latency_ms']['median']:.1f} (batch {batch['rows']}x128: "
                f"{batch['latency_ms']['median']:.1f} ms) | {served['errors']} "
                f"| {served['server_cpu_ms_per_request']:.2f} | {served['event_loop_cpu_ms_per_request']:.2f} "
                f"| {served['loadgen_cpu_ms_per_request']:.2f} "
                f"| {served['requests_per_second'] / machine['cores_available']:.1f} "
                f"| {1000 / served['server_cpu_ms_per_request']:.0f} | {served['mean_batch_rows']:.1f} "
                f"| {served['others_cpu_share']:.0%} |")
    if "soak" in report:
        soak_result = report["soak"]
        lines += ["", f"Soak ({soak_result['seconds']:g} s, {soak_result['clients']} clients, "
                      f"{soak_result['disconnect_share']:.0%} of requests hung up at random, 1-4 texts per request, "
                      f"{report['soak_bundle']}): {soak_result['requests']} answered requests, "
                      f"{soak_result['texts']} texts checked against offline `infer`: "
                      f"{soak_result['label_flips']} label flips, {soak_result['beyond_tolerance']} scores more than "
                      f"{MATCH_TOLERANCE:g} off (largest probability difference "
                      f"{soak_result['max_probability_difference']:.2g}), {soak_result['wrong_length']} answers "
                      f"of the wrong length, {soak_result['errors']} errors; {soak_result['disconnected']} hang-ups, "
                      f"{soak_result['dropped_before_compute']:.0f} dropped before compute. Resident memory: "
                      f"{soak_result['rss_mb_ready']:.0f} MB when ready, {soak_result['rss_mb_baseline'] or 0:.0f} MB "
                      f"after the first minute of load, {soak_result['rss_mb_end'] or 0:.0f} MB at the end "
                      f"({(soak_result['rss_growth_after_baseline'] or 0):+.1%}); other processes' CPU share "
                      f"{soak_result['others_cpu_share']:.0%}; exit code after SIGTERM {soak_result['exit_code']}."]
    return "\n".join(lines) + "\n"


def given_bundle(text: str) -> tuple[str, Path]:
    name, separator, path = text.partition("=")
    if not separator or not Path(path).is_dir():
        sys.exit(f"--bundle {text!r}: pass NAME=PATH with PATH a bundle folder")
    return name, Path(path).resolve()


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    bundles = dict(given_bundle(text) for text in arguments.bundle) or prepare(arguments)
    if arguments.soak_seconds > 0 and arguments.soak_bundle not in bundles:  # before any measurement, not after
        sys.exit(f"--soak-bundle {arguments.soak_bundle!r} is not one of {', '.join(bundles)}: pass one of them")
    if arguments.prepare_only:
        return 0
    texts = read_dataset(arguments.data).texts
    report = {"command": " ".join(["python"] + sys.argv), "machine": machine_description(),
              "load_average_before": os.getloadavg()}
    from roberta_deploy.runtime.engine import THROUGHPUT, available_cores, default_contexts

    contexts = default_contexts(available_cores(), THROUGHPUT)
    full_batch_rows = max(1, 32 // contexts)  # the batcher's default budget: one 32x128 batch across the contexts
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as scratch:
        offline_bert = None
        if not arguments.skip_throughput:
            report["throughput"] = {}
            for name, bundle in bundles.items():
                log(f"{name}: offline infer")
                offline = offline_infer(bundle, arguments.data, Path(scratch))
                log(f"{name}: {offline['texts_per_second']:.1f} texts/s offline; full-batch latency")
                batch = full_batch_latency(bundle, full_batch_rows, Path(scratch))
                log(f"{name}: server, {arguments.clients} clients")
                served = measure_server(bundle, texts, arguments.clients, arguments.duration, arguments.warmup)
                log(f"{name}: {served['texts_per_second']:.1f} texts/s served, p99 {served['latency_ms']['p99']:.1f} ms")
                if name.startswith("bert"):
                    offline_bert = offline
                report["throughput"][name] = {"offline": {k: v for k, v in offline.items() if k != "probabilities"},
                                              "full_batch": batch, "server": served}
        if arguments.soak_seconds > 0:
            bundle_name = arguments.soak_bundle
            offline = offline_bert if offline_bert and bundle_name.startswith("bert") else \
                offline_infer(bundles[bundle_name], arguments.data, Path(scratch))
            offline["label_names"] = list(LABELS)  # both bundles: negative, positive
            log(f"soak: {arguments.soak_seconds:g} s on {bundle_name}")
            report["soak"], report["soak_bundle"] = soak(bundles[bundle_name], texts, offline, arguments), bundle_name
    report["load_average_after"] = os.getloadavg()
    output = arguments.output or arguments.workdir.expanduser() / "serve.json"
    print(write_report(report, output, arguments.markdown, render_markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
