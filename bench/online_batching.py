"""Online batching designs compared side by side: padded tokens per real token, distinct shapes, memory and
throughput, with closed-loop clients submitting straight to a Batcher (no HTTP, so the batching shows).

Each (design, clients) measurement runs in a fresh process (an engine's per-shape caches live as long as the
process), and the designs take turns round after round, so all of them meet the same load on a shared machine.

    python bench/online_batching.py --bundle B --data dev.tsv --clients 8 64 --duration 30 --rounds 2 \\
        --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

DESIGNS = {
    "before": "the window grew from the oldest row to the token budget; lengths a multiple of 16 to 128, 32 to "
              "256, 64 beyond",
    "padding-cap": "the window stops where it would pad more than PADDING_ALLOWANCE over its rows' own length "
                   "classes; rows cut to a power of two, token budget as for 128-token texts, at most the "
                   "engine's run_token_limit (the library's design)",
    "padding-cap-old-grid": "padding-cap with the grid before issue 21's memory fix: rows cut to 1, 2, 3, 4, 6, 8, "
                            "12, 16, 24, 32, and a token budget that grows with max_seq_length (batch x length / "
                            "contexts)",
    "padding-cap-fine": "padding-cap, with lengths a multiple of 8 to 128, 16 to 256, 32 beyond",
    "exact-lengths-small-cache": "every batch padded only to its longest row (any shape), OpenVINO's "
                                 "CPU_RUNTIME_CACHE_CAPACITY=64 to bound the per-shape caches instead",
    "exact-lengths": "every batch padded only to its longest row and cut to no row count (any shape), the engine "
                     "unchanged: for ONNX Runtime, which keeps no kernels per shape",
    "padding-cap-budget-1024": "padding-cap with a token budget of 1,024 padded tokens per batch",
    "padding-cap-budget-512": "padding-cap with a token budget of 512 padded tokens per batch",
    "padding-cap-allowance-1.1": "padding-cap with PADDING_ALLOWANCE 1.1 instead of 1.2",
    "padding-cap-no-arena": "padding-cap on ONNX Runtime sessions without the CPU memory arena "
                            "(enable_cpu_mem_arena off): tensors from malloc, which returns large blocks",
    "padding-cap-shared-arena": "padding-cap with one CPU arena shared by every session of the process "
                                "(create_and_register_allocator, use_env_allocators), extended by what is asked "
                                "(kSameAsRequested) instead of doubling",
    "padding-cap-no-mem-pattern": "padding-cap on ONNX Runtime sessions without memory patterns "
                                  "(enable_mem_pattern off): each tensor its own arena chunk instead of one block "
                                  "per input shape",
    "exact-lengths-budget-1024": "exact-lengths with a token budget of 1,024 padded tokens per batch",
}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/chnsenticorp/dev.tsv"))
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    parser.add_argument("--clients", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--duration", type=float, default=30.0, help="Timed seconds per measurement.")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=2, metavar=("DESIGN", "CLIENTS"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# -- the designs that are not the library's own ------------------------------------------------------------

def before_lengths(max_seq_length: int) -> tuple[int, ...]:
    lengths, length = set(), 0
    while length < max_seq_length:
        length += max(16, (1 << max(length, 1).bit_length()) // 8)
        lengths.add(min(length, max_seq_length))
    return tuple(sorted(lengths))


def fine_lengths(max_seq_length: int) -> tuple[int, ...]:
    lengths, length = set(), 0
    while length < max_seq_length:
        length += max(8, (1 << max(length, 1).bit_length()) // 16)
        lengths.add(min(length, max_seq_length))
    return tuple(sorted(lengths))


def before_select_rows(self):
    """The selection before the padding cap (roberta_deploy/runtime/online.py at the issue-19 commit)."""
    by_length = sorted(self._pending, key=lambda row: (row.length, row.arrival))
    anchor = min(range(len(by_length)), key=lambda index: by_length[index].arrival)
    low, high = anchor, anchor + 1
    padded = self._padded_length_of(by_length[anchor].length)
    while high - low < self.max_batch_size:
        shorter = low - 1 if low > 0 else None
        longer = high if high < len(by_length) else None
        if shorter is None and longer is None:
            return self._cut_to_row_count(by_length[low:high], by_length[anchor]), False
        longer_padded = self._padded_length_of(by_length[longer].length) if longer is not None else None
        fits_shorter = shorter is not None and padded * (high - low + 1) <= self.max_batch_tokens
        fits_longer = longer is not None and longer_padded * (high - low + 1) <= self.max_batch_tokens
        if not fits_shorter and not fits_longer:
            return self._cut_to_row_count(by_length[low:high], by_length[anchor]), True
        shorter_waste = padded - by_length[shorter].length if fits_shorter else None
        longer_waste = (longer_padded - padded) * (high - low) + longer_padded - by_length[longer].length \
            if fits_longer else None
        if fits_shorter and (not fits_longer or shorter_waste <= longer_waste):
            low -= 1
        else:
            high += 1
            padded = longer_padded
    return self._cut_to_row_count(by_length[low:high], by_length[anchor]), True


def make_batcher(design: str, engine):
    from roberta_deploy.runtime.batcher import Batcher

    batcher = Batcher(engine)
    if design == "before":
        batcher._select_rows = before_select_rows.__get__(batcher)
        batcher._online_lengths = before_lengths(engine.max_seq_length)
    elif design == "padding-cap-old-grid":
        from roberta_deploy.runtime import online

        old_counts = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
        online.online_row_count = lambda rows, cap: cap if rows >= cap else max(c for c in old_counts if c <= rows)
        batcher.max_batch_tokens = max(engine.max_seq_length,
                                       batcher.max_batch_size * engine.max_seq_length // batcher.context_count)
    elif design == "padding-cap-fine":
        batcher._online_lengths = fine_lengths(engine.max_seq_length)
    elif design.startswith("padding-cap-budget-"):
        batcher.max_batch_tokens = max(engine.max_seq_length, int(design.rsplit("-", 1)[1]))
    elif design == "padding-cap-allowance-1.1":
        from roberta_deploy.runtime import online

        online.PADDING_ALLOWANCE = 1.1
    elif design in ("exact-lengths-small-cache", "exact-lengths", "exact-lengths-budget-1024"):
        if design == "exact-lengths-budget-1024":
            batcher.max_batch_tokens = max(engine.max_seq_length, 1024)
        batcher._online_lengths = tuple(range(1, engine.max_seq_length + 1))
        batcher._cut_to_row_count = lambda window, oldest: window
    return batcher


def load_engine(design: str, bundle: Path):
    from roberta_deploy.runtime.engine import THROUGHPUT, Engine

    if design in ("padding-cap-shared-arena", "padding-cap-no-arena", "padding-cap-no-mem-pattern"):
        import onnxruntime as ort

        if design == "padding-cap-shared-arena":
            memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
        session_options = ort.SessionOptions

        def changed_options():  # the library's _session builds on these, then sets its own entries
            options = session_options()
            if design == "padding-cap-shared-arena":
                options.add_session_config_entry("session.use_env_allocators", "1")
            elif design == "padding-cap-no-arena":
                options.enable_cpu_mem_arena = False
            else:
                options.enable_mem_pattern = False
            return options

        ort.SessionOptions = changed_options

    if design == "exact-lengths-small-cache":
        import openvino as ov

        compile_model = ov.Core.compile_model

        def with_small_cache(core, model, device, properties=None):
            return compile_model(core, model, device, {**(properties or {}), "CPU_RUNTIME_CACHE_CAPACITY": "64"})

        ov.Core.compile_model = with_small_cache
    return Engine.load(bundle, hint=THROUGHPUT)


# -- one measurement (a child process) ------------------------------------------------------------------------

def measure(design: str, clients: int, arguments) -> dict:
    from roberta_deploy.data import read_dataset

    texts = read_dataset(arguments.data).texts
    engine = load_engine(design, arguments.bundle)
    process = psutil.Process()
    batches: list[tuple[int, int]] = []
    real_tokens = [0]
    answered = [0]
    measuring = threading.Event()
    stop = threading.Event()
    with make_batcher(design, engine) as batcher:
        batcher.add_batch_listener(lambda stats: batches.append((stats.rows, stats.padded_length))
                                   if measuring.is_set() else None)
        rss_ready = process.memory_info().rss
        lock = threading.Lock()

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                result = batcher.submit(texts[rng.randrange(len(texts))]).result(timeout=300)
                if measuring.is_set():
                    with lock:
                        answered[0] += 1
                        real_tokens[0] += int(result.token_lengths.sum())

        threads = [threading.Thread(target=client, args=(seed,), daemon=True) for seed in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(arguments.warmup)
        rss_warm = process.memory_info().rss
        cpu_before = sum(psutil.cpu_times()[:3]) - sum(process.cpu_times()[:2])
        measuring.set()
        started = time.perf_counter()
        peak = rss_warm
        while time.perf_counter() - started < arguments.duration:
            time.sleep(0.5)
            peak = max(peak, process.memory_info().rss)
        measuring.clear()
        elapsed = time.perf_counter() - started
        others = (sum(psutil.cpu_times()[:3]) - sum(process.cpu_times()[:2]) - cpu_before) / (elapsed * psutil.cpu_count())
        stop.set()
        for thread in threads:
            thread.join(60)
        rss_end = process.memory_info().rss
    padded = sum(rows * length for rows, length in batches)
    return {"design": design, "clients": clients, "texts_per_second": answered[0] / elapsed,
            "padded_per_real_token": padded / max(real_tokens[0], 1), "mean_batch_rows":
            sum(rows for rows, _ in batches) / max(len(batches), 1), "batches": len(batches),
            "distinct_shapes": len(set(batches)), "rss_ready_mb": rss_ready / 2**20, "rss_warm_mb": rss_warm / 2**20,
            "rss_peak_mb": peak / 2**20, "rss_end_mb": rss_end / 2**20, "others_cpu_share": max(0.0, others),
            "load_average": os.getloadavg()[0]}


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if arguments.child:
        print(json.dumps(measure(arguments.child[0], int(arguments.child[1]), arguments)))
        return 0
    results = []
    for round_number in range(arguments.rounds):
        for clients in arguments.clients:
            for design in arguments.designs:
                command = [sys.executable, __file__, "--bundle", str(arguments.bundle), "--data", str(arguments.data),
                           "--duration", str(arguments.duration), "--warmup", str(arguments.warmup),
                           "--child", design, str(clients)]
                load_before = os.getloadavg()[0]
                done = subprocess.run(command, capture_output=True, text=True, timeout=arguments.duration * 4 + 300)
                if done.returncode:
                    raise RuntimeError(f"{design} at {clients} clients failed:\n{done.stderr[-3000:]}")
                row = {**json.loads(done.stdout.strip().splitlines()[-1]), "round": round_number + 1,
                       "load_average_before": load_before}
                results.append(row)
                print(f"round {row['round']} {design:28s} {clients:3d} clients: {row['texts_per_second']:8.1f} texts/s, "
                      f"padded/real {row['padded_per_real_token']:.2f}, {row['mean_batch_rows']:.1f} rows/batch, "
                      f"{row['distinct_shapes']} shapes, RSS {row['rss_ready_mb']:.0f}/{row['rss_warm_mb']:.0f}/"
                      f"{row['rss_peak_mb']:.0f} MB, others {row['others_cpu_share']:.0%}, load {load_before:.1f}",
                      flush=True)
    if arguments.json:
        arguments.json.write_text(json.dumps({"designs": {name: DESIGNS[name] for name in arguments.designs},
                                              "command": " ".join(sys.argv), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
