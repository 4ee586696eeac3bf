"""What `roberta-deploy serve` was asked to do: the bundles to serve and the limits that protect the server."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..flags import COUNT, NON_NEGATIVE, POSITIVE
from ..errors import UsageError

API_KEY_ENV = "ROBERTA_DEPLOY_API_KEY"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class BundleSpec:
    name: str  # the model's name in URLs (/v2/models/NAME, /models/NAME/predict)
    path: Path


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each limit names the flag that raises it in its error."""

    max_concurrent_requests: int = 512  # requests in flight; past it 429 at once, never an unbounded queue
    max_client_batch_size: int = 32  # texts per request
    payload_limit: int = 2_000_000  # request body bytes
    max_input_chars: int = 20_000  # characters per text, checked before tokenizing
    auto_truncate: bool = True  # cut texts past the bundle's max_seq_length unless a request says otherwise


@dataclass(frozen=True)
class ConnectionLimits:
    """Time and count limits on connections, so that a client that sends slowly or not at all holds no more
    than a socket for a bounded time (serve/connections.py enforces them; docs/serving.md says which part does)."""

    header_timeout_s: float = 30.0  # from a connection's first byte (or accept) to its request's last header, as hyper's
    body_timeout_s: float = 60.0  # from the last header to the body's last byte (a whole-body deadline: a drip of
    #                               one byte a second never resets it), as nginx's client_body_timeout
    keep_alive_timeout_s: float = 5.0  # idle time between requests on a kept-alive connection (uvicorn's default)
    max_connections: int = 1024  # open connections; past it a new one is answered 503 and closed at once
    drain_timeout_s: float = 30.0  # after SIGTERM, how long accepted requests may take before they are cut off


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_tokens: int | None = None  # padded tokens per batch (rows x padded length); None: the batcher's default
    max_wait_ms: float = 2.0  # how long a partial batch waits for more requests
    contexts: int | None = None  # concurrent engine contexts; None: one per core for throughput


@dataclass(frozen=True)
class ServeOptions:
    bundles: tuple[BundleSpec, ...]
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    cpu_workers: int | None = None  # threads that parse, tokenize and encode off the event loop; None: one per core
    grpc_port: int | None = None  # the gRPC Open Inference Protocol's port (0: any free one); None: no gRPC

    def __post_init__(self):
        if not self.bundles:
            raise UsageError("no bundle to serve", "pass --bundle PATH (or --bundle NAME=PATH, several times)")
        names = [spec.name for spec in self.bundles]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise UsageError(f"model name {duplicates[0]!r} is given to two bundles",
                             "give each --bundle its own NAME=PATH")
        for flag, value in (("--max-concurrent-requests", self.limits.max_concurrent_requests),
                            ("--max-client-batch-size", self.limits.max_client_batch_size),
                            ("--payload-limit", self.limits.payload_limit),
                            ("--max-input-chars", self.limits.max_input_chars)):
            COUNT.require(value, flag)
        COUNT.require(self.connections.max_connections, "--max-connections")
        if self.cpu_workers is not None:
            COUNT.require(self.cpu_workers, "--cpu-workers")
        for flag, seconds in (("--header-timeout", self.connections.header_timeout_s),
                              ("--body-timeout", self.connections.body_timeout_s),
                              ("--keep-alive-timeout", self.connections.keep_alive_timeout_s),
                              ("--drain-timeout", self.connections.drain_timeout_s)):
            POSITIVE.require(seconds, flag)
        NON_NEGATIVE.require(self.batching.max_wait_ms, "--max-wait-ms")
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port} is not a TCP port", "pass a port from 1 to 65535 (0: any free port)")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise UsageError(f"--grpc-port {self.grpc_port} is not a TCP port",
                             "pass a port from 1 to 65535 (0: any free port), or leave --grpc-port off")
        if self.grpc_port is not None and self.grpc_port != 0 and self.grpc_port == self.port:
            raise UsageError(f"--grpc-port {self.grpc_port} is also --port", "give gRPC a port of its own, e.g. 8081")


def parse_bundle_specs(values: list[str], default_name: str | None = None) -> tuple[BundleSpec, ...]:
    """`--bundle PATH` or `--bundle NAME=PATH`, several times. A bare PATH is named by --name or its folder."""
    specs = []
    for value in values:
        name, separator, path = value.partition("=")
        if not separator:
            path = value
            name = default_name if default_name and len(values) == 1 else Path(value.rstrip("/")).name
        if not MODEL_NAME_PATTERN.match(name or ""):
            raise UsageError(f"model name {name!r} (from --bundle {value}) is not usable in a URL",
                             "use letters, digits, '.', '_' or '-', as in --bundle sentiment=PATH")
        specs.append(BundleSpec(name=name, path=Path(path)))
    return tuple(specs)


def api_key_from(flag_value: str | None) -> str | None:
    """--api-key wins; otherwise the environment variable; an empty value means no key."""
    key = flag_value if flag_value is not None else os.environ.get(API_KEY_ENV)
    return key or None
