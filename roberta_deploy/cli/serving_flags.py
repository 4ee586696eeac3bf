"""Serve's and Ray's flags, each group defined once and given to every command that takes it (`serve`,
`deploy`) through `with_flags`, with the checks that turn them into ServeOptions and RayOptions."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Callable, Optional, Sequence

import typer

from .. import flags
from ..errors import UsageError
from ..serve.options import (API_KEY_ENV, BatchingOptions, ConnectionLimits, Limits, ServeOptions, api_key_from,
                             parse_bundle_specs)
from .app import BATCHING, LIMITS, MODEL, RAY, SERVER

_DEFAULT_LIMITS = Limits()
_DEFAULT_CONNECTIONS = ConnectionLimits()


# Serve's flags, defined once: `serve` and `deploy` both take them (with_serve_flags) and build their
# ServeOptions from them (ServeFlags.options), so the two commands can never disagree on a flag.
SERVE_FLAGS = (
    ("host", Annotated[str, typer.Option(help="Address to listen on. 127.0.0.1 keeps the server private to this "
                                              "machine; 0.0.0.0 exposes it (set --api-key then).",
                                         rich_help_panel=SERVER)], "127.0.0.1"),
    ("port", Annotated[int, typer.Option(help="TCP port; 0 picks a free one (printed at start).",
                                         rich_help_panel=SERVER)], 8080),
    ("name", Annotated[Optional[str], typer.Option(help="Model name for a single bundle (default: the bundle "
                                                        "folder's name); used in /v2/models/NAME.",
                                                   rich_help_panel=MODEL)], None),
    ("max_batch_tokens", Annotated[Optional[int], typer.Option(
        help="Padded tokens (rows x padded length) per engine batch. Bounds memory and the latency of one "
             "batch; too small and concurrent requests cannot share a batch (default: a batch of 128-token texts "
             "split across the contexts, at most 1,024 tokens on ONNX Runtime, at least one full-length text).",
        rich_help_panel=BATCHING), flags.COUNT], None),
    ("max_wait_ms", Annotated[float, typer.Option(
        help="How long a partial batch waits for more requests. Higher merges more requests into a batch "
             "(throughput) at the cost of latency when the server is quiet.",
        rich_help_panel=BATCHING), flags.NON_NEGATIVE], 2.0),
    ("max_concurrent_requests", Annotated[int, typer.Option(
        help="Requests in flight at once; past it the server answers 429 with Retry-After at once instead of "
             "queueing without bound.", rich_help_panel=LIMITS), flags.COUNT], _DEFAULT_LIMITS.max_concurrent_requests),
    ("max_client_batch_size", Annotated[int, typer.Option(help="Texts in one request; more is answered 422.",
                                                          rich_help_panel=LIMITS), flags.COUNT],
     _DEFAULT_LIMITS.max_client_batch_size),
    ("payload_limit", Annotated[int, typer.Option(help="Bytes in one request body; more is answered 413.",
                                                  rich_help_panel=LIMITS), flags.COUNT],
     _DEFAULT_LIMITS.payload_limit),
    ("max_input_chars", Annotated[int, typer.Option(
        help="Characters in one text, checked before tokenizing; more is answered 422.",
        rich_help_panel=LIMITS), flags.COUNT],
     _DEFAULT_LIMITS.max_input_chars),
    ("auto_truncate", Annotated[bool, typer.Option(
        "--auto-truncate/--no-auto-truncate",
        help="Cut texts past the bundle's max_seq_length (as infer does) unless a /predict request sends "
             "\"truncate\": false; with --no-auto-truncate such texts are answered 422.",
        rich_help_panel=LIMITS)], True),
    ("api_key", Annotated[Optional[str], typer.Option(
        help=f"Require 'Authorization: Bearer KEY' on every route but /v2/health/live (401 otherwise). Default: "
             f"the {API_KEY_ENV} environment variable, which keeps the key out of the process list.",
        rich_help_panel=SERVER)], None),
    ("header_timeout", Annotated[float, typer.Option(
        help="Seconds a connection may take to send a request's headers, from its first byte (or its accept); "
             "then 408 and closed, so half-sent requests cannot pile up to the open-file limit.", rich_help_panel=LIMITS), flags.POSITIVE],
     _DEFAULT_CONNECTIONS.header_timeout_s),
    ("body_timeout", Annotated[float, typer.Option(
        help="Seconds a request's whole body may take to arrive; then 408 and closed. A request takes an "
             "inference slot only once its body is read.", rich_help_panel=LIMITS), flags.POSITIVE], _DEFAULT_CONNECTIONS.body_timeout_s),
    ("keep_alive_timeout", Annotated[float, typer.Option(
        help="Seconds an idle kept-alive connection stays open between requests.", rich_help_panel=LIMITS), flags.POSITIVE],
     _DEFAULT_CONNECTIONS.keep_alive_timeout_s),
    ("max_connections", Annotated[int, typer.Option(
        help="Open connections at once; past it a new one is answered 503 and closed. Kept below the open-file "
             "limit, which the server raises to fit where it may.", rich_help_panel=LIMITS), flags.COUNT], _DEFAULT_CONNECTIONS.max_connections),
    ("drain_timeout", Annotated[float, typer.Option(
        help="After SIGTERM or Ctrl-C: seconds accepted requests may take to be answered before the rest are "
             "cut off and the server exits (0).", rich_help_panel=SERVER), flags.POSITIVE], _DEFAULT_CONNECTIONS.drain_timeout_s),
    ("cpu_workers", Annotated[Optional[int], typer.Option(
        help="Threads that parse requests, tokenize texts and encode answers, off the event loop, so one large "
             "request does not stall the others (default: one per core).", rich_help_panel=BATCHING), flags.COUNT], None),
    ("contexts", Annotated[Optional[int], typer.Option(
        help="Engine contexts computing batches at once (default: one per core below 8 cores; with --ray, in "
             "each replica, one per --replica-cpus).", rich_help_panel=BATCHING), flags.COUNT], None),
    ("grpc_port", Annotated[Optional[int], typer.Option(
        help="Also serve the Open Inference Protocol v2 over gRPC (Triton's and KServe's gRPC clients) on this "
             "port, with the same models, limits and key (0 picks a free one). Off by default; not with --ray.",
        rich_help_panel=SERVER)], None),
)


class ServeFlags:
    """The values of SERVE_FLAGS one command was given; `options(bundles)` is the ServeOptions they describe."""

    def __init__(self, values: dict):
        self.values = values

    def options(self, bundles: Sequence[str]) -> ServeOptions:
        """`bundles`: --bundle values (PATH or NAME=PATH). Raises UsageError for a flag out of range."""
        flags = self.values
        return ServeOptions(
            bundles=parse_bundle_specs(list(bundles), default_name=flags["name"]), host=flags["host"],
            port=flags["port"], api_key=api_key_from(flags["api_key"]),
            limits=Limits(max_concurrent_requests=flags["max_concurrent_requests"],
                          max_client_batch_size=flags["max_client_batch_size"], payload_limit=flags["payload_limit"],
                          max_input_chars=flags["max_input_chars"], auto_truncate=flags["auto_truncate"]),
            batching=BatchingOptions(max_batch_tokens=flags["max_batch_tokens"], max_wait_ms=flags["max_wait_ms"],
                                     contexts=flags["contexts"]),
            connections=ConnectionLimits(header_timeout_s=flags["header_timeout"], body_timeout_s=flags["body_timeout"],
                                         keep_alive_timeout_s=flags["keep_alive_timeout"],
                                         max_connections=flags["max_connections"],
                                         drain_timeout_s=flags["drain_timeout"]),
            cpu_workers=flags["cpu_workers"], grpc_port=flags["grpc_port"])


def with_flags(flags: tuple, parameter: str, collect: Callable[[dict], object]) -> Callable[[Callable], Callable]:
    """A decorator giving a command one group of flags (after its own): typer sees them in the signature, and the
    command receives them as one argument, `parameter`, made by `collect(values by name)`. Stacks: the outer
    decorator's flags come last."""
    names = [name for name, _, _ in flags]

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            kwargs[parameter] = collect({name: kwargs.pop(name) for name in names})
            return command(*args, **kwargs)

        own = [argument for argument in inspect.signature(command, eval_str=True).parameters.values()
               if argument.name != parameter]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
                 for name, annotation, default in flags]
        wrapper.__signature__ = inspect.Signature(own + added)
        wrapper.__annotations__ = {argument.name: argument.annotation for argument in own + added}
        return wrapper

    return decorate


# Give a command serve's flags; it receives them as `serve_flags: ServeFlags`.
with_serve_flags = with_flags(SERVE_FLAGS, "serve_flags", ServeFlags)


# Ray's flags, defined once, as serve's: `serve`, `deploy` and `infer` take them (with_ray_flags, or for infer
# with_shared_ray_flags: those that mean something for a batch job) and check them and make their RayOptions in
# RayFlags.options. Every one but --ray defaults to None: "not given", so that a Ray flag without --ray is
# refused instead of ignored. For infer, a replica is one actor of the pool that classifies the data.
SHARED_RAY_FLAGS = (
    ("on_ray", Annotated[bool, typer.Option(
        "--ray", help="Run on Ray (pip install 'roberta-deploy[ray]'; docs/scaling.md): serve and deploy as Ray "
                      "Serve replicas across a cluster; infer as a pool of Ray Data actors; each replica or actor "
                      "with its own engine and batcher, replaced when it fails.", rich_help_panel=RAY)], False),
    ("address", Annotated[Optional[str], typer.Option(
        help="With --ray: the cluster to join, 'auto' on a cluster node or ray://HEAD:10001 from elsewhere "
             "(default: start a local Ray instance, dashboard and usage reporting off).", rich_help_panel=RAY)], None),
    ("replicas", Annotated[Optional[int], typer.Option(help="With --ray: a fixed number of replicas (default 1).",
                                                       rich_help_panel=RAY), flags.COUNT],
     None),
    ("autoscale", Annotated[Optional[str], typer.Option(
        help="With --ray: MIN:MAX replicas, added and removed as the requests in flight per replica move "
             "around --target-ongoing-requests.", rich_help_panel=RAY)], None),
    ("replica_cpus", Annotated[Optional[float], typer.Option(
        help="With --ray: CPUs Ray reserves for each replica; its engine computes on that many threads. "
             "Fewer, wider replicas cost less CPU per text than many 1-CPU ones (docs/scaling.md).",
        rich_help_panel=RAY), flags.POSITIVE], None),
    ("bundle_cache", Annotated[Optional[Path], typer.Option(
        help="With --ray: the folder on each node where replicas unpack the bundles shipped through Ray's "
             "object store (default: $ROBERTA_DEPLOY_CACHE or ~/.cache/roberta-deploy/bundles).",
        rich_help_panel=RAY)], None),
)
RAY_FLAGS = SHARED_RAY_FLAGS + (
    ("target_ongoing_requests", Annotated[Optional[float], typer.Option(
        help="With --autoscale: requests in flight per replica the autoscaler aims at. Enough to fill a "
             "replica's batches; lower scales out sooner and keeps latency down.",
        rich_help_panel=RAY), flags.POSITIVE], None),
)


class RayFlags:
    """The values of RAY_FLAGS one command was given; `options(serve_options)` checks them and says where and how
    to serve (None: not on Ray)."""

    def __init__(self, values: dict):
        self.values = values

    @property
    def on_ray(self) -> bool:
        return self.values["on_ray"]

    def options(self, serve_options: ServeOptions | None = None):
        """RayOptions with --ray, None without. Raises UsageError for a Ray flag without --ray, flags that
        contradict each other or a value out of range, and, with --ray, where ray is not installed: all before
        anything is built or started. serve_options: None for a command that serves nothing (infer)."""
        given = [f"--{name.replace('_', '-')}" for name, value in self.values.items()
                 if name != "on_ray" and value is not None]
        if not self.on_ray:
            if given:
                raise UsageError(f"{given[0]} only applies to serving on Ray", f"add --ray, or leave {given[0]} off")
            return None
        from ..serve.ray_deployment import RayOptions, import_ray, parse_autoscale

        flags = self.values
        if flags["replicas"] is not None and flags["autoscale"] is not None:
            raise UsageError("--replicas and --autoscale both set the replica count", "pass one of them")
        if serve_options is not None and serve_options.grpc_port is not None:
            raise UsageError("--grpc-port is not served on Ray (Ray Serve proxies HTTP to the replicas)",
                             "leave --grpc-port off with --ray, or serve gRPC without --ray")
        if serve_options is not None and serve_options.port == 0:
            raise UsageError("--port 0 cannot be used with --ray: every node's proxy listens on the same port",
                             "pass a port, e.g. --port 8000")
        defaults = RayOptions()
        options = RayOptions(
            address=flags["address"], replicas=flags["replicas"] if flags["replicas"] is not None else defaults.replicas,
            autoscale=parse_autoscale(flags["autoscale"]) if flags["autoscale"] is not None else None,
            replica_cpus=flags["replica_cpus"] if flags["replica_cpus"] is not None else defaults.replica_cpus,
            target_ongoing_requests=flags["target_ongoing_requests"]
            if flags.get("target_ongoing_requests") is not None else defaults.target_ongoing_requests,
            cache_dir=str(flags["bundle_cache"]) if flags["bundle_cache"] else None)
        import_ray()  # a missing ray extra is found now, not after a deploy's builds
        return options


# Give a command Ray's flags; it receives them as `ray_flags: RayFlags`.
with_ray_flags = with_flags(RAY_FLAGS, "ray_flags", RayFlags)
with_shared_ray_flags = with_flags(SHARED_RAY_FLAGS, "ray_flags", RayFlags)
