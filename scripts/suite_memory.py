"""Run a command (by default the README's test command) and sample the memory of its whole process tree.

    python scripts/suite_memory.py [--interval 1] [-- python -m pytest -q ...]

Prints the peak of the summed PSS (proportional set size: shared pages split between the processes that map
them, so the sum does not count a library twice) and of the summed RSS, with the moment each peak was seen
and the processes that made it up. Ray's workers and the servers the tests start are children, so they count."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import psutil


def tree_memory(root: psutil.Process) -> tuple[int, int, list[tuple[int, str]]]:
    pss = rss = 0
    parts = []
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
            name = " ".join(process.cmdline()[:4])[:120]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        pss += info.pss
        rss += info.rss
        parts.append((info.pss, name))
    return pss, rss, sorted(parts, reverse=True)[:8]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    arguments = parser.parse_args()
    command = [part for part in arguments.command if part != "--"] or [sys.executable, "-m", "pytest", "-q"]
    started = time.monotonic()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak_pss = peak_rss = 0
    peak_parts: list = []
    peak_at = 0.0
    while child.poll() is None:
        pss, rss, parts = tree_memory(root)
        if pss > peak_pss:
            peak_pss, peak_parts, peak_at = pss, parts, time.monotonic() - started
        peak_rss = max(peak_rss, rss)
        time.sleep(arguments.interval)
    print(f"exit {child.returncode} after {time.monotonic() - started:.0f} s; peak PSS of the process tree "
          f"{peak_pss / 2**30:.2f} GiB at {peak_at:.0f} s (peak summed RSS {peak_rss / 2**30:.2f} GiB)", file=sys.stderr)
    for pss, name in peak_parts:
        print(f"  {pss / 2**20:8.0f} MiB  {name}", file=sys.stderr)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
