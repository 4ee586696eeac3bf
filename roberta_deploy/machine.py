"""The machine this process runs on: the CPU model and the instruction-set flags that decide low-precision
speed, the cores it may use and the memory it could still take.

A bundle records the CPU it was built and verified on; loading it where some of those flags are
missing still works (the engines fall back to slower kernels) but deserves a warning. Reads
/proc and /sys only: no heavy imports.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# Flags that change which kernels the engines pick: AVX2/FMA (fp32 baseline), AVX-512, VNNI (int8 dot
# products), AVX512-BF16 and AMX (bf16/int8 matrix units), AVX512-FP16 (fp16 arithmetic).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
               "amx_tile", "amx_bf16", "amx_int8")


@functools.lru_cache(maxsize=1)
def this_cpu() -> dict:
    """{"model": "Intel(R) Xeon(R) ...", "flags": [the SPEED_FLAGS it has]} of this machine."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.processor(), platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: the model only
        pass
    return {"model": model, "flags": [flag for flag in SPEED_FLAGS if flag in flags]}


def missing_speed_flags(recorded: dict, current: dict | None = None) -> list[str]:
    """Flags the recorded CPU had that this one lacks."""
    current = current or this_cpu()
    return [flag for flag in recorded.get("flags", []) if flag not in current["flags"]]


def cpu_mismatch_warning(manifest: dict, current: dict | None = None) -> str | None:
    """One line when a bundle was verified on a CPU with speed flags this one lacks; else None."""
    recorded = (manifest.get("verified_on") or {}).get("cpu")
    if not recorded:
        return None  # bundles from before the CPU was recorded
    current = current or this_cpu()
    missing = missing_speed_flags(recorded, current)
    if not missing:
        return None
    consequence = "it runs, but slower kernels may be used and speed will differ from the verification"
    if manifest.get("precision") in ("bf16", "fp16") and not {"avx512_bf16", "amx_bf16", "avx512_fp16"} & set(
            current["flags"]):
        consequence = (f"it runs, but {manifest['precision']} is computed in fp32 here (slower; logits may differ "
                       "slightly from the verification)")
    return (f"bundle was verified on {recorded.get('model', 'another CPU')} with {', '.join(missing)}, which this "
            f"CPU ({current['model']}) lacks: {consequence}")


def available_cores() -> int:
    """Cores this process may use (respects affinity masks and containers)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def available_memory_bytes() -> int | None:
    """Memory this process could still take: the kernel's MemAvailable, or the cgroup's room if less."""
    candidates = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            candidates.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(candidates) if candidates else None
