"""Measuring one configuration inside its own process, and how much of the CPU other processes take.

bench/compare.py starts `python bench/measure.py CONFIGURATION JOB_JSON RESULT_JSON` once per
configuration (and once with CONFIGURATION "ceiling" for the matmul ceilings), so each peak RSS
belongs to one engine alone and no engine inherits another's threads, caches or allocator state.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, when run as a script

from artifacts import ArtifactPaths  # noqa: E402

LATENCY_WARMUP_CALLS = 5
MIN_LATENCY_SAMPLES = 10
MODEL_ONLY_SHARE_OF_LATENCY_TIME = 0.25  # the model-only latency is a diagnostic: a quarter of the time


class CompetingLoad:
    """Times a block and measures how much of the machine's CPU other processes took meanwhile.

    Other people's tests and training share these cores; a number measured while they were busy is
    not comparable with one measured on an idle machine, so every timed block records
    others_share = (busy CPU time from /proc/stat - this process's own) / (wall time x CPUs).
    """

    def __enter__(self) -> "CompetingLoad":
        self._busy, self._own = _system_busy_seconds(), _own_cpu_seconds()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exception) -> None:
        self.wall_seconds = time.perf_counter() - self._started
        others = (_system_busy_seconds() - self._busy) - (_own_cpu_seconds() - self._own)
        self.others_share = max(0.0, others) / (self.wall_seconds * (os.cpu_count() or 1))


def _system_busy_seconds() -> float:
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest time is inside user


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def peak_resident_megabytes() -> float:
    """This process's peak RSS (VmHWM) in 10^6 bytes.

    Not getrusage's ru_maxrss: Linux carries it across exec, so a child started by a parent that
    once held 4 GB reports 4 GB whatever it used itself.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # not Linux: best available


def latencies_ms(call, iterations: int, seconds: float) -> dict:
    """Time `iterations` calls, stopping early after `seconds` (never under MIN_LATENCY_SAMPLES):
    PyTorch fp32 takes a fifth of a second per call here, and the whole run has to fit in minutes."""
    for _ in range(LATENCY_WARMUP_CALLS):
        call()
    samples = []
    deadline = time.perf_counter() + seconds
    while len(samples) < iterations and (len(samples) < MIN_LATENCY_SAMPLES or time.perf_counter() < deadline):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    values = np.asarray(samples)
    return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "p99": float(np.percentile(values, 99)), "mean": float(values.mean()), "min": float(values.min()),
            "iterations": len(samples)}


def measure_configuration(name: str, job: dict) -> dict:
    """Load, warm up, time one pass over every text, then time batch-1 calls; report peak RSS.

    job: {"workdir", "texts", "threads", "latency_text", "latency_iterations", "latency_seconds"}.
    """
    from runners import create_runner

    texts = job["texts"]
    started = time.perf_counter()
    runner = create_runner(name, ArtifactPaths(Path(job["workdir"])), job["threads"])
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    runner.warm_up(texts)
    warm_up_seconds = time.perf_counter() - started

    with CompetingLoad() as during_throughput:
        logits = runner.classify(texts)

    runner.prepare_latency()
    text, seconds = job["latency_text"], job["latency_seconds"]
    with CompetingLoad() as during_latency:
        end_to_end = latencies_ms(lambda: runner.classify_one(text), job["latency_iterations"], seconds)
        model_only = latencies_ms(runner.model_only_call(text), job["latency_iterations"],
                                  seconds * MODEL_ONLY_SHARE_OF_LATENCY_TIME)
    return {
        "configuration": name, "load_seconds": load_seconds, "warm_up_seconds": warm_up_seconds,
        "throughput_seconds": during_throughput.wall_seconds, "texts": len(texts),
        "logits": np.round(logits.astype(np.float64), 6).tolist(),
        "latency_ms": end_to_end, "model_only_latency_ms": model_only,
        "peak_rss_mb": peak_resident_megabytes(),
        "others_cpu_share": during_throughput.others_share,
        "others_cpu_share_during_latency": during_latency.others_share,
        "settings": runner.settings(),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: measure.py CONFIGURATION|ceiling JOB_JSON RESULT_JSON", file=sys.stderr)
        return 2
    name, job_path, result_path = argv[0], Path(argv[1]), Path(argv[2])
    job = json.loads(job_path.read_text(encoding="utf-8"))
    if name == "ceiling":
        from flops import measure_matmul_ceilings

        result = {"ceilings": measure_matmul_ceilings(job["threads"])}
    else:
        result = measure_configuration(name, job)
    from roberta_deploy.atomic import atomic_write_text

    atomic_write_text(result_path, json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
