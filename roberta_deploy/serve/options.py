"""What `roberta-deploy serve` was asked to do: the bundles to serve and the limits that protect the server."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

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
            if value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}", f"pass a positive {flag}")
        if self.batching.max_wait_ms < 0:
            raise UsageError(f"--max-wait-ms must be 0 or more, got {self.batching.max_wait_ms:g}",
                             "pass --max-wait-ms 0 to run each batch as soon as a context is free")
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
