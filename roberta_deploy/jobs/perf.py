"""perf: trtexec/benchmark_app-style measurement of a bundle: load, first inference, latency, throughput."""

from __future__ import annotations

import datetime
import math
import os
import platform
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.batching import plan_batches
from ..data import read_dataset
from ..flags import COUNT, COUNT_OR_ZERO, SECONDS
from ..errors import UsageError
from ..machine import this_cpu
from ..manifest import library_versions
from ..measurement import Timing, TimingPlan, machine_load, time_interleaved

DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0)
PROGRESS_INTERVAL_SECONDS = 0.1


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
    device: str | None = None  # cpu, cuda or cuda:N; default the device the bundle was built for
    seed: int = 0
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES  # reported as p50, p90, ... (benchmark_app -latency_percentile)
    record_times: bool = False  # keep every timed call (trtexec --exportTimes) under report["times"]


@dataclass(frozen=True)
class PerfRun:
    """One bundle's measurement, as `perf` prints it and --json writes it (`to_json`)."""

    bundle: str
    backend: str
    precision: str
    device: dict  # Engine.device_info(): device, and name / capability on a GPU
    shape_profile: str
    hint: str
    threads: int  # contexts timed concurrently
    cpu_threads: int | None
    batch_size: int
    input: str  # "data" (real texts) or "random"
    data: str | None
    seq_len: int | None  # padded length of random inputs; None with real texts
    distinct_shapes: int
    mean_padded_length: float
    load_seconds: float
    first_inference_ms: float
    warmup_seconds: float
    wall_seconds: float
    calls: int
    sequences: int
    useful_tokens: int
    throughput_sequences_per_second: float | None
    throughput_tokens_per_second: float | None
    latency_ms: dict  # min, mean, median, max and the asked percentiles (p50, p99, ...) of every timed call
    percentiles: list
    host: dict  # host_description(), plus machine_load() for interleaved runs
    warnings: list
    throughput_interval: dict | None = None  # interleaved runs: the median round with its interval
    rounds: dict | None = None  # interleaved runs: Timing.to_dict(), others' CPU share per round
    throughput_vs_first: float | None = None  # --compare: throughput over the first bundle's
    times: list | None = None  # --export-times: one entry per timed call

    def to_json(self) -> dict:
        """The --json shape: every field, the optional ones only when measured."""
        optional = ("throughput_interval", "rounds", "throughput_vs_first", "times")
        return {name: value for name, value in self.__dict__.items()
                if name not in optional or value is not None}


@dataclass(frozen=True)
class PerfComparison:
    """perf --compare: the bundles timed together in interleaved rounds."""

    host: dict
    timing: str
    runs: tuple[PerfRun, ...]

    def to_json(self) -> dict:
        return {"mode": "compare", "host": self.host, "timing": self.timing,
                "runs": [run.to_json() for run in self.runs]}


def percentile_name(value: float) -> str:
    return f"p{value:g}"


def parse_percentiles(text: str) -> tuple[float, ...]:
    """'50,90,99.9' -> (50.0, 90.0, 99.9); each in (0, 100]."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--percentiles {text!r} is not a comma-separated list of numbers",
                         "pass e.g. --percentiles 50,90,99,99.9") from None
    if not values or not all(math.isfinite(value) and 0 < value <= 100 for value in values):
        raise UsageError(f"--percentiles {text!r} needs numbers above 0 and at most 100",
                         "pass e.g. --percentiles 50,90,99,99.9")
    return tuple(dict.fromkeys(values))


def percentiles(samples_ms: list[float], requested: tuple[float, ...] = DEFAULT_PERCENTILES) -> dict:
    values = np.asarray(samples_ms, dtype=np.float64)
    summary = {"min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
               "median": float(np.percentile(values, 50)), "stdev": float(values.std())}
    for value in sorted(set(requested) | {90.0, 95.0, 99.0}):
        summary[percentile_name(value)] = float(np.percentile(values, value))
    return summary


def host_description() -> dict:
    """The machine a measurement ran on: what benchmark_app and trtexec print before their numbers."""
    cpu = this_cpu()
    try:
        import psutil

        physical_cores, memory_bytes = psutil.cpu_count(logical=False), psutil.virtual_memory().total
    except ImportError:  # pragma: no cover - a declared dependency
        physical_cores, memory_bytes = None, None
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable_cores = os.cpu_count()
    return {
        "hostname": socket.gethostname(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "os": platform.platform(),
        "cpu_model": cpu["model"],
        "cpu_flags": cpu["flags"],
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores,
        "usable_cores": usable_cores,
        "memory_gib": round(memory_bytes / 2**30, 1) if memory_bytes else None,
        "library_versions": library_versions(),
    }


def check_options(options: PerfOptions) -> None:
    COUNT.require(options.threads, "--threads")
    COUNT.require(options.batch_size, "--batch-size")
    SECONDS.require(options.duration, "--duration")
    SECONDS.require(options.warmup, "--warmup")
    COUNT_OR_ZERO.require(options.iterations, "--iterations")
    if options.iterations == 0 and options.duration == 0:
        raise UsageError("neither --iterations nor --duration is set", "pass --iterations N or --duration S")


def _join_despite_signals(threads: list[threading.Thread]) -> None:
    """Wait until every thread is gone, even if another Ctrl-C or SIGTERM arrives meanwhile (each is one engine
    call away). Gone means out of threading.enumerate(), not `not is_alive()`: a join that a KeyboardInterrupt
    broke can leave is_alive() False too early (CPython 3.11), and a thread that drops the last reference to
    an engine context after the interpreter began to exit aborts in C++ while it frees it."""
    for thread in threads:
        while thread in threading.enumerate():
            try:
                thread.join(0.05)
            except BaseException:  # the first signal is already being handled by the caller
                continue


def run_benchmark(options: PerfOptions, on_progress: Callable[[str, float, float], None] | None = None) -> PerfRun:
    """Measure one bundle. on_progress(phase, elapsed seconds, planned seconds) is called from this
    thread about every 0.1 s during "warm-up" and "timing" (planned is 0 when only --iterations bound it)."""
    from ..runtime.engine import Engine

    check_options(options)
    started = time.perf_counter()
    engine = Engine.load(options.bundle, contexts=options.threads, cpu_threads=options.cpu_threads,
                         hint=options.hint, device=options.device)
    load_seconds = time.perf_counter() - started
    batches = _input_batches(engine, options)
    contexts = [engine.create_context() for _ in range(engine.settings.contexts)]

    first_started = time.perf_counter()
    contexts[0].run(*batches[0])
    first_inference_ms = (time.perf_counter() - first_started) * 1000

    report_progress = on_progress or (lambda phase, elapsed, planned: None)
    _drive_contexts(contexts, batches, seconds=options.warmup, min_calls=0,
                    on_tick=lambda elapsed: report_progress("warm-up", elapsed, options.warmup))
    wall, calls_per_thread, counters = _drive_contexts(
        contexts, batches, seconds=options.duration, min_calls=options.iterations,
        on_tick=lambda elapsed: report_progress("timing", elapsed, options.duration))
    latencies = [call[1] for thread_calls in calls_per_thread for call in thread_calls]
    sequences = sum(counter[0] for counter in counters)
    tokens = sum(counter[1] for counter in counters)
    times = None
    if options.record_times:
        times = sorted((_time_entry(number, call) for number, thread_calls in enumerate(calls_per_thread)
                        for call in thread_calls), key=lambda entry: entry["start_ms"])
    return PerfRun(
        **_what_was_timed(options.bundle, engine, contexts, batches, options),
        load_seconds=load_seconds, first_inference_ms=first_inference_ms, wall_seconds=wall, calls=len(latencies),
        sequences=sequences, useful_tokens=tokens,
        throughput_sequences_per_second=sequences / wall if wall > 0 else None,
        throughput_tokens_per_second=tokens / wall if wall > 0 else None,
        latency_ms=percentiles(latencies, options.percentiles), host=host_description(), times=times)


def _what_was_timed(bundle: Path, engine, contexts: list, batches: list, options: PerfOptions) -> dict:
    """The PerfRun fields that describe the bundle, its engine and the inputs, the same for every way of timing."""
    shapes = [tuple(batch[0].shape) for batch in batches]
    return {"bundle": str(bundle), "backend": engine.backend, "precision": engine.precision,
            "device": engine.device_info(), "shape_profile": engine.profile.describe(), "hint": options.hint,
            "threads": len(contexts), "cpu_threads": engine.settings.cpu_threads, "batch_size": options.batch_size,
            "input": "data" if options.data else "random", "data": str(options.data) if options.data else None,
            "seq_len": None if options.data else batches[0][0].shape[1], "distinct_shapes": len(set(shapes)),
            "mean_padded_length": float(np.mean([shape[1] for shape in shapes])), "warmup_seconds": options.warmup,
            "percentiles": list(options.percentiles),
            "warnings": list(engine.warnings)}  # e.g. the bundle was verified on a CPU with flags this one lacks


def _time_entry(context: int, call: tuple) -> dict:
    """One timed call (--export-times): which context ran it, when it started (ms after timing began), how
    long it took, and the batch shape it ran."""
    return {"context": context, "start_ms": round(call[0], 4), "latency_ms": round(call[1], 4), "batch": call[2],
            "seq_len": call[3]}


COMPARE_ROUNDS = 5  # interleaved rounds of perf --compare and of run's measurements: the median round counts


@dataclass
class _Loaded:
    """One bundle ready to be timed: its engine, contexts and input batches, and every call it made."""

    bundle: Path
    engine: object
    contexts: list
    batches: list
    load_seconds: float
    first_inference_ms: float
    calls: list = field(default_factory=list)  # (start ms after timing began, latency ms, batch, seq)
    tokens: int = 0


def compare_bundles(bundles: list[Path], options: PerfOptions,
                    on_progress: Callable[[str, float, float], None] | None = None,
                    on_bundle: Callable[[int, Path], None] | None = None) -> PerfComparison:
    """The same measurement of each bundle (trtexec/benchmark_app runs side by side), timed in interleaved
    rounds (measurement.py: A B C, B C A, ...) so that a burst of load on the machine falls on every bundle
    alike: `options.duration` seconds per bundle split into COMPARE_ROUNDS rounds. Each run reports the
    median round's throughput with its interval, the latency percentiles of every call, and the share of
    the CPU other processes took during its rounds."""
    if len(bundles) < 2:
        raise UsageError("--compare needs two or more bundles", "pass them after --compare: --compare B1 B2 ...")
    runs = time_bundles(bundles, options, on_progress, on_bundle)
    baseline = runs[0].throughput_sequences_per_second or 0.0
    runs = [replace(run, throughput_vs_first=(run.throughput_sequences_per_second / baseline) if baseline else None)
            for run in runs]
    return PerfComparison(host=runs[0].host, timing=f"{COMPARE_ROUNDS} interleaved rounds", runs=tuple(runs))


def time_bundles(bundles: list[Path], options: PerfOptions,
                 on_progress: Callable[[str, float, float], None] | None = None,
                 on_bundle: Callable[[int, Path], None] | None = None) -> list[PerfRun]:
    """Load every bundle, then time them together in interleaved rounds; a PerfRun each."""
    from ..runtime.engine import Engine

    check_options(options)
    loaded: list[_Loaded] = []
    try:
        for number, bundle in enumerate(bundles):
            if on_bundle is not None:
                on_bundle(number, bundle)
            started = time.perf_counter()
            engine = Engine.load(bundle, contexts=options.threads, cpu_threads=options.cpu_threads,
                                 hint=options.hint, device=options.device)
            load_seconds = time.perf_counter() - started
            loaded.append(_Loaded(bundle, engine, [], [], load_seconds, 0.0))
            item = loaded[-1]
            item.batches = _input_batches(engine, replace(options, bundle=bundle))
            item.contexts = [engine.create_context() for _ in range(engine.settings.contexts)]
            first = time.perf_counter()
            item.contexts[0].run(*item.batches[0])
            item.first_inference_ms = (time.perf_counter() - first) * 1000
        timings = _time_interleaved(loaded, options, on_progress)
        return [_run_report(item, timings[str(number)], options) for number, item in enumerate(loaded)]
    finally:
        for item in loaded:
            item.engine.close()


def _time_interleaved(loaded: list[_Loaded], options: PerfOptions, on_progress) -> dict[str, Timing]:
    report_progress = on_progress or (lambda phase, elapsed, planned: None)
    timing_started = [0.0]

    def work_of(item: _Loaded) -> Callable[[], int]:
        def one_call_per_context() -> int:
            offset = (time.perf_counter() - timing_started[0]) * 1000
            _, calls_per_thread, counters = _drive_contexts(item.contexts, item.batches, seconds=0.0,
                                                            min_calls=len(item.contexts))
            item.calls += [(offset + call[0], *call[1:]) for calls in calls_per_thread for call in calls]
            item.tokens += sum(counter[1] for counter in counters)
            return sum(counter[0] for counter in counters)

        return one_call_per_context

    round_seconds = max(options.duration / COMPARE_ROUNDS, 0.01)
    plan = TimingPlan(round_seconds=round_seconds, min_rounds=COMPARE_ROUNDS, max_seconds=0.0,
                      warmup_seconds=options.warmup)
    for item in loaded:
        item.calls, item.tokens = [], 0

    def on_round(number: int, timings) -> None:
        report_progress("timing", number, COMPARE_ROUNDS)

    timings = time_interleaved({str(number): work_of(item) for number, item in enumerate(loaded)}, plan,
                               on_round=on_round, before_rounds=lambda: _forget_warmup(loaded, timing_started))
    # --iterations: more calls of each, one round more at a time, until every bundle made that many.
    while options.iterations and any(len(item.calls) < options.iterations for item in loaded):
        more = time_interleaved({str(number): work_of(item) for number, item in enumerate(loaded)},
                                replace(plan, min_rounds=1, warmup_seconds=0.0))
        for name, timing in more.items():
            timings[name].rounds += timing.rounds
    return timings


def _forget_warmup(loaded: list[_Loaded], timing_started: list[float]) -> None:
    for item in loaded:
        item.calls, item.tokens = [], 0
    timing_started[0] = time.perf_counter()


def _run_report(item: _Loaded, timing: Timing, options: PerfOptions) -> PerfRun:
    engine = item.engine
    rate = timing.rate
    latencies = [call[1] for call in item.calls]
    wall = sum(round_.seconds for round_ in timing.rounds)
    times = [_time_entry(0, call) for call in sorted(item.calls)] if options.record_times else None
    return PerfRun(
        **_what_was_timed(item.bundle, engine, item.contexts, item.batches, options),
        load_seconds=item.load_seconds, first_inference_ms=item.first_inference_ms, wall_seconds=wall,
        calls=len(latencies), sequences=sum(round_.items for round_ in timing.rounds), useful_tokens=item.tokens,
        throughput_sequences_per_second=rate.value, throughput_interval=rate.to_dict(),
        throughput_tokens_per_second=item.tokens / wall if wall > 0 else None,
        rounds=timing.to_dict(), latency_ms=percentiles(latencies, options.percentiles),
        host={**host_description(), **machine_load()}, times=times)


def measure_shapes(bundles: list[Path], shapes: list[tuple[int, int]], *, seconds: float, warmup: float,
                   hint: str = "throughput", percentiles_wanted: tuple[float, ...] = DEFAULT_PERCENTILES,
                   on_shape: Callable[[int, int], None] | None = None) -> list[list[dict]]:
    """Throughput and latency at each (batch, seq) of random full-length ids, the bundles timed together in
    interleaved rounds at each shape (`seconds` per bundle and shape): the sweep behind report.html's throughput
    per batch size and per sequence length. Per bundle, a list of points in the order of `shapes`."""
    results: list[list[dict]] = [[] for _ in bundles]
    for batch_size, seq_len in shapes:
        if on_shape is not None:
            on_shape(batch_size, seq_len)
        options = PerfOptions(bundle=bundles[0], hint=hint, batch_size=batch_size, seq_len=seq_len, duration=seconds,
                              warmup=warmup, percentiles=percentiles_wanted)
        for number, run in enumerate(time_bundles(bundles, options)):
            results[number].append({"batch_size": batch_size, "seq_len": seq_len, "calls": run.calls,
                                    "throughput_sequences_per_second": run.throughput_sequences_per_second,
                                    "throughput_interval": run.throughput_interval,
                                    "others_cpu_share": run.rounds["others_cpu_share"],
                                    "latency_ms": run.latency_ms})
    return results


def _drive_contexts(contexts, batches, *, seconds: float, min_calls: int,
                    on_tick: Callable[[float], None] | None = None):
    """Each context runs on its own thread until `seconds` have passed and the threads together
    made at least `min_calls` calls; this thread reports progress meanwhile. Returns (wall seconds,
    per thread a list of (start ms, latency ms, batch, seq) per call, [sequences, tokens] per thread)."""
    per_thread = -(-min_calls // len(contexts))
    calls_per_thread: list[list[tuple[float, float, int, int]]] = [[] for _ in contexts]
    counters = [[0, 0] for _ in contexts]
    errors: list[BaseException] = []
    stop = threading.Event()  # set on Ctrl-C or SIGTERM: each thread ends after its current call
    started = time.perf_counter()
    deadline = started + seconds

    def drive(number: int) -> None:
        position = number  # threads start at different batches so they do not run in lock-step
        calls = calls_per_thread[number]
        try:
            while not stop.is_set() and (len(calls) < per_thread or time.perf_counter() < deadline):
                batch = batches[position % len(batches)]
                call_started = time.perf_counter()
                contexts[number].run(*batch)
                finished = time.perf_counter()
                calls.append(((call_started - started) * 1000, (finished - call_started) * 1000,
                              batch[0].shape[0], batch[0].shape[1]))
                counters[number][0] += batch[0].shape[0]
                counters[number][1] += int(batch[1].sum())
                position += len(contexts)
        except BaseException as error:  # raised in the caller's thread below
            errors.append(error)

    threads = [threading.Thread(target=drive, args=(number,), daemon=True) for number in range(len(contexts))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(PROGRESS_INTERVAL_SECONDS)
                if on_tick is not None:
                    on_tick(time.perf_counter() - started)
    except BaseException:
        # A thread left inside an engine call when the interpreter exits ends the process in C++'s
        # std::terminate (exit 134, "terminate called without an active exception"): let each finish its call.
        stop.set()
        _join_despite_signals(threads)
        raise
    if errors:
        raise errors[0]
    return time.perf_counter() - started, calls_per_thread, counters


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
        texts = read_dataset(options.data, text_pairs=engine.task.text_pairs, ignore_labels=True).inputs
        encoded = engine.encoder.encode(texts)
        plans = plan_batches(encoded.lengths, max_batch_size=options.batch_size,
                             max_seq_length=engine.max_seq_length, bucket_lengths=profile.bucket_lengths())
        plans = [plan for plan in plans if len(plan.indices) == options.batch_size] or plans
        padded = [engine.encoder.pad(encoded, plan.indices, plan.padded_length) for plan in plans]
        random_order = np.random.default_rng(options.seed).permutation(len(padded))
        return [(padded[i].input_ids, padded[i].attention_mask, padded[i].token_type_ids) for i in random_order]
    seq_len = options.seq_len if options.seq_len is not None else engine.max_seq_length
    if seq_len > engine.max_seq_length or seq_len < 2:
        raise UsageError(f"--seq-len {seq_len} is outside [2, {engine.max_seq_length}]",
                         f"pass --seq-len {engine.max_seq_length} or less")
    rng = np.random.default_rng(options.seed)
    vocab_size = engine.manifest["export_manifest"]["vocab_size"]
    low = min(1000, vocab_size // 2)  # ordinary tokens, clear of the special and unused ids at the start
    input_ids = rng.integers(low, vocab_size, size=(options.batch_size, seq_len), dtype=np.int64)
    attention_mask = np.ones_like(input_ids)
    return [(input_ids, attention_mask, np.zeros_like(input_ids))]
