"""What Ray Data costs per row: `infer` in one process against `infer --ray` on a local cluster of one node
and of two nodes (ray.cluster_utils.Cluster on this machine), the same bundle and file, in interleaved rounds
in one run (the machine is shared: a change in its load hits every configuration of a round alike).

Every configuration has the machine's cores: plain infer computes on all of them in one process; Ray runs one
1-CPU actor per core, on one node of all the cores or on two nodes of half each. Timed from the job's call
to its return: for Ray that includes shipping the bundle, starting the actors and loading their engines
(what a user waits for), the cluster itself is started before. CPU-seconds are every thread of every process
involved: this process (the driver) and, for Ray, every process of the cluster (raylets, GCS, the actors),
sampled every 0.2 s so that actors that end with the job are counted up to their last sample.

    python bench/infer_ray_bench.py --bundle B --data dev.tsv --repeat 4 --rounds 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil

from roberta_deploy.data import read_dataset_chunks
from roberta_deploy.jobs.infer import classify_and_write
from roberta_deploy.jobs.infer_ray import BundleSummary, classify_on_ray
from roberta_deploy.runtime.engine import THROUGHPUT, Engine
from roberta_deploy.serve.ray_deployment import RayOptions


class DescendantsCpu:
    """CPU-seconds (user + system, all threads) of this process's descendants over a block, sampled."""

    def __init__(self, period_s: float = 0.2):
        self.period_s = period_s
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()

    def _sample(self, record_first: bool) -> None:
        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system
            if record_first:
                self.first[child.pid] = used
            self.last[child.pid] = used

    def __enter__(self):
        self._sample(record_first=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample(record_first=False)

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self._sample(record_first=False)

    @property
    def seconds(self) -> float:
        return sum(used - self.first.get(pid, 0.0) for pid, used in self.last.items())


def chunks_of(data: Path, summary, repeat: int):
    for _ in range(repeat):
        yield from read_dataset_chunks(data, label_names=summary.label_names, text_pairs=summary.task.text_pairs,
                                       task=summary.task.kind)


def run_plain(bundle: Path, data: Path, repeat: int, cores: int) -> dict:
    summary = BundleSummary.read(bundle)
    cpu, wall = time.process_time(), time.perf_counter()
    with Engine.load(bundle, hint=THROUGHPUT, cpu_threads=cores) as engine, tempfile.TemporaryFile("w+") as out:
        report = classify_and_write(engine, chunks_of(data, summary, repeat), out)
    return {"rows": report.metrics["examples"], "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu, "accuracy": report.metrics.get("accuracy")}


def run_ray(bundle: Path, data: Path, repeat: int, cores: int, nodes: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cores // nodes, "include_dashboard": False,
                                                            "object_store_memory": 200 * 2**20})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cores // nodes, object_store_memory=200 * 2**20)
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    try:
        summary = BundleSummary.read(bundle)
        cpu, wall = time.process_time(), time.perf_counter()
        with DescendantsCpu() as cluster_cpu, tempfile.TemporaryFile("w+") as out:
            report = classify_on_ray(summary, chunks_of(data, summary, repeat), out, "jsonl",
                                     RayOptions(replicas=cores, replica_cpus=1))
        driver_cpu = time.process_time() - cpu
        return {"rows": report.metrics["examples"], "wall_s": time.perf_counter() - wall,
                "cpu_s": driver_cpu + cluster_cpu.seconds, "driver_cpu_s": driver_cpu,
                "cluster_cpu_s": cluster_cpu.seconds, "actor_classify_cpu_s": report.metrics["ray"]["actor_cpu_seconds"],
                "nodes_used": report.metrics["ray"]["nodes"], "accuracy": report.metrics.get("accuracy")}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=4, help="read the file this many times over")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cores = len(os.sched_getaffinity(0))
    configurations = {"infer": lambda: run_plain(args.bundle, args.data, args.repeat, cores),
                      "infer --ray, 1 node": lambda: run_ray(args.bundle, args.data, args.repeat, cores, 1),
                      "infer --ray, 2 nodes": lambda: run_ray(args.bundle, args.data, args.repeat, cores, 2)}
    runs: dict[str, list[dict]] = {name: [] for name in configurations}
    for round_number in range(args.rounds):
        for name, run in configurations.items():
            load = os.getloadavg()[0]
            result = run()
            result.update(load_before=load, round=round_number)
            runs[name].append(result)
            print(f"round {round_number} {name}: {result['rows'] / result['wall_s']:.1f} rows/s, "
                  f"{1000 * result['cpu_s'] / result['rows']:.2f} CPU-ms/row, load {load:.2f}", flush=True)
    summary = {}
    for name, results in runs.items():
        rates = [result["rows"] / result["wall_s"] for result in results]
        cpu_ms = [1000 * result["cpu_s"] / result["rows"] for result in results]
        summary[name] = {"rows_per_s": statistics.median(rates), "rows_per_s_range": [min(rates), max(rates)],
                         "cpu_ms_per_row": statistics.median(cpu_ms), "cpu_ms_per_row_range": [min(cpu_ms), max(cpu_ms)]}
        print(f"{name}: {summary[name]['rows_per_s']:.1f} rows/s ({min(rates):.1f}-{max(rates):.1f}), "
              f"{summary[name]['cpu_ms_per_row']:.2f} CPU-ms/row ({min(cpu_ms):.2f}-{max(cpu_ms):.2f})")
    if args.json:
        args.json.write_text(json.dumps({"cores": cores, "runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
