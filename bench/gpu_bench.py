"""The GPU targets of issue 14, measured end to end in one run on one machine. To be run on the GPU machine.

Measured, each from raw strings to labels (tokenization included):
  1. throughput of a roberta-deploy torch bundle (length-bucketed batches, CUDA graphs) against PyTorch
     eager at the same precision, every text padded to 128 tokens, batch 256 (target: at least 2x);
  2. its useful (unpadded) GFLOP/s against this device's measured bf16 matmul ceiling (target: 30%);
  3. batch-1 p50 latency of a 128-token text (`roberta-deploy perf` logic; target: at most 2 ms);
  4. fp16 and bf16 label agreement with fp32 on the demo model and the dev split (target: 99.5%).
The speed figures use a random BERT-base classifier (bench/artifacts.py, cached in --workdir).

    python bench/gpu_bench.py --device cuda --output gpu.json --markdown gpu.md        # on the GPU machine
    python bench/gpu_bench.py --device cpu --model demo --limit 64 --batch-size 16 --seconds 1 \\
        --latency-seconds 1                                                             # smoke check on a CPU

Progress goes to stderr, the markdown report to stdout. On a CPU the figures only show that the script
works: the targets are stated for the GPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, when run as a script

import artifacts  # noqa: E402
from artifacts import CENTRING_SAMPLES, MAX_SEQ_LENGTH, ArtifactPaths, prepare_checkpoint, prepare_export  # noqa: E402
from report import machine_description  # noqa: E402
from roberta_deploy.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from roberta_deploy.defaults import DEMO_MODEL_DIR  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
DEFAULT_SHARED_DATA = Path(os.environ.get("ROBERTA_DEPLOY_SHARED_DATA", REPOSITORY.parent / "shared" / "data"))
DEFAULT_WORKDIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "roberta-deploy-gpu-bench"
TARGET_VS_PADDED_EAGER = 2.0
TARGET_SHARE_OF_BF16_CEILING = 0.30
TARGET_LATENCY_P50_MS = 2.0
TARGET_AGREEMENT = 0.995
CEILING_SECONDS_PER_SHAPE = 1.0


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries the markdown report."""
    print(f"[gpu_bench] {message}", file=sys.stderr, flush=True)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke check.")
    parser.add_argument("--precision", default=None,
                        help="Speed runs' precision (default: fp16 on a GPU; on a CPU bf16 where it has it, else fp32).")
    parser.add_argument("--model", choices=("base", "demo"), default="base",
                        help="Speed model: a random BERT-base classifier (the targets' size) or the small demo model.")
    parser.add_argument("--shared-data", type=Path, default=DEFAULT_SHARED_DATA,
                        help="Folder with chnsenticorp/dev.tsv and the vocab (default: $ROBERTA_DEPLOY_SHARED_DATA "
                             "or ../shared/data).")
    parser.add_argument("--data", type=Path, default=None, help="Texts to classify (default: ChnSentiCorp dev).")
    parser.add_argument("--limit", type=int, default=None, help="Use only the first N texts (quick runs).")
    parser.add_argument("--batch-size", type=int, default=256, help="Rows per batch for both sides.")
    parser.add_argument("--seconds", type=float, default=10.0, help="Minimum timed seconds per throughput figure.")
    parser.add_argument("--latency-seconds", type=float, default=5.0, help="Timed seconds of batch-1 calls.")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="Cache for checkpoints, exports, bundles.")
    parser.add_argument("--output", type=Path, default=None, help="JSON file for every figure.")
    parser.add_argument("--markdown", type=Path, default=None, help="Also write the markdown report here.")
    arguments = parser.parse_args(argv)
    if arguments.limit is not None and arguments.limit < 1 or arguments.batch_size < 1:
        parser.error("--limit and --batch-size must be at least 1")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    from transformers.utils import logging as transformers_logging

    from roberta_deploy.backends import get_backend
    from roberta_deploy.backends.base import canonical_device, device_kind
    from roberta_deploy.data import read_dataset

    transformers_logging.disable_progress_bar()  # a script may: the baseline's loading bar would only be noise
    device = canonical_device(arguments.device)
    backend = get_backend("torch")
    backend.check_device(device)
    offered = backend.precisions(device)
    precision = arguments.precision or ("fp16" if device_kind(device) == "cuda"
                                        else "bf16" if "bf16" in offered else "fp32")
    data = arguments.data or arguments.shared_data / "chnsenticorp" / "dev.tsv"
    texts = read_dataset(data).texts[:arguments.limit] if arguments.limit else read_dataset(data).texts
    workdir = arguments.workdir
    log(f"{len(texts)} texts from {data}; speed runs at {precision} on {device}")

    checkpoint, export = speed_model(arguments, workdir, texts)
    bundle = torch_bundle(export, workdir / f"bundle-{arguments.model}-torch-{device_kind(device)}-{precision}"
                          f"-b{arguments.batch_size}", precision, device, arguments.batch_size, data)
    ours = measure_bundle_throughput(bundle, texts, arguments.batch_size, arguments.seconds)
    eager = measure_padded_eager(checkpoint, texts, arguments.batch_size, arguments.seconds, precision, device)
    ceiling = off_main_thread(measure_bf16_ceiling, device)
    useful_gflop = float(sequence_flops(checkpoint, ours.pop("token_lengths")).sum() / 1e9)
    latency = measure_latency(bundle, arguments.latency_seconds)
    agreement = measure_agreement(workdir, data, arguments.limit, device, offered)

    ours_speed = ours["texts_per_second"]
    useful_gflops = useful_gflop * ours_speed / len(texts)
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "device": ours["device"],
        "machine": machine_description(), "data": str(data), "texts": len(texts), "model": arguments.model,
        "precision": precision, "batch_size": arguments.batch_size, "roberta_deploy": ours, "pytorch_padded": eager,
        "ratio_vs_padded_eager": ours_speed / eager["texts_per_second"],
        "label_agreement_with_padded_eager": float(np.mean(np.asarray(ours.pop("labels")) ==
                                                           np.asarray(eager.pop("labels")))),
        "useful_gflop_per_pass": useful_gflop, "useful_gflops": useful_gflops, "bf16_ceiling": ceiling,
        "share_of_bf16_ceiling": useful_gflops / ceiling["gflops"], "latency": latency, "agreement": agreement,
    }
    results["targets"] = judge(results)
    markdown = render_markdown(results)
    if arguments.output:
        atomic_write_json(arguments.output, results)
    if arguments.markdown:
        atomic_write_text(arguments.markdown, markdown)
    print(markdown)
    return 0


def speed_model(arguments: argparse.Namespace, workdir: Path, texts: list[str]) -> tuple[Path, Path]:
    """(checkpoint folder, export folder) of the model the speed figures are measured on."""
    if arguments.model == "demo":
        return DEMO_MODEL_DIR, demo_export(workdir)
    artifacts.VOCAB_PATH = arguments.shared_data / "vocab" / "bert-base-chinese-vocab.txt"
    paths = ArtifactPaths(workdir)
    prepare_checkpoint(paths, texts[:CENTRING_SAMPLES])
    prepare_export(paths, check_data=None)
    return paths.checkpoint, paths.export


def demo_export(workdir: Path) -> Path:
    from roberta_deploy.build.export import ExportOptions, export_model

    folder = workdir / "demo-export"
    if not folder.is_dir():
        log(f"exporting the demo model into {folder}")
        export_model(ExportOptions(model=str(DEMO_MODEL_DIR), output=folder, max_seq_length=MAX_SEQ_LENGTH))
    return folder


def torch_bundle(export: Path, folder: Path, precision: str, device: str, max_batch: int, data: Path) -> Path:
    """A verified torch bundle (dynamic shapes up to max_batch rows), built once and cached."""
    from roberta_deploy.build.bundle import BuildOptions, build_engine

    if not folder.is_dir():
        log(f"building torch {precision} on {device} into {folder}")
        build_engine(BuildOptions(export_dir=export, output=folder, backend="torch", precision=precision,
                                  device=device, max_batch=max_batch, calibration_data=data))
    return folder


def off_main_thread(function, *arguments):
    """function(*arguments) on a worker thread, as the bundle's model calls run (InferenceQueue's worker):
    on a busy CPU, the main thread's OpenMP pool ran the demo model's batch 6x slower than a worker
    thread's (525 vs 85 ms, 2 cores at load 8), which would bias the baseline and the ceiling."""
    with concurrent.futures.ThreadPoolExecutor(1) as worker:
        return worker.submit(function, *arguments).result()


def timed_passes(run_once, seconds: float) -> tuple[int, float]:
    """Call run_once() once untimed (graphs, caches), then until `seconds` have passed: (passes, elapsed)."""
    run_once()
    passes, started = 0, time.perf_counter()
    while passes == 0 or time.perf_counter() - started < seconds:
        run_once()
        passes += 1
    return passes, time.perf_counter() - started


def measure_bundle_throughput(bundle: Path, texts: list[str], batch_size: int, seconds: float) -> dict:
    from roberta_deploy.runtime.engine import THROUGHPUT, Engine

    log("roberta-deploy torch bundle: bucketed batches from raw texts")
    engine = Engine.load(bundle, hint=THROUGHPUT)
    results = {}

    def run_once():
        results["labels"] = engine.predict(texts, batch_size=batch_size).labels.tolist()

    passes, elapsed = timed_passes(run_once, seconds)
    return {"texts_per_second": passes * len(texts) / elapsed, "passes": passes, "seconds": elapsed,
            "device": engine.device_info(), "labels": results["labels"],
            "token_lengths": engine.encoder.encode(texts).lengths.tolist()}


def measure_padded_eager(checkpoint: Path, texts: list[str], batch_size: int, seconds: float, precision: str,
                         device: str) -> dict:
    """The baseline: transformers as most people run it, every text padded to 128, fixed-size batches."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    log(f"PyTorch eager {precision}: padded to {MAX_SEQ_LENGTH}, batch {batch_size}")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).to(device=device, dtype=dtype).eval()
    results = {}

    def run_once():
        labels = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                inputs = tokenizer(texts[start:start + batch_size], padding="max_length", truncation=True,
                                   max_length=MAX_SEQ_LENGTH, return_tensors="pt").to(device)
                labels.extend(model(**inputs).logits.float().argmax(-1).cpu().tolist())
        results["labels"] = labels

    passes, elapsed = off_main_thread(timed_passes, run_once, seconds)
    return {"texts_per_second": passes * len(texts) / elapsed, "passes": passes, "seconds": elapsed,
            "attention": model.config._attn_implementation, "labels": results["labels"]}


def measure_bf16_ceiling(device: str) -> dict:
    """Best bf16 GFLOP/s of torch.matmul at BERT-base GEMM shapes (rows = a batch of 256 x 128 tokens on a
    GPU, 32 x 128 on a CPU, as bench/flops.py does there)."""
    import torch

    rows = 256 * MAX_SEQ_LENGTH if device.startswith("cuda") else 32 * MAX_SEQ_LENGTH
    shapes = ((rows, 768, 768), (rows, 768, 3072), (rows, 3072, 768))
    generator = torch.Generator().manual_seed(0)
    per_shape = {}
    for left_rows, inner, columns in shapes:
        left = torch.randn(left_rows, inner, generator=generator).to(device=device, dtype=torch.bfloat16)
        right = torch.randn(inner, columns, generator=generator).to(device=device, dtype=torch.bfloat16)
        seconds = best_call_seconds(lambda: torch.matmul(left, right), device)
        per_shape[f"{left_rows}x{inner}x{columns}"] = 2.0 * left_rows * inner * columns / seconds / 1e9
    log(f"bf16 matmul ceiling: {max(per_shape.values()):.0f} GFLOP/s")
    return {"gflops": max(per_shape.values()), "per_shape": per_shape}


def best_call_seconds(call, device: str) -> float:
    import torch

    on_gpu = device.startswith("cuda")
    synchronize = torch.cuda.synchronize if on_gpu else (lambda: None)
    calls_per_sample = 10 if on_gpu else 1  # one GPU GEMM is shorter than the timer's resolution allows
    for _ in range(3):
        call()
    synchronize()
    best, deadline = float("inf"), time.perf_counter() + CEILING_SECONDS_PER_SHAPE
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(calls_per_sample):
            call()
        synchronize()
        best = min(best, (time.perf_counter() - started) / calls_per_sample)
    return best


def sequence_flops(checkpoint: Path, lengths) -> np.ndarray:
    """Useful FLOPs per sequence, from the checkpoint's config (the formula of bench/flops.py):
    2 x matmul weights x L + 4 x L^2 x hidden x layers."""
    config = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    hidden = config.get("hidden_size") or config["dim"]
    layers = config.get("num_hidden_layers") or config["n_layers"]
    intermediate = config.get("intermediate_size") or config["hidden_dim"]
    weights = layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    lengths = np.asarray(lengths, dtype=np.float64)
    return 2.0 * weights * lengths + 4.0 * lengths ** 2 * hidden * layers


def measure_latency(bundle: Path, seconds: float) -> dict:
    from roberta_deploy.jobs.perf import PerfOptions, run_benchmark

    log(f"batch-1 latency at {MAX_SEQ_LENGTH} tokens")
    report = run_benchmark(PerfOptions(bundle=bundle, batch_size=1, seq_len=MAX_SEQ_LENGTH, duration=seconds,
                                       warmup=min(1.0, seconds)))
    return {"p50_ms": report.latency_ms["median"], "p99_ms": report.latency_ms["p99"], "calls": report.calls}


def measure_agreement(workdir: Path, data: Path, limit: int | None, device: str, offered: tuple[str, ...]) -> dict:
    """Label agreement of each lower precision with fp32 on the demo model, every text of `data`."""
    from roberta_deploy.backends.base import device_kind
    from roberta_deploy.data import read_dataset
    from roberta_deploy.runtime.engine import THROUGHPUT, Engine

    texts = read_dataset(data).texts[:limit] if limit else read_dataset(data).texts
    export = demo_export(workdir)
    labels, agreement = {}, {}
    for precision in ("fp32",) + tuple(name for name in ("fp16", "bf16") if name in offered):
        bundle = torch_bundle(export, workdir / f"bundle-demo-torch-{device_kind(device)}-{precision}-b64",
                              precision, device, 64, data)
        log(f"demo model {precision}: classifying {len(texts)} texts")
        labels[precision] = Engine.load(bundle, hint=THROUGHPUT).predict(texts).labels
        if precision != "fp32":
            agreement[precision] = float((labels[precision] == labels["fp32"]).mean())
    return agreement


def judge(results: dict) -> list[dict]:
    rows = [(f"throughput >= 2x PyTorch eager padded to 128 (batch {results['batch_size']}; the target's is 256)",
             results["ratio_vs_padded_eager"],
             results["ratio_vs_padded_eager"] >= TARGET_VS_PADDED_EAGER, "{:.2f}x"),
            ("useful GFLOP/s >= 30% of the bf16 matmul ceiling", results["share_of_bf16_ceiling"],
             results["share_of_bf16_ceiling"] >= TARGET_SHARE_OF_BF16_CEILING, "{:.1%}"),
            ("batch-1 p50 at 128 tokens <= 2 ms", results["latency"]["p50_ms"],
             results["latency"]["p50_ms"] <= TARGET_LATENCY_P50_MS, "{:.2f} ms")]
    rows += [(f"{precision} agreement with fp32 labels >= 99.5% (demo model)", value, value >= TARGET_AGREEMENT,
              "{:.2%}") for precision, value in results["agreement"].items()]
    return [{"target": name, "value": value, "met": bool(met), "shown": shown.format(value)}
            for name, value, met, shown in rows]


def render_markdown(results: dict) -> str:
    device = results["device"]
    where = f"{device['device']} ({device.get('name')}" + (
        f", {device['memory_bytes'] / 2**30:.0f} GiB)" if "memory_bytes" in device else ")")
    lines = [f"# GPU targets (issue 14): {where}", "",
             f"`{results['command']}`, {results['machine']['date']}, {results['texts']} texts from {results['data']}, "
             f"speed model {results['model']} at {results['precision']}, batch {results['batch_size']}.", ""]
    if not device["device"].startswith("cuda"):
        lines += ["**CPU smoke run: the targets are stated for the GPU; these figures only show the script works.**", ""]
    ours, eager = results["roberta_deploy"], results["pytorch_padded"]
    cuda_graphs = device.get("cuda_graphs")
    lines += ["| measurement | value |", "|---|---|",
              f"| roberta-deploy torch bundle, bucketed{' + CUDA graphs' if cuda_graphs else ''} | "
              f"{ours['texts_per_second']:.1f} texts/s |",
              f"| PyTorch eager ({eager['attention']}), padded to {MAX_SEQ_LENGTH} | {eager['texts_per_second']:.1f} texts/s |",
              f"| label agreement between the two | {results['label_agreement_with_padded_eager']:.2%} |",
              f"| useful GFLOP/s (unpadded tokens) | {results['useful_gflops']:.0f} |",
              f"| bf16 matmul ceiling measured here | {results['bf16_ceiling']['gflops']:.0f} GFLOP/s |",
              f"| batch-1 p50 / p99 at {MAX_SEQ_LENGTH} tokens | {results['latency']['p50_ms']:.2f} / "
              f"{results['latency']['p99_ms']:.2f} ms |"]
    if cuda_graphs:
        lines.append(f"| CUDA graphs captured / shapes run eagerly | {cuda_graphs['captured']} / "
                     f"{cuda_graphs['eager_shapes']} |")
    lines += ["", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {row['target']} | {row['shown']} | {'yes' if row['met'] else 'no'} |" for row in results["targets"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
