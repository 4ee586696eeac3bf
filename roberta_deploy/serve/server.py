"""The server's life: bind, listen at once (not ready), load and warm up every bundle in the background,
ready; on SIGTERM or SIGINT stop accepting, answer every accepted request for at most --drain-timeout (then
cut the rest), close the batchers, exit 0.

This module owns the process while serving: it installs handlers for SIGTERM and SIGINT and puts the
previous ones back when the server stops (uvicorn does the same, but re-raises the signal afterwards,
which would end the process with a signal instead of exit code 0). A server stopped by a signal leaves
both ignored instead: the process is exiting, and a repeated signal must not change its exit code.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable

import uvicorn

from ..errors import UsageError
from ..flags import available_cores
from ..manifest import KIND_BUNDLE, read_manifest
from ..runtime.batcher import Batcher
from ..runtime.engine import THROUGHPUT, Engine
from .app import ServerState, create_app
from .connections import ConnectionGuard, guarded_protocol
from .grpc_server import grpc_serving
from .models import ServedModel
from .options import BundleSpec, ServeOptions

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
OpenModel = Callable[[BundleSpec, ServeOptions], ServedModel]


def serve(options: ServeOptions, on_event: Callable[[str], None] = lambda message: None,
          on_ready: Callable[[str], None] = lambda url: None) -> None:
    """Serve `options.bundles` in this process until SIGTERM or SIGINT, then drain and return.

    The one call `serve` and `deploy` make into this layer; on_ready(url) runs once every bundle is warmed
    up. A Ray Serve deployment would be a second implementation of this call, chosen by the caller."""
    check_bundles(options)
    Server(options, on_event=on_event, on_ready=on_ready).run()


def open_bundle(spec: BundleSpec, options: ServeOptions) -> ServedModel:
    """Load a bundle for serving (throughput hint: batches come from many clients)."""
    engine = Engine.load(spec.path, contexts=options.batching.contexts, hint=THROUGHPUT)
    return served_model(spec.name, engine, options)


def served_model(name: str, engine, options: ServeOptions) -> ServedModel:
    """An engine with its own long-lived batcher, not started yet (the server's warm-up starts it)."""
    limits = options.limits
    batcher = Batcher(engine, contexts=options.batching.contexts, max_batch_tokens=options.batching.max_batch_tokens,
                      max_wait_ms=options.batching.max_wait_ms,
                      # Never an unbounded queue: at most every admitted request at its largest.
                      max_queued_texts=limits.max_concurrent_requests * limits.max_client_batch_size)
    return ServedModel(name=name, engine=engine, batcher=batcher)


def check_bundles(options: ServeOptions) -> None:
    """Fail before binding a port if a bundle is missing, is not a bundle, or a file differs from its manifest
    hash (a truncated weights file). Engine.load hashes again in the warm-up: that costs a fraction of a second
    per 100 MB, and a bundle refused after "listening on" would leave a deployment half started."""
    for spec in options.bundles:
        read_manifest(spec.path, KIND_BUNDLE)


FILES_PER_PROCESS = 64  # descriptors the process holds besides client sockets: engines, logs, the listener


def usable_connections(wanted: int) -> int:
    """--max-connections, raising this process's open-file limit to fit it where the hard limit allows;
    otherwise the most the limit allows, so that a flood gets 503s instead of failed accepts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + FILES_PER_PROCESS
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FILES_PER_PROCESS))


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror}",
                         "pass another --port (0 picks a free one) or stop the program using it") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def restore_stop_handlers(previous: dict, stopped_by_signal: bool) -> None:
    """Put back the stop handlers serving replaced, or ignore further stop signals if one stopped it.

    Once a signal stopped serving, the process is on its way out with exit code 0 (bounded by the command
    line's exit timer): a repeated SIGTERM from a supervisor, or a second Ctrl-C, must not turn a clean drain
    into 143, a traceback's 1 (raised after the command returned), or death by the signal (Python resets its
    own handlers to the default during finalization; an ignored signal stays ignored)."""
    for sig, handler in previous.items():
        signal.signal(sig, signal.SIG_IGN if stopped_by_signal else handler)


class _GracefulServer(uvicorn.Server):
    """uvicorn's server with our stop signals: mark draining, then let uvicorn finish open connections."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[int], None], companions=()):
        super().__init__(config)
        self._on_stop = on_stop
        self.cut_requests = 0
        self._companions = companions  # async context managers served on the same loop (gRPC)
        self.stopped_by_signal = False

    async def serve(self, sockets=None) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for companion in self._companions:
                await stack.enter_async_context(companion)
            await super().serve(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle_stop) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            restore_stop_handlers(previous, stopped_by_signal=self.stopped_by_signal)

    async def shutdown(self, sockets=None) -> None:
        """uvicorn's drain (timeout_graceful_shutdown: --drain-timeout), noting how many requests it cut off."""
        await super().shutdown(sockets)
        self.cut_requests = sum(1 for task in self.server_state.tasks if task.cancelling())

    def _handle_stop(self, sig: int, frame) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for open connections
        self._on_stop(sig)
        self.stopped_by_signal = True
        self.should_exit = True


class Server:
    """One serving process. `run()` blocks until stopped; a bundle that fails to load or warm up is raised."""

    def __init__(self, options: ServeOptions, on_event: Callable[[str], None] = lambda message: None,
                 open_model: OpenModel = open_bundle, on_ready: Callable[[str], None] = lambda url: None):
        self.options = options
        self.on_event = on_event
        self.on_ready = on_ready
        self.open_model = open_model
        self.state: ServerState | None = None
        self.port: int | None = None
        self._uvicorn: _GracefulServer | None = None
        self._failure: BaseException | None = None
        self._models: list[ServedModel] = []
        self.grpc_port: int | None = None  # bound gRPC port, once listening (--grpc-port)
        self._executor = ThreadPoolExecutor(max_workers=options.cpu_workers or available_cores(),
                                            thread_name_prefix="serve-cpu")
        self.guard: ConnectionGuard | None = None

    def run(self, sock: socket.socket | None = None) -> None:
        sock = sock or bind(self.options.host, self.options.port)
        self.port = sock.getsockname()[1]
        self.state = ServerState(names=tuple(spec.name for spec in self.options.bundles), limits=self.options.limits,
                                 api_key=self.options.api_key)
        limits = self.options.connections
        max_connections = usable_connections(limits.max_connections)
        if max_connections < limits.max_connections:
            self.on_event(f"the open-file limit allows {max_connections} connections, not --max-connections "
                          f"{limits.max_connections} (raise `ulimit -n`)")
        metrics = self.state.metrics
        self.guard = ConnectionGuard(replace(limits, max_connections=max_connections),
                                     on_cut=lambda reason: metrics.connections_cut.labels(reason).inc())
        metrics.open_connections.set_function(lambda: self.guard.open_connections)
        # httptools' protocol with the header and body deadlines and the connection cap (serve/connections.py);
        # uvicorn itself times idle keep-alive connections and the drain.
        config = uvicorn.Config(create_app(self.state, executor=self._executor), log_config=None, access_log=False,
                                lifespan="off", http=guarded_protocol(self.guard),
                                timeout_keep_alive=limits.keep_alive_timeout_s,
                                timeout_graceful_shutdown=limits.drain_timeout_s, server_header=False)
        companions = [] if self.options.grpc_port is None else [
            grpc_serving(self.state, self.options.host, self.options.grpc_port, self._grpc_bound,
                         grace_s=limits.drain_timeout_s, executor=self._executor)]
        self._uvicorn = _GracefulServer(config, on_stop=self._begin_drain, companions=companions)
        loader = threading.Thread(target=self._load_and_warm_up, name="warm-up", daemon=True)
        self.on_event(f"listening on {self.url} (not ready until every bundle is warmed up)")
        loader.start()
        try:
            self._uvicorn.run(sockets=[sock])
        finally:
            loader.join()
            self._close_batchers()
            self._executor.shutdown(wait=False, cancel_futures=True)
            sock.close()
        if self._failure is not None:
            raise self._failure
        cut = self._uvicorn.cut_requests
        self.on_event("stopped: every accepted request was answered" if not cut else
                      f"stopped: {cut} requests were cut off after --drain-timeout {limits.drain_timeout_s:g} s")

    @property
    def url(self) -> str:
        host = self.options.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def _grpc_bound(self, port: int) -> None:
        self.grpc_port = port
        self.on_event(f"gRPC (Open Inference Protocol v2) listening on {self.options.host}:{port}")

    def stop(self) -> None:
        """Drain and stop, as SIGTERM does (for callers that run the server in a thread)."""
        self._begin_drain(signal.SIGTERM)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True

    def _begin_drain(self, sig: int) -> None:
        if self.state is not None and not self.state.draining:
            self.state.draining = True
            self.on_event(f"{signal.Signals(sig).name}: not ready; finishing every accepted request, then exiting")

    def _load_and_warm_up(self) -> None:
        try:
            for spec in self.options.bundles:
                if self.state.draining:
                    return
                model = self.open_model(spec, self.options)
                self._models.append(model)
                model.batcher.start(reserve_largest_batch=True)  # every context runs before the model counts as ready
                self.state.add_model(model)
                engine = model.engine
                self.on_event(f"warmed up {model.name}: {engine.backend} {engine.precision} from {spec.path}")
            self.state.ready = True
            self.on_event(f"ready: {', '.join(self.state.models)} at {self.url}")
            self.on_ready(self.url)
        except BaseException as error:
            self._failure = error
            if self._uvicorn is not None:
                self._uvicorn.should_exit = True

    def _close_batchers(self) -> None:
        for model in self._models:
            model.batcher.close(drain=True)
