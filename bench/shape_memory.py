"""Resident memory of one process as its contexts meet every batch shape the online batcher can make.

OpenVINO's CPU plugin keeps kernels and buffers per input shape it has seen, so a server's memory depends on
how many distinct (rows, length) shapes its batches take and on the largest of them. This loads a bundle
(throughput hint, as a server does), lists the online shapes (batching.online_lengths x the row counts under
the token budget), runs them in the order asked on `--contexts` contexts, and prints the RSS after each.

    python bench/shape_memory.py --bundle /tmp/b512/bert-base-512-int8 --order random --json out.json
    python bench/shape_memory.py --bundle B --order largest --max-batch-tokens 8192   # the budget before issue 21
    python bench/shape_memory.py --bundle B --old-row-counts                          # 1, 2, 3, 4, 6, 8, 12, ...

The shapes' order matters: "largest" runs the one with the most attention memory (rows x length^2) first.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import psutil

OLD_ROW_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)  # before issue 21's memory fix


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--order", choices=("random", "largest", "smallest"), default="random")
    parser.add_argument("--contexts", type=int, default=1, help="Contexts each shape runs on, one after another.")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="Default: the batcher's own budget.")
    parser.add_argument("--old-row-counts", action="store_true", help="Rows cut to 1, 2, 3, 4, 6, 8, 12, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args(argv)
    if arguments.contexts < 1:
        parser.error("--contexts must be at least 1")

    from roberta_deploy.runtime.batching import ONLINE_ROW_COUNTS, default_token_budget, online_lengths
    from roberta_deploy.runtime.engine import THROUGHPUT, Context, Engine

    engine = Engine.load(arguments.bundle, hint=THROUGHPUT)
    max_length, batch_size = engine.max_seq_length, engine.default_batch_size()
    budget = arguments.max_batch_tokens or default_token_budget(max_length, batch_size, engine.settings.contexts)
    row_counts = OLD_ROW_COUNTS if arguments.old_row_counts else ONLINE_ROW_COUNTS
    shapes = []
    for length in online_lengths(max_length):
        cap = max(1, min(batch_size, budget // length))
        shapes += [(rows, length) for rows in sorted({count for count in row_counts if count <= cap} | {cap})]
    if arguments.order == "random":
        random.Random(arguments.seed).shuffle(shapes)
    else:
        shapes.sort(key=lambda shape: shape[0] * shape[1] ** 2, reverse=arguments.order == "largest")
    contexts = [Context(engine) for _ in range(arguments.contexts)]
    process = psutil.Process()
    loaded = process.memory_info().rss / 2**20
    print(f"max length {max_length}, batch {batch_size}, token budget {budget}: {len(shapes)} shapes; "
          f"RSS when loaded {loaded:.0f} MB", flush=True)
    started, samples = time.perf_counter(), []
    for number, (rows, length) in enumerate(shapes, 1):
        input_ids = np.full((rows, length), 100, dtype=np.int64)  # a common token id; the values do not matter
        for context in contexts:
            context.run(input_ids, np.ones_like(input_ids))
        rss = process.memory_info().rss / 2**20
        samples.append({"shape": [rows, length], "rss_mb": rss, "seconds": time.perf_counter() - started})
        if number % 10 == 1 or number == len(shapes):
            print(f"{number:4d} shapes, last {rows}x{length}: RSS {rss:.0f} MB", flush=True)
    if arguments.json:
        arguments.json.write_text(json.dumps({"command": " ".join(sys.argv), "bundle": str(arguments.bundle),
                                              "token_budget": budget, "loaded_rss_mb": loaded,
                                              "samples": samples}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
