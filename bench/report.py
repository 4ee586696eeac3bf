"""Turning raw measurements into the comparison: derived figures, the targets, and the markdown table."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np

from roberta_deploy.manifest import library_versions

from artifacts import MAX_SEQ_LENGTH
from flops import sequence_flops
from runners import CONFIGURATIONS, REFERENCE_CONFIGURATION

# Targets of issue 4, judged on roberta-deploy's fastest configuration in one run.
TARGET_VS_BEST_PEER = 1.5
TARGET_VS_PYTORCH_FP32 = 12.0
TARGET_LATENCY_P50_MS = 11.0
TARGET_INT8_PEAK_RSS_MB = 1000.0  # 1 GB, in units of 10^6 bytes
CPU_FLAGS_OF_INTEREST = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def summarize(results: dict, ceilings: dict, useful_lengths: np.ndarray) -> dict:
    """Per configuration: reviews/s, ratio to PyTorch fp32, latency, memory, agreement, useful GFLOP/s."""
    useful_flops = float(sequence_flops(useful_lengths).sum())
    reference = results.get(REFERENCE_CONFIGURATION, {})
    reference_logits = np.asarray(reference["logits"]) if "logits" in reference else None
    reference_speed = reference["texts"] / reference["throughput_seconds"] if "logits" in reference else None
    rows = {}
    for name, result in results.items():
        if "error" in result:
            rows[name] = {"error": result["error"]}
            continue
        speed = result["texts"] / result["throughput_seconds"]
        gflops = useful_flops / result["throughput_seconds"] / 1e9
        ceiling = ceilings.get(CONFIGURATIONS[name].precision, {}).get("gflops")
        rows[name] = {
            "reviews_per_second": speed,
            "vs_pytorch_fp32": speed / reference_speed if reference_speed else None,
            "latency_p50_ms": result["latency_ms"]["p50"], "latency_p99_ms": result["latency_ms"]["p99"],
            "latency_samples": result["latency_ms"]["iterations"],
            "model_only_latency_p50_ms": result["model_only_latency_ms"]["p50"],
            "peak_rss_mb": result["peak_rss_mb"],
            **agreement_with_reference(np.asarray(result["logits"]), reference_logits),
            "useful_gflops_per_second": gflops, "ceiling_gflops_per_second": ceiling,
            "share_of_ceiling": gflops / ceiling if ceiling else None,
            "others_cpu_share": result["others_cpu_share"],
            "others_cpu_share_during_latency": result["others_cpu_share_during_latency"],
        }
    return rows


def agreement_with_reference(logits: np.ndarray, reference: np.ndarray | None) -> dict:
    """logits, reference: float (n, 2). Label agreement with fp32, and the mean shift of the margin
    (logit 1 - logit 0) over the margin's spread between texts: how close an engine came to flipping."""
    if reference is None:
        return {"agreement_with_pytorch_fp32": None, "max_abs_logit_diff": None, "margin_error_over_spread": None}
    margin, reference_margin = logits[:, 1] - logits[:, 0], reference[:, 1] - reference[:, 0]
    spread = float(reference_margin.std())
    return {"agreement_with_pytorch_fp32": float((logits.argmax(1) == reference.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(logits - reference).max()),
            "margin_error_over_spread": float(np.abs(margin - reference_margin).mean()) / spread if spread else None}


def evaluate_targets(rows: dict) -> tuple[list[dict], str | None]:
    """Each target with its measured value and whether it is met, and the configuration judged."""
    measured = {name: row for name, row in rows.items() if "error" not in row}
    ours = [name for name in measured if CONFIGURATIONS[name].group == "roberta-deploy"]
    peers = [name for name in measured if CONFIGURATIONS[name].group == "peer"]
    best = max(ours, key=lambda name: measured[name]["reviews_per_second"], default=None)
    if best is None:
        return [], None
    targets = []
    speed = measured[best]["reviews_per_second"]
    if peers:
        best_peer = max(peers, key=lambda name: measured[name]["reviews_per_second"])
        ratio = speed / measured[best_peer]["reviews_per_second"]
        targets.append({"target": f"throughput >= {TARGET_VS_BEST_PEER}x the best peer ({best_peer})",
                        "measured": f"{ratio:.2f}x", "met": ratio >= TARGET_VS_BEST_PEER})
    if REFERENCE_CONFIGURATION in measured:
        ratio = measured[best]["vs_pytorch_fp32"]
        targets.append({"target": f"throughput >= {TARGET_VS_PYTORCH_FP32:g}x PyTorch eager fp32",
                        "measured": f"{ratio:.2f}x", "met": ratio >= TARGET_VS_PYTORCH_FP32})
    latency = measured[best]["latency_p50_ms"]
    targets.append({"target": f"batch-1 p50 latency of a 128-token review < {TARGET_LATENCY_P50_MS:g} ms",
                    "measured": f"{latency:.1f} ms", "met": latency < TARGET_LATENCY_P50_MS})
    if "roberta-deploy-int8" in measured:
        memory = measured["roberta-deploy-int8"]["peak_rss_mb"]
        targets.append({"target": "int8 engine peak RSS serving batch 32 < 1 GB",
                        "measured": f"{memory:.0f} MB", "met": memory < TARGET_INT8_PEAK_RSS_MB})
    return targets, best


def write_report(report: dict, output: Path, markdown_path: Path | None, render) -> str:
    """The JSON report at `output` and its markdown (`render(report)`) at `markdown_path` if given, each written
    whole or not at all; returns the markdown for printing."""
    from roberta_deploy.atomic import atomic_write_text

    atomic_write_text(output, json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    markdown = render(json.loads(json.dumps(report, default=str)))  # as a reader of the JSON sees it
    if markdown_path:
        atomic_write_text(markdown_path, markdown)
    return markdown


def machine_description() -> dict:
    """CPU model and the flags that decide int8/bf16 speed, library versions, package revision, date."""
    cpu_model, flags = platform.processor(), set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and cpu_model in ("", "x86_64"):
            cpu_model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    versions = library_versions()  # the same list every bundle manifest records
    return {"cpu_model": cpu_model, "cpus": os.cpu_count(), "cores_available": len(os.sched_getaffinity(0)),
            "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST},
            "python": platform.python_version(), "libraries": versions, "roberta_deploy_revision": _revision(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _revision() -> str | None:
    """The package's git commit, marked "+changes" when its files differ from it (read-only git calls)."""
    import roberta_deploy

    repository = Path(roberta_deploy.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repository), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        changes = subprocess.run(["git", "-C", str(repository), "status", "--porcelain", "--", "roberta_deploy"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changes else "")


def render_markdown(report: dict) -> str:
    dataset, machine = report["dataset"], report["machine"]
    lines = [
        f"Data: {dataset['path']} ({dataset['texts']} texts, {dataset['mean_useful_tokens']:.1f} useful tokens "
        f"per text after truncation at {MAX_SEQ_LENGTH}; {dataset['truncated_share']:.1%} truncated). "
        f"Padding to {MAX_SEQ_LENGTH} computes {dataset['padded_to_max_over_useful']:.2f}x the useful tokens; "
        f"roberta-deploy's bucketing computes {dataset['bucketed_over_useful']:.2f}x.",
        f"Machine: {machine['cpu_model']}, {machine['cores_available']} cores, {report['threads']} threads per "
        "engine; " + ", ".join(f"{flag} {'yes' if present else 'no'}" for flag, present in machine["cpu_flags"].items())
        + f". Load average before/after the run: {report['load_average_before'][0]:.2f} / "
        f"{report['load_average_after'][0]:.2f}.",
        "Matmul ceilings measured in this run (torch GEMMs at BERT shapes, 2 threads): " + ", ".join(
            f"{precision} {value['gflops']:.0f} GFLOP/s" for precision, value in report["ceilings"].items()) + ".",
        "",
        "| configuration | how it runs | reviews/s | x PyTorch fp32 | b1 p50 ms | b1 p99 ms | b1 model-only p50 ms "
        "| peak RSS MB | agreement w/ fp32 | margin error / spread | useful GFLOP/s | % of ceiling "
        "| CPU used by others (throughput / latency) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["rows"].items():
        how = CONFIGURATIONS[name].how
        if "error" in row:
            lines.append(f"| {name} | {how} | failed: {row['error']} |" + "  |" * 10)
            continue
        lines.append(
            f"| {name} | {how} | {row['reviews_per_second']:.1f} | {_format(row['vs_pytorch_fp32'], '{:.2f}x')} "
            f"| {row['latency_p50_ms']:.1f} | {row['latency_p99_ms']:.1f} | {row['model_only_latency_p50_ms']:.1f} "
            f"| {row['peak_rss_mb']:.0f} | {_format(row['agreement_with_pytorch_fp32'], '{:.1%}')} "
            f"| {_format(row['margin_error_over_spread'], '{:.3f}')} "
            f"| {row['useful_gflops_per_second']:.0f} | {_format(row['share_of_ceiling'], '{:.1%}')} "
            f"({CONFIGURATIONS[name].precision}) | {row['others_cpu_share']:.0%} / "
            f"{row['others_cpu_share_during_latency']:.0%} |")
    lines += ["", f"Targets, judged on roberta-deploy's fastest configuration here ({report['best']}):", ""]
    if dataset["limit"]:
        lines += [f"(A --limit {dataset['limit']} development run: static-shape peers pad the last batch to 32 "
                  "rows and fixed costs weigh more, so these ratios do not stand for the full data set.)", ""]
    for target in report["targets"]:
        lines.append(f"- {'MET' if target['met'] else 'MISSED'}: {target['target']} (measured {target['measured']})")
    return "\n".join(lines) + "\n"


def _format(value, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)
