"""An in-process server over the real Batcher and the fake engine (no weights), on a free loopback port,
for the app and loadtest tests."""

from __future__ import annotations

import threading

import numpy as np
from fake_engine import FakeEngine
from serve_client import call, wait_until

from roberta_deploy.serve.options import BatchingOptions, BundleSpec, Limits, ServeOptions
from roberta_deploy.serve.server import Server, bind, served_model

KEY = "test-key-123"


class ServedFakeEngine(FakeEngine):
    """The fake engine plus what /info and /v2/models/NAME read."""

    backend = "fake"
    precision = "fp32"
    manifest = {"source_model": "fake", "source_model_sha256": "0" * 64}


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class RunningServer:
    def __init__(self, names=("fake",), *, contexts=2, gate=None, api_key=None, limits=Limits(), max_wait_ms=2.0,
                 grpc_port=None):
        self.engines = {name: ServedFakeEngine(contexts=contexts) for name in names}
        for engine in self.engines.values():
            engine.gate = gate
        self.gate = gate
        options = ServeOptions(bundles=tuple(BundleSpec(name, path=None) for name in names), api_key=api_key,
                               limits=limits, batching=BatchingOptions(max_wait_ms=max_wait_ms),
                               grpc_port=grpc_port)
        self.events: list[str] = []
        self.server = Server(options, on_event=self.events.append,
                             open_model=lambda spec, opts: served_model(spec.name, self.engines[spec.name], opts))
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, args=(sock,), daemon=True)
        self.thread.start()

    @property
    def engine(self):
        return next(iter(self.engines.values()))

    def wait_ready(self, headers=None):
        wait_until(lambda: call(self.port, "GET", "/health", headers=headers)[0] == 200, "the server is ready")

    def stop(self):
        if self.gate is not None:
            self.gate.set()
        self.server.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop"
