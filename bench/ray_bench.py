"""What Ray Serve's routing costs: `serve` with two contexts against `serve --ray` with two replicas of one
thread each, same bundle, same closed-loop load, measured in turn in one run on this machine.

Each uses every core of this machine: `serve` as one process whose batcher runs two 1-thread contexts, Ray as
two replica processes whose batchers run one 1-thread context each, on a local Ray instance, behind Ray's
default HTTP proxy (a Python actor that forwards each request to a replica) or behind Ray's HAProxy ingress
(RAY_SERVE_ENABLE_HA_PROXY=1: HAProxy forwards HTTP straight to each replica's own HTTP server); and one
replica of two threads. The load generator runs on the same cores. Each round measures every configuration
once, so that a change in the machine's load hits all of them; the load average and other processes' CPU
share are recorded with every measurement (the machine is shared).

    python bench/ray_bench.py --duration 30 --rounds 2 --markdown out.md            # BERT-base int8
    python bench/ray_bench.py --bundle-name "demo int8" --duration 20               # the 2-layer demo model
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, when run as a script

from artifacts import log  # noqa: E402
from report import machine_description, write_report  # noqa: E402
from serve_bench import (DEFAULT_CALIBRATION_DATA, DEFAULT_DATA, DEFAULT_WORKDIR,  # noqa: E402
                         CpuShares, Server, prepare, start_cli_server)

from roberta_deploy.data import read_dataset  # noqa: E402
from roberta_deploy.serve.loadtest import LoadtestOptions, run_loadtest  # noqa: E402
from roberta_deploy.serve.metrics import metric_value  # noqa: E402

READY = re.compile(r" ready: .* at (http://127\.0\.0\.1:\d+)")
SCRAPES = 30  # /metrics scrapes per snapshot: Ray routes each to one replica


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Texts sent (one per request).")
    parser.add_argument("--calibration-data", type=Path, default=DEFAULT_CALIBRATION_DATA)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="Cache of built models.")
    parser.add_argument("--bundle-name", choices=("bert-base int8", "demo int8"), default="bert-base int8")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=30.0, help="Timed seconds per measurement.")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2, help="Rounds of one measurement per configuration.")
    parser.add_argument("--configurations", default="serve,ray,ray-haproxy,ray-wide",
                        help=f"Comma-separated, measured in this order each round: {', '.join(CONFIGURATIONS)}.")
    parser.add_argument("--output", type=Path, default=None, help="JSON report (default: <workdir>/ray.json).")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="Print the markdown of an earlier JSON report.")
    return parser.parse_args(argv)


class ProcessTree:
    """The server's process and every process under it (Ray's raylet, proxy and replicas are children of the
    driver that started the local instance), as one psutil-like process for serve_bench.CpuShares."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)

    def cpu_times(self):
        total_user = total_system = 0.0
        for process in [self.root, *self.root.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total_user += times.user + times.children_user
            total_system += times.system + times.children_system
        return type("CpuTimes", (), {"user": total_user, "system": total_system})()


class RayServer:
    """`serve --ray` on a local Ray instance it starts itself (dashboard and usage reporting off)."""

    def __init__(self, bundle: Path, *args: str, env: dict | None = None):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.process, self.lines, self.url = start_cli_server(
            ["serve", "--ray", "--bundle", str(bundle), "--port", str(port), *args], READY, env=env)
        self.port = port

    def replica_texts(self) -> dict[str, float]:
        """Texts classified so far by each replica seen in SCRAPES scrapes of /metrics."""
        import http.client

        from prometheus_client.parser import text_string_to_metric_families

        seen = {}
        for _ in range(SCRAPES):
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                connection.request("GET", "/metrics")
                text = connection.getresponse().read().decode()
            finally:
                connection.close()
            replica = next((sample.labels["replica"] for family in text_string_to_metric_families(text)
                            for sample in family.samples if sample.name == "roberta_deploy_replica_info"), None)
            if replica is not None:
                seen[replica] = metric_value(text, "roberta_deploy_texts_total")
        return seen

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(180)


# What each measurement runs. Ray's HAProxy ingress is Ray's own switch, read by every Ray process of a local
# instance from the environment of the process that starts it.
HAPROXY = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
CONFIGURATIONS = {
    "serve": ("serve, 1 process, 2 contexts x 1 thread", ()),
    "ray": ("serve --ray, 2 replicas x 1 thread, Ray's proxy", ("--replicas", "2", "--replica-cpus", "1")),
    "ray-haproxy": ("serve --ray, 2 replicas x 1 thread, HAProxy ingress", ("--replicas", "2", "--replica-cpus", "1")),
    "ray-wide": ("serve --ray, 1 replica x 2 threads (2 contexts), HAProxy ingress",
                 ("--replicas", "1", "--replica-cpus", "2")),
}


def measure(kind: str, bundle: Path, texts: list[str], arguments) -> dict:
    load_before = os.getloadavg()
    if kind == "serve":
        server = Server(bundle, "--contexts", "2")
    else:
        server = RayServer(bundle, *CONFIGURATIONS[kind][1], env=HAPROXY if kind != "ray" else None)
    on_ray = kind != "serve"
    try:
        before = server.replica_texts() if on_ray else None
        with CpuShares(ProcessTree(server.process.pid)) as cpu:
            level = run_loadtest(LoadtestOptions(url=server.url, texts=tuple(texts), concurrency=(arguments.clients,),
                                                 duration=arguments.duration, warmup=arguments.warmup))[0]
        after = server.replica_texts() if on_ray else None
    finally:
        exit_code = server.stop()
    result = {"kind": kind, "texts_per_second": level.texts_per_second,
              "server_cpu_s_per_1000_texts": 1000 * cpu.server_s / max(1, level.texts_per_second * cpu.wall_s), "latency_ms": level.latency_ms,
              "errors": level.errors, "errors_by_status": level.errors_by_status, "requests": level.requests,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "others_cpu_share": cpu.others_share, "exit_code": exit_code}
    if on_ray:
        served = {replica: after[replica] - before.get(replica, 0.0) for replica in after}
        total = sum(served.values()) or 1.0
        # Each replica's share of the texts it answered in the window, applied to the measured rate.
        result["per_replica_texts_per_second"] = {replica: level.texts_per_second * count / total
                                                  for replica, count in served.items()}
        # Replicas no scrape reached are missing here, and their texts counted to the others.
        result["replicas_seen"] = len(served)
    return result


def summarize(measurements) -> dict:
    """Each configuration against the serve run of the same round: throughput, and serve's CPU seconds per text
    over this one's (what the throughput ratio would be if the servers had the cores to themselves)."""
    rounds: dict[int, dict] = {}
    for number, result in measurements:
        rounds.setdefault(number, {})[result["kind"]] = result
    summary = {}
    for results in rounds.values():
        serve = results["serve"]
        for kind, result in results.items():
            if kind == "serve":
                continue
            entry = summary.setdefault(kind, {"round_ratios": [], "round_cpu_ratios": []})
            entry["round_ratios"].append(result["texts_per_second"] / serve["texts_per_second"])
            entry["round_cpu_ratios"].append(serve["server_cpu_s_per_1000_texts"] /
                                             result["server_cpu_s_per_1000_texts"])
    for entry in summary.values():
        entry["ratio"] = sum(entry["round_ratios"]) / len(entry["round_ratios"])
        entry["cpu_ratio"] = sum(entry["round_cpu_ratios"]) / len(entry["round_cpu_ratios"])
    return summary


def render_markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [f"Measured {machine['date']} on {machine['cpu_model']} ({machine['cores_available']} cores), "
             f"bundle {report['bundle']}, {report['clients']} closed-loop clients, one text per request, "
             f"{report['duration_s']:g} s per measurement; command: `{report['command']}`.", "",
             "| round | server | texts/s | p50 ms | p90 ms | p99 ms | errors | per replica texts/s | "
             "server CPU s per 1000 texts (all its processes) | load average (1 min) before -> after | "
             "others' CPU |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for number, result in report["measurements"]:
        latency = result["latency_ms"]
        replicas = ", ".join(f"{value:.1f}" for value in result.get("per_replica_texts_per_second", {}).values())
        how = CONFIGURATIONS[result["kind"]][0]
        lines.append(f"| {number} | {how} | {result['texts_per_second']:.1f} | {latency['p50']:.1f} "
                     f"| {latency['p90']:.1f} | {latency['p99']:.1f} | {result['errors']} | {replicas or '-'} "
                     f"| {result['server_cpu_s_per_1000_texts']:.1f} | {result['load_average_before'][0]:.2f} -> {result['load_average_after'][0]:.2f} "
                     f"| {result['others_cpu_share']:.0%} |")
    lines.append("")
    for kind, summary in summarize(report["measurements"]).items():
        lines.append(f"- {CONFIGURATIONS[kind][0]} against serve: throughput ratio {summary['ratio']:.3f} (per round: "
                     f"{', '.join(f'{ratio:.3f}' for ratio in summary['round_ratios'])}); CPU per text ratio "
                     f"serve / this {summary['cpu_ratio']:.3f} (per round: "
                     f"{', '.join(f'{ratio:.3f}' for ratio in summary['round_cpu_ratios'])}), i.e. "
                     f"a cost of {1 - summary['cpu_ratio']:.1%} of throughput where the server is CPU-bound.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if arguments.render:
        print(render_markdown(json.loads(arguments.render.read_text())))
        return 0
    bundle = prepare(arguments)[arguments.bundle_name]
    texts = read_dataset(arguments.data).texts
    report = {"command": " ".join(["python"] + sys.argv), "machine": machine_description(),
              "bundle": arguments.bundle_name, "clients": arguments.clients, "duration_s": arguments.duration,
              "measurements": []}
    kinds = arguments.configurations.split(",")
    unknown = [kind for kind in kinds if kind not in CONFIGURATIONS]
    if unknown or "serve" not in kinds:
        raise SystemExit(f"--configurations takes serve and any of {', '.join(CONFIGURATIONS)}")
    for number in range(1, arguments.rounds + 1):
        for kind in kinds:
            log(f"round {number}: {kind}, {arguments.clients} clients")
            result = measure(kind, bundle, texts, arguments)
            log(f"round {number}: {kind} {result['texts_per_second']:.1f} texts/s, p99 "
                f"{result['latency_ms'].get('p99', float('nan')):.1f} ms, {result['errors']} errors, "
                f"load {result['load_average_before'][0]:.2f}")
            report["measurements"].append((number, result))
    report["summary"] = summarize(report["measurements"])
    output = arguments.output or arguments.workdir.expanduser() / "ray.json"
    print(write_report(report, output, arguments.markdown, render_markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
