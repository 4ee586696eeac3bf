"""One served model: a loaded engine, its long-lived batcher, and what /info and /v2/models/NAME say about it."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.batcher import Batcher
from ..runtime.engine import Engine
from ..tasks import SINGLE_LABEL, Task
from .options import Limits


@dataclass
class ServedModel:
    name: str
    engine: Engine  # (tests/fake_engine.py's FakeEngine in tests) label_names, backend, precision, max_seq_length, manifest
    batcher: Batcher  # owned here: started by the server's warm-up, closed on shutdown

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(self.engine.label_names)

    @property
    def task(self) -> Task:
        """From the bundle's manifest (a fake engine without one: single-label)."""
        return getattr(self.engine, "task", None) or Task(SINGLE_LABEL, len(self.label_names))

    @property
    def ready(self) -> bool:
        return bool(self.batcher.ready)

    @property
    def platform(self) -> str:
        return f"roberta-deploy_{self.engine.backend}"

    def info(self, limits: Limits, version: str) -> dict:
        """text-embeddings-inference's /info (a one-logit model is a `reranker`, as TEI names it), with what
        this project adds (labels, task, precision, backend)."""
        manifest = self.engine.manifest
        model_type = "reranker" if len(self.label_names) == 1 else "classifier"
        return {"model_id": self.name, "model_sha": manifest.get("source_model_sha256"),
                "source_model": manifest.get("source_model"), "task": self.task.kind,
                "text_pairs": self.task.text_pairs, "model_type": {model_type: {
                    "id2label": {str(index): label for index, label in enumerate(self.label_names)},
                    "label2id": {label: index for index, label in enumerate(self.label_names)}}},
                "labels": list(self.label_names), "backend": self.engine.backend,
                "precision": self.engine.precision, "max_input_length": self.engine.max_seq_length,
                "max_concurrent_requests": limits.max_concurrent_requests,
                "max_client_batch_size": limits.max_client_batch_size, "payload_limit": limits.payload_limit,
                "max_input_chars": limits.max_input_chars, "auto_truncate": limits.auto_truncate,
                "version": version}
