"""perf: trtexec/benchmark_app-style measurement of a bundle: load, first inference, latency, throughput."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .runtime.batching import plan_batches
from .data import read_dataset
from .errors import UsageError


@dataclass(frozen=True)
class PerfOptions:
    bundle: Path
    threads: int | None = None  # concurrent contexts, each on its own thread; default from `hint`
    hint: str = "latency"  # benchmark_app -hint: latency (one context, every core) or throughput
    cpu_threads: int | None = None  # total compute threads; default all cores, split between contexts
    iterations: int = 0  # minimum timed calls over all threads; 0: run for `duration` only
    duration: float = 10.0  # minimum timed seconds; both minimums must be met
    warmup: float = 2.0  # seconds run before timing, so caches and kernels are hot
    batch_size: int = 1
    seq_len: int | None = None  # padded length of random inputs; default the bundle's max
    data: Path | None = None  # real texts: batches take their real token lengths (bucketed like infer)
    seed: int = 0


def percentiles(samples_ms: list[float]) -> dict:
    values = np.asarray(samples_ms, dtype=np.float64)
    return {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
            "median": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
            "p95": float(np.percentile(values, 95)), "p99": float(np.percentile(values, 99))}


def run_benchmark(options: PerfOptions) -> dict:
    from .runtime.engine import Engine

    if (options.threads is not None and options.threads < 1) or options.batch_size < 1:
        raise UsageError("--threads and --batch-size must be at least 1", "pass positive values")
    if options.iterations < 0 or options.duration < 0 or options.warmup < 0:
        raise UsageError("--iterations, --duration and --warmup cannot be negative", "pass zero or more")
    if options.iterations == 0 and options.duration == 0:
        raise UsageError("neither --iterations nor --duration is set", "pass --iterations N or --duration S")
    started = time.perf_counter()
    engine = Engine.load(options.bundle, contexts=options.threads, cpu_threads=options.cpu_threads,
                         hint=options.hint)
    load_seconds = time.perf_counter() - started
    batches = _input_batches(engine, options)
    contexts = [engine.create_context() for _ in range(engine.settings.contexts)]

    first_started = time.perf_counter()
    contexts[0].run(*batches[0])
    first_inference_ms = (time.perf_counter() - first_started) * 1000

    _drive_contexts(contexts, batches, seconds=options.warmup, min_calls=0)
    wall, latencies_per_thread, counters = _drive_contexts(contexts, batches, seconds=options.duration,
                                                            min_calls=options.iterations)
    latencies = [value for thread_latencies in latencies_per_thread for value in thread_latencies]
    sequences = sum(counter[0] for counter in counters)
    tokens = sum(counter[1] for counter in counters)
    shapes = [tuple(batch[0].shape) for batch in batches]
    return {
        "bundle": str(options.bundle), "backend": engine.backend, "precision": engine.precision,
        "shape_profile": engine.profile.describe(), "hint": options.hint, "threads": len(contexts),
        "cpu_threads": engine.settings.cpu_threads, "batch_size": options.batch_size,
        "input": "data" if options.data else "random", "data": str(options.data) if options.data else None,
        "seq_len": None if options.data else (options.seq_len or engine.max_seq_length),
        "distinct_shapes": len(set(shapes)), "mean_padded_length": float(np.mean([shape[1] for shape in shapes])),
        "load_seconds": load_seconds, "first_inference_ms": first_inference_ms,
        "warmup_seconds": options.warmup, "wall_seconds": wall, "calls": len(latencies),
        "sequences": sequences, "useful_tokens": tokens,
        "throughput_sequences_per_second": sequences / wall if wall > 0 else None,
        "throughput_tokens_per_second": tokens / wall if wall > 0 else None,
        "latency_ms": percentiles(latencies),
    }


def _drive_contexts(contexts, batches, *, seconds: float, min_calls: int):
    """Each context runs on its own thread until `seconds` have passed and the threads together
    made at least `min_calls` calls. Returns (wall seconds, latencies per thread, [sequences, tokens] per thread)."""
    per_thread = -(-min_calls // len(contexts))
    latencies_per_thread: list[list[float]] = [[] for _ in contexts]
    counters = [[0, 0] for _ in contexts]
    deadline = time.perf_counter() + seconds

    def drive(number: int) -> None:
        position = number  # threads start at different batches so they do not run in lock-step
        while len(latencies_per_thread[number]) < per_thread or time.perf_counter() < deadline:
            batch = batches[position % len(batches)]
            call_started = time.perf_counter()
            contexts[number].run(*batch)
            latencies_per_thread[number].append((time.perf_counter() - call_started) * 1000)
            counters[number][0] += batch[0].shape[0]
            counters[number][1] += int(batch[1].sum())
            position += len(contexts)

    threads = [threading.Thread(target=drive, args=(number,)) for number in range(len(contexts))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies_per_thread, counters


def _input_batches(engine, options: PerfOptions) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Random full-length ids, or real texts from --data bucketed as `infer` would run them."""
    profile = engine.profile
    if options.batch_size > profile.max_batch:
        raise UsageError(f"--batch-size {options.batch_size} exceeds the bundle's maximum batch {profile.max_batch}",
                         f"pass --batch-size {profile.max_batch} or less")
    if options.data is not None:
        if options.seq_len is not None:
            raise UsageError("--seq-len and --data both set the sequence length",
                             "drop --seq-len: with --data every batch takes its texts' real lengths")
        texts = read_dataset(options.data, label_names=engine.label_names).texts
        encoded = engine.encoder.encode(texts)
        plans = plan_batches(encoded.lengths, max_batch_size=options.batch_size,
                             max_seq_length=engine.max_seq_length, bucket_lengths=profile.bucket_lengths())
        plans = [plan for plan in plans if len(plan.indices) == options.batch_size] or plans
        padded = [engine.encoder.pad(encoded, plan.indices, plan.padded_length) for plan in plans]
        random_order = np.random.default_rng(options.seed).permutation(len(padded))
        return [(padded[i].input_ids, padded[i].attention_mask, padded[i].token_type_ids) for i in random_order]
    seq_len = options.seq_len or engine.max_seq_length
    if seq_len > engine.max_seq_length or seq_len < 2:
        raise UsageError(f"--seq-len {seq_len} is outside [2, {engine.max_seq_length}]",
                         f"pass --seq-len {engine.max_seq_length} or less")
    rng = np.random.default_rng(options.seed)
    vocab_size = engine.manifest["export_manifest"]["vocab_size"]
    low = min(1000, vocab_size // 2)  # ordinary tokens, clear of the special and unused ids at the start
    input_ids = rng.integers(low, vocab_size, size=(options.batch_size, seq_len), dtype=np.int64)
    attention_mask = np.ones_like(input_ids)
    return [(input_ids, attention_mask, np.zeros_like(input_ids))]
