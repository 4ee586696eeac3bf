"""Triton's per-model inference statistics (counts and cumulative nanoseconds per stage), accumulated from
every answered request's `RequestTimings` and every batch the batcher computed.

Fed by `ServerMetrics` (requests from the event loop, batches from the batcher's worker threads), read by
serve/triton.py for `/v2/models/NAME/stats` and gRPC `ModelStatistics`. Stages as Triton names them:
`queue` (waiting for a batch), `compute_input` (tokenization), `compute_infer` (engine time of the batches
that held the request's rows), `compute_output` (not measured apart: its count only, 0 ns).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class InferenceStatistics:
    stages: dict[str, Duration] = field(default_factory=lambda: {stage: Duration() for stage in STAGES})
    inference_count: int = 0  # texts answered (Triton counts each element of the batch dimension)
    execution_count: int = 0  # engine batches computed
    last_inference_ms: int = 0  # wall-clock time of the last answered request, ms since the epoch
    batches: dict[int, Duration] = field(default_factory=dict)  # rows per batch -> engine time of such batches
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_result(self, result, total_s: float) -> None:
        """An answered request (`runtime.results.RequestResult`); total_s: the server's whole handling."""
        timings = result.timings
        with self._lock:
            self.stages["success"].add(total_s)
            self.stages["queue"].add(timings.queue_s)
            self.stages["compute_input"].add(timings.tokenization_s)
            self.stages["compute_infer"].add(timings.inference_s)
            self.stages["compute_output"].add(0.0)
            self.inference_count += len(result.logits)
            self.last_inference_ms = int(time.time() * 1000)

    def on_failure(self) -> None:
        """A request answered with an error (its duration is not known where errors are counted: 0 ns)."""
        with self._lock:
            self.stages["fail"].add(0.0)

    def on_batch(self, stats) -> None:
        """A batch the engine computed (`runtime.results.BatchStats`), from a worker thread."""
        with self._lock:
            self.execution_count += 1
            self.batches.setdefault(stats.rows, Duration()).add(stats.inference_s)

    def as_dict(self, name: str) -> dict:
        """One entry of Triton's `model_stats`, as its HTTP route and `ModelStatistics` RPC send it."""
        with self._lock:
            return {"name": name, "version": "1", "last_inference": self.last_inference_ms,
                    "inference_count": self.inference_count, "execution_count": self.execution_count,
                    "inference_stats": {stage: duration.as_dict() for stage, duration in self.stages.items()},
                    "batch_stats": [{"batch_size": size, "compute_input": {"count": duration.count, "ns": 0},
                                     "compute_infer": duration.as_dict(),
                                     "compute_output": {"count": duration.count, "ns": 0}}
                                    for size, duration in sorted(self.batches.items())]}
