"""The Batcher: one long-lived owner of an engine's contexts, one worker thread per context.

Two ways in, one queue. Online, `submit()` hands over a request as it arrives and gets a future (online.py).
Offline, `run()` plans a whole dataset into length buckets and queues every batch (offline.py). The
workers, their lifecycle and the queue they share are in workers.py. Whoever runs work (a job, the server,
the pipeline) creates the Batcher, starts it and closes it; the engine never holds one.
"""

from __future__ import annotations

from ..errors import UsageError
from .batching import default_token_budget, online_lengths
from .offline import OfflineBatching
from .online import OnlineBatching
from .workers import EngineSurface

DEFAULT_MAX_QUEUED_TEXTS = 4096


class Batcher(OnlineBatching, OfflineBatching):
    """Owns `contexts` contexts of one engine and a worker thread for each.

    Use as a context manager, or call start() and close(). Thread-safe: any thread may submit or run.
    Validation errors (empty text; too long with truncate=False) are raised by submit() itself; engine
    failures are set on the futures of the requests in the failing batch only (BackendError, or the
    engine's typed error).
    """

    def __init__(self, engine: EngineSurface, *, contexts: int | None = None, max_batch_tokens: int | None = None,
                 max_batch_size: int | None = None, max_wait_ms: float = 2.0,
                 max_queued_texts: int | None = None):
        profile = engine.profile
        context_count = contexts or engine.settings.contexts
        for name, value in (("contexts", context_count), ("max_batch_tokens", max_batch_tokens),
                            ("max_batch_size", max_batch_size), ("max_queued_texts", max_queued_texts)):
            if value is not None and value < 1:
                raise UsageError(f"{name} {value} must be at least 1", f"pass a positive {name}")
        if max_wait_ms < 0:
            raise UsageError(f"max_wait_ms {max_wait_ms} is negative", "pass 0 to batch only what is waiting")
        super().__init__(engine, context_count)
        self.max_batch_size = min(max_batch_size or engine.default_batch_size(), profile.max_batch)
        self.max_batch_tokens = max_batch_tokens or default_token_budget(engine.max_seq_length, self.max_batch_size,
                                                                         self.context_count, engine.run_token_limit)
        if self.max_batch_tokens < engine.max_seq_length:
            raise UsageError(f"max_batch_tokens {self.max_batch_tokens} is below max_seq_length "
                             f"{engine.max_seq_length}", f"pass at least {engine.max_seq_length}")
        self.max_wait_s = max_wait_ms / 1000
        self.max_queued_texts = max_queued_texts or DEFAULT_MAX_QUEUED_TEXTS
        self._bucket_lengths = profile.bucket_lengths()  # static engines: the compiled lengths
        # What online batches are padded to: few shapes, so the engine's per-shape caches stay bounded.
        self._online_lengths = self._bucket_lengths or online_lengths(engine.max_seq_length)


__all__ = ["Batcher", "EngineSurface"]
