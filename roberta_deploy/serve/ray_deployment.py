"""`serve` on Ray Serve: the same Starlette app, routes, limits, auth and metrics, as a deployment of
replicas across a cluster. Ray Serve routes requests between replicas, restarts a replica whose health
check fails or whose process dies, and adds or removes replicas as load changes; each replica loads the
bundles once and owns one long-lived Batcher per bundle (our token-budget batching: nothing of Ray's
batching runs on top).

Bundles travel without a shared filesystem: the driver verifies and packs each bundle once
(bundle_cache.pack_bundle) and puts it into Ray's object store; a replica on a machine that has no
cached copy fetches it and writes it to its local cache folder, checked against the manifest's hashes
(bundle_cache.unpack_bundle). The driver owns those objects: it stays up as long as the deployment does.

ray is imported inside the functions that need it; without the `ray` extra the first call raises a
one-line UsageError naming `pip install 'roberta-deploy[ray]'`.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prometheus_client import Info

from ..errors import BackendError, UsageError
from ..runtime.engine import THROUGHPUT, Engine
from .app import ServerState, create_app
from .bundle_cache import cached_bundle, default_cache_root, pack_bundle, unpack_bundle
from .options import ServeOptions
from .server import STOP_SIGNALS, check_bundles, restore_stop_handlers, served_model

RAY_EXTRA_FIX = "pip install 'roberta-deploy[ray]'"
DEPLOYMENT_NAME = "roberta-deploy"
PROXY_LOCATIONS = ("EveryNode", "HeadOnly")
USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"


@dataclass(frozen=True)
class RayOptions:
    """Where the deployment runs and how it scales; ServeOptions says what each replica serves."""

    address: str | None = None  # None: a local Ray instance (dashboard and usage reporting off); "auto", ray://HOST:PORT
    replicas: int = 1  # fixed replica count (ignored with autoscale)
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, scaled on ongoing requests per replica
    replica_cpus: float = 1.0  # CPUs Ray reserves per replica; the replica's engine computes on that many threads
    target_ongoing_requests: float = 32.0  # autoscaling aims at this many requests in flight per replica
    # How the autoscaler reacts (Ray 2.60's defaults): requests in flight averaged over look_back_period_s; a
    # decision to add replicas holds upscale_delay_s before it is carried out, one to remove them
    # downscale_delay_s (long: a replica is slow to start and a burst soon comes back).
    look_back_period_s: float = 30.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    proxy_location: str = "EveryNode"  # an HTTP proxy on every node (HeadOnly: one, on the head)
    app_name: str = "roberta-deploy"
    health_check_period_s: float = 5.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 60.0  # how long a stopping replica may take to answer what it accepted
    cache_dir: str | None = None  # where replicas unpack bundles; default bundle_cache.default_cache_root() per node

    def __post_init__(self):
        if self.autoscale is None and self.replicas < 1:
            raise UsageError(f"--replicas must be at least 1, got {self.replicas}", "pass --replicas 1 or more")
        if self.autoscale is not None:
            low, high = self.autoscale
            if low < 0 or high < 1 or low > high:
                raise UsageError(f"--autoscale {low}:{high} is not MIN:MAX with 0 <= MIN <= MAX and MAX >= 1",
                                 "pass e.g. --autoscale 1:4")
        for flag, value in (("--replica-cpus", self.replica_cpus),
                            ("--target-ongoing-requests", self.target_ongoing_requests)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"{flag} must be a positive number, got {value}", f"pass e.g. {flag} 1")
        if self.proxy_location not in PROXY_LOCATIONS:
            raise UsageError(f"unknown proxy location {self.proxy_location!r}",
                             f"use one of {', '.join(PROXY_LOCATIONS)}")

    @property
    def cpu_threads(self) -> int:
        """Engine threads per replica: the CPUs Ray reserved for it, at least one."""
        return max(1, math.ceil(self.replica_cpus))


def parse_autoscale(value: str) -> tuple[int, int]:
    """`--autoscale MIN:MAX`."""
    low, separator, high = value.partition(":")
    try:
        if not separator:
            raise ValueError
        return int(low), int(high)
    except ValueError:
        raise UsageError(f"--autoscale {value!r} is not MIN:MAX", "pass e.g. --autoscale 1:4") from None


@dataclass(frozen=True)
class ShippedBundle:
    name: str
    digest: str  # the packed bundle's digest: a replica that has this folder cached needs nothing from the store
    ref: Any  # ray.ObjectRef of a bundle_cache.PackedBundle, owned by the driver
    path: str | None = None  # instead of the store: a folder every node has (serve/ray_app.py, a RayService)


@dataclass
class RayEndpoint:
    """A running deployment. The driver that made it keeps `bundles` alive in the object store; close() deletes
    the application (Ray lets every replica answer what it accepted first) and disconnects."""

    url: str
    app_name: str
    bundles: tuple[ShippedBundle, ...]
    started_ray: bool  # this process started the local Ray instance, so close() stops it
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray, serve = import_ray()
        try:
            serve.delete(self.app_name)  # blocks until its replicas drained and stopped
        finally:
            if self.started_ray:
                serve.shutdown()
            ray.shutdown()


def deploy(options: ServeOptions, ray_options: RayOptions,
           on_event: Callable[[str], None] = lambda message: None) -> RayEndpoint:
    """Serve `options.bundles` on Ray: connect (or start a local instance), ship the bundles, run the
    deployment and return once every replica is warm and routed to.

    SIGTERM or SIGINT at any moment of this start-up undoes it (the application deleted, a Ray this process
    started stopped) and is then raised again to the handler that was in place (the CLI's: exit 143 or 130)."""
    ray, serve = import_ray()
    check_bundles(options)
    packed_bundles = [pack_bundle(spec.path) for spec in options.bundles]  # a corrupt bundle fails before Ray starts
    with _StartUpSignals() as stop:
        started_ray = ray_options.address is None  # until _connect says otherwise: stop what ray.init started
        try:
            started_ray = _connect(ray, ray_options)
            stop.install()  # ray.init puts its own SIGTERM handler (sys.exit, a C++ abort mid-call) in place
            stop.check()
            return _ship_and_run(ray, serve, options, ray_options, packed_bundles, started_ray, on_event, stop)
        except BaseException:
            _leave_nothing_running(ray, ray_options.app_name, started_ray)
            raise


class _Stopped(Exception):
    """A stop signal came during start-up; _StartUpSignals raises it again once the start-up was undone."""

    def __init__(self, signal_number: int):
        super().__init__(signal_number)
        self.signal_number = signal_number


class _StartUpSignals:
    """SIGTERM and SIGINT only noted while Ray starts (an exception raised inside Ray's C++ callbacks comes out as
    a SystemError, or Ray's own handler ends the process mid-call); `check()` raises _Stopped between steps.
    On leaving, the previous handlers come back and a noted signal is raised to them."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "_StartUpSignals":
        self._previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        self.install()
        return self

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._note)

    def _note(self, signal_number: int, frame) -> None:
        if self.received is None:
            self.received = signal_number

    def check(self) -> None:
        if self.received is not None:
            raise _Stopped(self.received)

    def __exit__(self, error_type, error, traceback) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if self.received is not None:
            signal.raise_signal(self.received)  # the previous handler raises (the CLI's) or ends the process
        return isinstance(error, _Stopped)  # not reached when the handler raised


def _leave_nothing_running(ray, app_name: str, started_ray: bool) -> None:
    """Undo a start-up that failed or was stopped: delete the application, and stop a Ray this process started."""
    try:
        if ray.is_initialized():
            RayEndpoint(url="", app_name=app_name, bundles=(), started_ray=started_ray).close()
        elif started_ray:  # stopped inside ray.init: whatever it started of a local instance
            ray.shutdown()
    except Exception:  # best effort: the error that brought us here is the one to report
        pass


def _ship_and_run(ray, serve, options: ServeOptions, ray_options: RayOptions, packed_bundles: list,
                  started_ray: bool, on_event: Callable[[str], None], stop: _StartUpSignals) -> RayEndpoint:
    on_event(("started a local Ray instance" if started_ray else f"connected to Ray at {ray_options.address}")
             + f" ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
    shipped = []
    for spec, packed in zip(options.bundles, packed_bundles):
        shipped.append(ShippedBundle(name=spec.name, digest=packed.digest, ref=ray.put(packed)))
        on_event(f"shipped {spec.name} ({packed.size / 1e6:.1f} MB, {len(packed.files)} files) into the object store")
        stop.check()
    del packed_bundles  # the object store holds them now
    serve.start(proxy_location=ray_options.proxy_location,
                http_options={"host": options.host, "port": options.port})
    stop.check()
    deployment = serve.deployment(serve.ingress()(ReplicaServer), name=DEPLOYMENT_NAME,
                                  **deployment_settings(options, ray_options))
    scale = (f"autoscaled {ray_options.autoscale[0]}..{ray_options.autoscale[1]}" if ray_options.autoscale
             else f"{ray_options.replicas}")
    on_event(f"deploying {scale} replica(s) of {ray_options.replica_cpus:g} CPU(s) each")
    # Not blocking: the wait below looks at the stop signals between its polls.
    serve._run(deployment.bind(tuple(shipped), options, ray_options), _blocking=False, name=ray_options.app_name,
               route_prefix="/")
    _wait_until_running(serve, ray_options.app_name, stop)
    host = options.host
    url = f"http://{f'[{host}]' if ':' in host else host}:{options.port}"
    return RayEndpoint(url=url, app_name=ray_options.app_name, bundles=tuple(shipped), started_ray=started_ray)


def _wait_until_running(serve, app_name: str, stop: _StartUpSignals, poll_s: float = 0.2) -> None:
    """Until every replica of the application is warm and routed to; BackendError naming why if they failed."""
    pause = threading.Event()
    while True:
        stop.check()
        application = serve.status().applications.get(app_name)
        status = str(getattr(application, "status", "")).rsplit(".", 1)[-1]
        if status == "RUNNING":
            return
        if status == "DEPLOY_FAILED":
            reason = _replica_failure(serve, app_name) or (application.message or "").strip().splitlines()[-1:]
            raise BackendError(f"the replicas failed to start: {reason if isinstance(reason, str) else ''.join(reason)}",
                               "fix that and run again; every replica's log is under Ray's session folder "
                               "(/tmp/ray/session_latest/logs on each node)")
        pause.wait(poll_s)


def serve_until_stopped(options: ServeOptions, ray_options: RayOptions,
                        on_event: Callable[[str], None] = lambda message: None,
                        on_ready: Callable[[str], None] = lambda url: None) -> None:
    """`serve --ray`: server.serve's counterpart on Ray. Deploy, then hold the deployment (and the bundles in
    the object store) until SIGTERM or SIGINT; then delete it, which lets every replica answer what it
    accepted, and return. on_ready(url) runs once every replica is warm and routed to."""
    endpoint = deploy(options, ray_options, on_event)
    stop = threading.Event()
    # Installed after ray.init, which sets a SIGTERM handler of its own (sys.exit) in the driver.
    previous = {sig: signal.signal(sig, lambda sig, frame: stop.set()) for sig in STOP_SIGNALS}
    try:
        on_event(f"ready: {', '.join(spec.name for spec in options.bundles)} at {endpoint.url}")
        on_ready(endpoint.url)
        while not stop.wait(1.0):  # a timed wait: signal handlers run between waits
            pass
        on_event("stopping: Ray finishes every accepted request on each replica, then stops it")
    finally:
        try:
            endpoint.close()
        finally:
            restore_stop_handlers(previous, stopped_by_signal=stop.is_set())
    on_event("stopped: every accepted request was answered")


def deployment_settings(options: ServeOptions, ray_options: RayOptions) -> dict:
    """serve.deployment's options. A replica takes as many requests as `serve` does in one process (Ray's
    default of 5 would starve the batcher); past that, Ray's router queues a bounded number and answers 503."""
    limit = options.limits.max_concurrent_requests
    settings = dict(ray_actor_options={"num_cpus": ray_options.replica_cpus},
                    max_ongoing_requests=limit, max_queued_requests=limit,
                    health_check_period_s=ray_options.health_check_period_s,
                    health_check_timeout_s=ray_options.health_check_timeout_s,
                    graceful_shutdown_timeout_s=ray_options.graceful_shutdown_timeout_s,
                    graceful_shutdown_wait_loop_s=0.5,
                    # A replica whose constructor fails (a bundle this node's CPU cannot run) fails the same way
                    # again: a few tries, then serve.run reports it, instead of Ray's 20.
                    max_constructor_retry_count=3)
    if ray_options.autoscale is None:
        settings["num_replicas"] = ray_options.replicas
    else:
        low, high = ray_options.autoscale
        settings["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                          "initial_replicas": max(low, 1),
                                          "target_ongoing_requests": ray_options.target_ongoing_requests,
                                          "look_back_period_s": ray_options.look_back_period_s,
                                          "upscale_delay_s": ray_options.upscale_delay_s,
                                          "downscale_delay_s": ray_options.downscale_delay_s}
    return settings


class ReplicaServer:
    """One replica: the `serve` app over engines and batchers of its own (wrapped by serve.ingress in deploy)."""

    def __init__(self, bundles: tuple[ShippedBundle, ...], options: ServeOptions, ray_options: RayOptions):
        import ray
        from ray import serve

        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.node_id = ray.get_runtime_context().get_node_id()
        self.state = ServerState(names=tuple(bundle.name for bundle in bundles), limits=options.limits,
                                 api_key=options.api_key)
        # Every /metrics answer says which replica, node and process it comes from: Ray routes each scrape
        # to one replica, so a scraper (or a test) tells them apart by these labels.
        Info("roberta_deploy_replica", "The Ray Serve replica that answered this scrape",
             registry=self.state.metrics.registry).info({"replica": self.replica_id, "node": self.node_id,
                                                         "pid": str(os.getpid())})
        cache_root = Path(ray_options.cache_dir) if ray_options.cache_dir else default_cache_root()
        self._health = EngineHealth()
        for bundle in bundles:
            folder = Path(bundle.path) if bundle.path else (cached_bundle(bundle.digest, cache_root)
                                                            or unpack_bundle(ray.get(bundle.ref), cache_root))
            # Unpinned: Ray reserves CPUs by count, not by core, and other replicas compute on this node too.
            engine = Engine.load(folder, contexts=options.batching.contexts, cpu_threads=ray_options.cpu_threads,
                                 hint=THROUGHPUT, pin_threads=False)
            model = served_model(bundle.name, engine, options)
            model.batcher.start(reserve_largest_batch=True)  # every context runs before Ray routes a request here
            self.state.add_model(model)
        self.state.ready = True
        self._app = create_app(self.state)
        self._graceful_shutdown_timeout_s = ray_options.graceful_shutdown_timeout_s

    def __serve_build_asgi_app__(self):
        return self._app

    def check_health(self) -> None:
        """Ray's health check (every health_check_period_s): raising marks the replica unhealthy, and Ray
        replaces it with a new one."""
        problem = self._health.problem(self.state.models)
        if problem:
            raise BackendError(f"replica {self.replica_id}: {problem}", "Ray replaces the replica")

    async def __del__(self):
        """Ray calls this once the replica takes no new requests and its open ones were answered (or
        graceful_shutdown_timeout_s passed): close each batcher with drain, off the event loop, so any
        answer still on its way is sent."""
        state = getattr(self, "state", None)
        if state is None:  # the constructor failed
            return
        state.draining = True
        for model in state.models.values():
            await asyncio.to_thread(model.batcher.close, drain=True, timeout=self._graceful_shutdown_timeout_s)


def _replica_failure(serve, app_name: str) -> str | None:
    """The error a failed replica constructor raised, from the deployment's status message (its last line)."""
    try:
        application = serve.status().applications.get(app_name)
    except Exception:  # the status itself is out of reach: the caller says what serve.run said
        return None
    for deployment in (application.deployments.values() if application else ()):
        lines = [line.strip() for line in (deployment.message or "").splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return None


class EngineHealth:
    """Whether each served model can still answer: its batcher runs its workers, and its engine did not fail
    every batch since the last look. An engine that broke fails each batch it gets; one bad batch among
    good ones is answered 424 to its own requests and is no reason to restart."""

    def __init__(self):
        self._last: dict[str, tuple[int, int]] = {}  # model -> (batches, failed) at the last look

    def problem(self, models: dict) -> str | None:
        for name, model in models.items():
            batcher = model.batcher
            if not (batcher.ready and batcher.running):
                return f"the batcher of {name} is not running"
            stats = batcher.stats
            batches, failed = self._last.get(name, (0, 0))
            self._last[name] = (stats.batches, stats.failed)
            if stats.failed > failed and stats.batches == batches:
                return f"the engine of {name} failed each of its last {stats.failed - failed} batches"
        return None


def _connect(ray, ray_options: RayOptions) -> bool:
    """Join the cluster at `address`, or start a local instance; True when this process started one."""
    if ray.is_initialized():
        return False
    if ray_options.address is None:
        os.environ.setdefault(USAGE_STATS_ENV, "0")  # read by ray.init; the user may turn it back on
        # "local": a new instance, even where RAY_ADDRESS or a cluster started on this machine would be found.
        ray.init(address="local", include_dashboard=False, configure_logging=False, log_to_driver=False)
        return True
    from ray.exceptions import AuthenticationError

    try:
        ray.init(address=ray_options.address, configure_logging=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, AuthenticationError) as error:
        if _refused_token(error):
            raise UsageError(f"cannot connect to Ray at {ray_options.address}: the cluster uses token authentication "
                             "and refused this process's token (missing or different)",
                             "run with RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN or the file "
                             "~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH), as on its nodes (docs/scaling.md)") from None
        raise UsageError(f"cannot connect to Ray at {ray_options.address}: {str(error).splitlines()[0]}",
                         "start a cluster with `ray start --head` and pass --address auto (on a cluster node) or "
                         "--address ray://HEAD:10001") from None
    return False


def _refused_token(error: BaseException) -> bool:
    """Whether ray.init failed on authentication: Ray raises AuthenticationError when this process has token
    mode but no token, and otherwise a ConnectionError whose causes mention the GCS's InvalidAuthToken."""
    from ray.exceptions import AuthenticationError

    while error is not None:
        if isinstance(error, AuthenticationError) or any(word in str(error) for word in
                                                         ("InvalidAuthToken", "Unauthenticated")):
            return True
        error = error.__cause__ or error.__context__
    return False


def import_ray():
    """ray and ray.serve; a one-line UsageError naming the extra where they are not installed."""
    try:
        import ray
        from ray import serve
    except ImportError as error:
        raise UsageError(f"serving on Ray needs {error.name or 'ray'}, which is not installed",
                         RAY_EXTRA_FIX) from None
    return ray, serve
