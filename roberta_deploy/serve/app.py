"""The ASGI app: routes of each protocol over the served models' batchers, with auth, limits and one error table.

Order of checks on an inference route: API key (401), readiness (503), concurrent requests (429, at
once), payload bytes (413), the request itself (422), then the batcher. A client that disconnects
while its texts wait is cancelled in the batcher (dropped before compute) and counted as dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ..errors import (NotReadyError, OverloadedError, RequestTooLargeError, UnauthorizedError, UnknownModelError)
from . import hf, kserve, openapi, tei, triton, v2
from .metrics import CONTENT_TYPE, ServerMetrics
from .models import ServedModel
from .options import Limits
from .payload import dump_json, parse_json
from .status import DROPPED, RETRY_AFTER_SECONDS, SUCCESS, describe_error

JSON = "application/json"
TEI, HF, V2 = "tei", "hf", "v2"  # error body shapes: TEI adds error_type; HF and v2 send {"error": ...}


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

    @contextlib.contextmanager
    def admission(self):
        """Readiness, then the concurrency limit; inside the block the request counts as in flight (HTTP and gRPC)."""
        if not self.accepting:
            raise NotReadyError("the server is shutting down" if self.draining else "the model is still warming up",
                                "retry in a moment" if not self.draining else "send the request to another replica")
        if self.in_flight >= self.limits.max_concurrent_requests:
            raise OverloadedError(f"{self.in_flight} requests are in flight, the limit is "
                                  f"{self.limits.max_concurrent_requests}",
                                  "retry after the Retry-After seconds, or start the server with a larger "
                                  "--max-concurrent-requests")
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()

    def model(self, name: str | None) -> ServedModel:
        name = name or self.names[0]
        if name not in self.names:
            raise UnknownModelError(f"no model named {name!r} is served here",
                                    f"use one of {', '.join(sorted(self.names))}")
        if name not in self.models:
            raise NotReadyError(f"model {name!r} is still warming up", "retry when /health answers 200")
        return self.models[name]


def check_api_key(api_key: str | None, authorization: str) -> None:
    """The `authorization` header (HTTP) or metadata (gRPC) against the server's key, in constant time."""
    if api_key is None:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise UnauthorizedError("missing or wrong API key",
                                "send the header 'Authorization: Bearer KEY' with the server's --api-key")


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def create_app(state: ServerState) -> Starlette:
    version = package_version()
    limits = state.limits

    def endpoint(route: str, shape: str, handler: Callable[[Request], Awaitable[Response]], *,
                 needs_key: bool = True, counted: bool = True):
        async def run(request: Request) -> Response:
            model_name = request.path_params.get("name") or state.names[0]
            if model_name not in state.names:
                model_name = "unknown"  # a label per made-up name would let clients grow /metrics without bound
            try:
                if needs_key:
                    authorize(request)
                response = await handler(request)
                outcome = SUCCESS
            except ClientGone:
                response, outcome = Response(status_code=499), DROPPED  # nobody reads it
            except Exception as error:  # every failure becomes a status from the one table
                status, message = describe_error(error)
                response, outcome = error_response(shape, status, message), status.outcome
            if counted:
                state.metrics.count(model_name, route, outcome)
            return response

        return run

    def authorize(request: Request) -> None:
        check_api_key(state.api_key, request.headers.get("authorization", ""))

    async def classify(request: Request, model: ServedModel, texts: list[str], truncate: bool | None,
                       truncation_direction: str = "right"):
        """Submit texts to the model's batcher; wait for the result or the client's disconnect."""
        started = time.perf_counter()
        future = model.batcher.submit(texts, truncate=limits.auto_truncate if truncate is None else truncate,
                                      truncation_direction=truncation_direction)
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
        state.metrics.observe_result(model.name, result, total_s)
        return result, total_s

    async def admitted(request: Request, run: Callable[[bytes], Awaitable[Response]]) -> Response:
        """Readiness, then the concurrency limit, then the body under the payload limit."""
        with state.admission():
            return await run(await read_body(request))

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.payload_limit:
            raise _too_large(int(declared))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.payload_limit:
                raise _too_large(size)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(size: int) -> RequestTooLargeError:
        return RequestTooLargeError(f"the request body has {size} bytes or more, past the limit of "
                                    f"{limits.payload_limit} bytes",
                                    "send fewer or shorter texts per request, or start the server with a larger "
                                    "--payload-limit")

    # text-embeddings-inference
    async def predict(request: Request) -> Response:
        model = state.model(request.path_params.get("name"))

        async def run(body: bytes) -> Response:
            parsed = tei.parse_predict(parse_json(body, tei.EXAMPLE), limits)
            result, total_s = await classify(request, model, parsed.texts, parsed.truncate,
                                             parsed.truncation_direction)
            headers = tei.timing_headers(result.timings, total_s, result.compute_tokens)
            return Response(dump_json(tei.format_predict(parsed, result.logits, model.label_names)),
                            media_type=JSON, headers=headers)

        return await admitted(request, run)

    async def rerank(request: Request) -> Response:
        model = state.model(request.path_params.get("name"))

        async def run(body: bytes) -> Response:
            parsed = tei.parse_rerank(parse_json(body, tei.RERANK_EXAMPLE), limits, len(model.label_names))
            result, total_s = await classify(request, model, parsed.pairs, parsed.truncate,
                                             parsed.truncation_direction)
            headers = tei.timing_headers(result.timings, total_s, result.compute_tokens)
            return Response(dump_json(tei.format_rerank(parsed, result.logits)), media_type=JSON, headers=headers)

        return await admitted(request, run)

    async def info(request: Request) -> Response:
        model = state.model(request.path_params.get("name"))
        body = model.info(limits, version)
        body["models"] = list(state.names)
        return Response(dump_json(body), media_type=JSON)

    async def health(request: Request) -> Response:
        if not state.accepting:
            raise NotReadyError("not ready: " + ("shutting down" if state.draining else "warming up"),
                                "wait for /health to answer 200")
        return Response(b"", status_code=200)

    # Hugging Face text classification
    async def text_classification(request: Request) -> Response:
        model = state.model(request.path_params.get("name"))

        async def run(body: bytes) -> Response:
            parsed = hf.parse_text_classification(parse_json(body, hf.EXAMPLE), limits)
            result, _ = await classify(request, model, parsed.texts, None)
            return Response(dump_json(hf.format_text_classification(parsed, result.logits, model.label_names,
                                                                    model.task.score_function)),
                            media_type=JSON)

        return await admitted(request, run)

    # Open Inference Protocol v2
    async def v2_live(request: Request) -> Response:
        return Response(dump_json({"live": True}), media_type=JSON)

    async def v2_ready(request: Request) -> Response:
        return Response(dump_json({"ready": state.accepting}), status_code=200 if state.accepting else 503,
                        media_type=JSON)

    async def v2_server(request: Request) -> Response:
        return Response(dump_json(triton.server_metadata(version)), media_type=JSON)

    async def v2_model(request: Request) -> Response:
        model = state.model(request.path_params["name"])
        return Response(dump_json(v2.model_metadata(model.name, model.label_names, model.platform,
                                                    bool(model.task.text_pairs))),
                        media_type=JSON)

    async def v2_model_ready(request: Request) -> Response:
        model = state.model(request.path_params["name"])
        ready = state.accepting and model.ready
        return Response(dump_json({"name": model.name, "ready": ready}), status_code=200 if ready else 503,
                        media_type=JSON)

    async def v2_infer(request: Request) -> Response:
        model = state.model(request.path_params["name"])

        async def run(body: bytes) -> Response:
            parsed = v2.parse_infer(body, request.headers.get(v2.HEADER_LENGTH), limits)
            result, _ = await classify(request, model, parsed.texts, None)
            content, headers = v2.format_infer(parsed, model.name, result.logits, model.label_names, model.task)
            media_type = headers.pop("content-type")
            return Response(content, media_type=media_type, headers=headers)

        return await admitted(request, run)

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    # KServe v1 (serve/kserve.py)
    async def v1_predict(request: Request) -> Response:
        model = state.model(request.path_params["name"])

        async def run(body: bytes) -> Response:
            parsed = kserve.parse_predict(parse_json(body, kserve.EXAMPLE), limits)
            result, _ = await classify(request, model, parsed.texts, None)
            return Response(dump_json(kserve.format_predict(parsed, result.logits, model.task)), media_type=JSON)

        return await admitted(request, run)

    async def v1_model(request: Request) -> Response:
        model = state.model(request.path_params["name"])
        ready = state.accepting and model.ready
        return Response(dump_json(kserve.model_status(model.name, ready)), status_code=200 if ready else 503,
                        media_type=JSON)

    async def v1_live(request: Request) -> Response:
        return Response(dump_json({"status": "alive"}), media_type=JSON)

    async def v1_models(request: Request) -> Response:
        return Response(dump_json({"models": list(state.names)}), media_type=JSON)

    async def openapi_json(request: Request) -> Response:
        return Response(dump_json(openapi.openapi_schema(app.routes, version)), media_type=JSON)

    async def docs(request: Request) -> Response:
        return HTMLResponse(openapi.docs_page(app.routes, version))

    routes = [
        # Triton's extensions first: /v2/models/{name} would take "stats" for a model name.
        *(Route(path, endpoint(label, V2, handler, counted=False), methods=[method])
          for path, label, handler, method in triton.http_handlers(state)),
        Route("/predict", endpoint("/predict", TEI, predict), methods=["POST"]),
        Route("/models/{name}/predict", endpoint("/predict", TEI, predict), methods=["POST"]),
        Route("/rerank", endpoint("/rerank", TEI, rerank), methods=["POST"]),
        Route("/models/{name}/rerank", endpoint("/rerank", TEI, rerank), methods=["POST"]),
        Route("/info", endpoint("/info", TEI, info, counted=False), methods=["GET"]),
        Route("/models/{name}/info", endpoint("/info", TEI, info, counted=False), methods=["GET"]),
        Route("/health", endpoint("/health", TEI, health, counted=False), methods=["GET"]),
        Route("/", endpoint("/", HF, text_classification), methods=["POST"]),
        Route("/models/{name}", endpoint("/", HF, text_classification), methods=["POST"]),
        Route("/v2/health/live", endpoint("/v2/health/live", V2, v2_live, needs_key=False, counted=False),
              methods=["GET"]),
        Route("/v2/health/ready", endpoint("/v2/health/ready", V2, v2_ready, counted=False), methods=["GET"]),
        Route("/v2", endpoint("/v2", V2, v2_server, counted=False), methods=["GET"]),
        Route("/v2/models/{name}", endpoint("/v2/models", V2, v2_model, counted=False), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", endpoint("/v2/models", V2, v2_model, counted=False),
              methods=["GET"]),
        Route("/v2/models/{name}/ready", endpoint("/v2/models/ready", V2, v2_model_ready, counted=False),
              methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready",
              endpoint("/v2/models/ready", V2, v2_model_ready, counted=False), methods=["GET"]),
        Route("/v2/models/{name}/infer", endpoint("/v2/infer", V2, v2_infer), methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", endpoint("/v2/infer", V2, v2_infer), methods=["POST"]),
        Route("/metrics", endpoint("/metrics", TEI, metrics, counted=False), methods=["GET"]),
        Route("/v1/models/{name}:predict", endpoint("/v1/predict", V2, v1_predict), methods=["POST"]),
        Route("/v1/models/{name}", endpoint("/v1/models", V2, v1_model, counted=False), methods=["GET"]),
        Route("/v1/models", endpoint("/v1/models", V2, v1_models, counted=False), methods=["GET"]),
        Route("/", endpoint("/", V2, v1_live, needs_key=False, counted=False), methods=["GET"]),
        Route("/openapi.json", endpoint("/openapi.json", TEI, openapi_json, needs_key=False, counted=False),
              methods=["GET"]),
        Route("/docs", endpoint("/docs", TEI, docs, needs_key=False, counted=False), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _method_not_allowed})
    return app


def error_response(shape: str, status, message: str) -> Response:
    body = {"error": message}
    if shape == TEI:
        body["error_type"] = status.error_type
    headers = {"retry-after": str(RETRY_AFTER_SECONDS)} if status.status in (429, 503) else {}
    if status.status == 401:
        headers["www-authenticate"] = "Bearer"
    return Response(dump_json(body), status_code=status.status, media_type=JSON, headers=headers)


async def _not_found(request: Request, exc) -> Response:
    return Response(dump_json({"error": f"no route {request.method} {request.url.path}"}), status_code=404,
                    media_type=JSON)


async def _method_not_allowed(request: Request, exc) -> Response:
    return Response(dump_json({"error": f"{request.method} is not allowed on {request.url.path}"}), status_code=405,
                    media_type=JSON)


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the ASGI server reports that the client closed the connection."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
