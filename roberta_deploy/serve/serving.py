"""What every route shares: the server's state, auth, the error table, request ids and the inference path.
serve/routes.py's route sets use it; serve/app.py builds the Starlette app from them.

The inference path, in order: API key (401), readiness (503), the body read under the payload limit (413;
the connection's body deadline is serve/connections.py's), parsing on a worker thread (422), only then an
inference slot (429 past --max-concurrent-requests), tokenizing on a worker thread, the batcher, and the
answer encoded on a worker thread. A slow or vanished client therefore never holds a slot it cannot use,
and no request's CPU work stalls the event loop that every other client waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
import uuid
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..errors import NotReadyError, OverloadedError, RequestTooLargeError, UnauthorizedError, UnknownModelError
from ..flags import available_cores
from .metrics import ServerMetrics
from .models import ServedModel
from .options import Limits
from .payload import dump_json
from .status import DROPPED, INTERNAL, RETRY_AFTER_SECONDS, SUCCESS, describe_error

JSON = "application/json"
TEI, HF, V2 = "tei", "hf", "v2"  # error body shapes: TEI adds error_type; HF and v2 send {"error": ...}
REQUEST_ID_HEADER = "x-request-id"
logger = logging.getLogger(__name__)


def package_version() -> str:
    try:
        return metadata.version("roberta-deploy")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


@dataclass
class ServerState:
    """What the routes share. `models` fills as bundles warm up (from the server's warm-up thread); `ready`
    and `draining` are plain flags; everything else is touched only from the event loop."""

    names: tuple[str, ...]  # every model the server will serve, in --bundle order; the first is the default
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False  # every model loaded and warmed up
    draining: bool = False  # a stop signal came: finish what was accepted, take nothing new
    in_flight: int = 0

    def add_model(self, model: ServedModel) -> None:
        self.metrics.watch(model.name, model.batcher)
        self.models[model.name] = model

    @property
    def accepting(self) -> bool:
        return self.ready and not self.draining

    def model(self, name: str | None) -> ServedModel:
        name = name or self.names[0]
        if name not in self.names:
            raise UnknownModelError(f"no model named {name!r} is served here",
                                    f"use one of {', '.join(sorted(self.names))}")
        if name not in self.models:
            raise NotReadyError(f"model {name!r} is still warming up", "retry when /health answers 200")
        return self.models[name]


def check_api_key(api_key: str | None, authorization: bytes) -> None:
    """An `authorization` header (HTTP) or metadata value (gRPC), as bytes, against the server's key, in
    constant time."""
    if api_key is None:
        return
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), api_key.encode()):
        raise UnauthorizedError("missing or wrong API key",
                                "send the header 'Authorization: Bearer KEY' with the server's --api-key")


class ClientGone(Exception):
    """The client disconnected (or its connection was cut for a deadline) before its answer was ready."""


Handler = Callable[[Request], Awaitable[Response]]


class ServingApp:
    """The state and the steps every route shares; serve/routes.py's route sets call them."""

    def __init__(self, state: ServerState, executor: Executor | None = None):
        self.state = state
        self.limits = state.limits
        self.version = package_version()
        # Parsing, tokenizing and encoding answers: CPU work that would stall every other client on the loop.
        self.executor = executor or ThreadPoolExecutor(max_workers=available_cores(), thread_name_prefix="serve-cpu")

    def endpoint(self, route: str, shape: str, handler: Handler, *, needs_key: bool = True,
                 counted: bool = True) -> Handler:
        """`handler` with the API key check, every exception turned into a status from the one table, a request
        id on every answer (and in the log line of a 500), and the outcome counted."""
        state = self.state

        async def run(request: Request) -> Response:
            request_id = uuid.uuid4().hex[:16]
            model_name = request.path_params.get("name") or state.names[0]
            if model_name not in state.names:
                model_name = "unknown"  # a label per made-up name would let clients grow /metrics without bound
            try:
                if needs_key:
                    self.authorize(request)
                response = await handler(request)
                outcome = SUCCESS
            except (ClientGone, ClientDisconnect):
                response, outcome = Response(status_code=499), DROPPED  # nobody reads it
            except Exception as error:  # every failure becomes a status from the one table
                status, message = describe_error(error)
                if status is INTERNAL:
                    logger.error("request %s (%s %s) failed", request_id, request.method, request.url.path,
                                 exc_info=error)
                    message = f"{message} under request id {request_id}"
                response, outcome = error_response(shape, status, message), status.outcome
            response.headers[REQUEST_ID_HEADER] = request_id
            if counted:
                state.metrics.count(model_name, route, outcome)
            return response

        return run

    def authorize(self, request: Request) -> None:
        # Starlette decodes header bytes as Latin-1; encoding back gives the bytes the client sent, which for
        # a non-ASCII key are its UTF-8 bytes.
        check_api_key(self.state.api_key, request.headers.get("authorization", "").encode("latin-1"))

    async def off_loop(self, function: Callable, *args) -> Any:
        """Run CPU work (parsing, tokenizing, encoding) on a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(function, *args))

    def check_accepting(self) -> None:
        state = self.state
        if not state.accepting:
            raise NotReadyError("the server is shutting down" if state.draining else "the model is still warming up",
                                "retry in a moment" if not state.draining else "send the request to another replica")

    async def infer(self, request: Request, model: ServedModel, parse: Callable[[bytes], Any],
                    answer: Callable[[Any, Any, float], Response],
                    inputs: Callable[[Any], list] = lambda parsed: parsed.texts) -> Response:
        """The inference path: readiness, body, parse (off the loop), slot, batcher, answer (off the loop).
        parse(body) returns a parsed request (optionally with `truncate` and `truncation_direction`);
        inputs(parsed) are the texts or pairs to classify; answer(parsed, result, total_s) builds the response."""
        self.check_accepting()
        parsed = await self.off_loop(parse, await self.read_body(request))
        self.check_accepting()  # a drain may have begun while the body arrived
        with self.slot():
            result, total_s = await self.classify(request, model, inputs(parsed), getattr(parsed, "truncate", None),
                                                  getattr(parsed, "truncation_direction", "right"))
            return await self.off_loop(answer, parsed, result, total_s)

    @contextlib.contextmanager
    def slot(self):
        """An inference slot (429 past --max-concurrent-requests) for the block; HTTP and gRPC share them."""
        state, limits = self.state, self.limits
        if state.in_flight >= limits.max_concurrent_requests:
            raise OverloadedError(f"{state.in_flight} requests are in flight, the limit is "
                                  f"{limits.max_concurrent_requests}",
                                  "retry after the Retry-After seconds, or start the server with a larger "
                                  "--max-concurrent-requests")
        state.in_flight += 1
        state.metrics.in_flight.inc()
        try:
            yield
        finally:
            state.in_flight -= 1
            state.metrics.in_flight.dec()

    async def classify(self, request: Request, model: ServedModel, texts: list, truncate: bool | None,
                       truncation_direction: str = "right"):
        """Tokenize and submit texts to the model's batcher (on a worker thread); wait for the result or the
        client's disconnect."""
        started = time.perf_counter()
        truncate = self.limits.auto_truncate if truncate is None else truncate
        future = await self.submit(model, texts, truncate=truncate, truncation_direction=truncation_direction)
        waiter = asyncio.wrap_future(future)
        disconnect = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            done, _ = await asyncio.wait((waiter, disconnect), return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect.cancel()
        if waiter not in done:
            future.cancel()  # still queued: the batcher drops it before compute
            waiter.cancel()
            raise ClientGone()
        result = waiter.result()
        total_s = time.perf_counter() - started
        self.state.metrics.observe_result(model.name, result, total_s)
        return result, total_s

    async def submit(self, model: ServedModel, texts: list, **options) -> Future:
        """model.batcher.submit on a worker thread (it tokenizes). A request cancelled meanwhile (its client gone,
        its gRPC deadline passed) gets the batcher's future cancelled as soon as submit returns, so the batcher
        drops its texts before compute instead of computing them for no one."""
        submitted = self.executor.submit(functools.partial(model.batcher.submit, texts, **options))
        try:
            return await asyncio.wrap_future(submitted)
        except asyncio.CancelledError:
            submitted.add_done_callback(_cancel_submitted)
            raise

    async def read_body(self, request: Request) -> bytes:
        limit = self.limits.payload_limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks, size = [], 0
        async for chunk in request.stream():  # ClientDisconnect when the client (or its body deadline) ends it
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)


def _cancel_submitted(submitted: Future) -> None:
    if not submitted.cancelled() and submitted.exception() is None:
        submitted.result().cancel()


def _too_large(size: int, limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"the request body has {size} bytes or more, past the limit of {limit} bytes",
                                "send fewer or shorter texts per request, or start the server with a larger "
                                "--payload-limit")


def error_response(shape: str, status, message: str) -> Response:
    body = {"error": message}
    if shape == TEI:
        body["error_type"] = status.error_type
    headers = {"retry-after": str(RETRY_AFTER_SECONDS)} if status.status in (429, 503) else {}
    if status.status == 401:
        headers["www-authenticate"] = "Bearer"
    return Response(dump_json(body), status_code=status.status, media_type=JSON, headers=headers)


async def not_found(request: Request, exc) -> Response:
    return Response(dump_json({"error": f"no route {request.method} {request.url.path}"}), status_code=404,
                    media_type=JSON)


async def method_not_allowed(request: Request, exc) -> Response:
    return Response(dump_json({"error": f"{request.method} is not allowed on {request.url.path}"}), status_code=405,
                    media_type=JSON)


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the ASGI server reports that the client closed the connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
