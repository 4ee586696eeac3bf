"""Each protocol's routes, one route set per protocol: a function of the ServingApp that returns its routes.

text-embeddings-inference (/predict, /rerank, /info, /health), Hugging Face text classification (POST /),
the Open Inference Protocol v2 (/v2/...), and the server's own (/metrics). Handlers parse and answer through
the protocol modules (tei.py, hf.py, v2.py); ServingApp.infer does the rest.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import UnknownModelError
from . import hf, tei, triton, v2
from .metrics import CONTENT_TYPE
from .payload import dump_json, parse_json
from .serving import HF, JSON, TEI, V2, ServingApp


def tei_routes(app: ServingApp) -> list[Route]:
    state, limits = app.state, app.limits

    async def predict(request: Request) -> Response:
        model = state.model(request.path_params.get("name"))

        def answer(parsed, result, total_s) -> Response:
            headers = tei.timing_headers(result.timings, total_s, result.compute_tokens)
            return Response(dump_json(tei.format_predict(parsed, result.logits, model.label_names)),
                            media_type=JSON, headers=headers)

        return await app.infer(request, model, lambda body: tei.parse_predict(parse_json(body, tei.EXAMPLE), limits),
                               answer)

    async def rerank(request: Request) -> Response:
        model = state.model(request.path_params.get("name"))

        def parse(body: bytes):
            return tei.parse_rerank(parse_json(body, tei.RERANK_EXAMPLE), limits, len(model.label_names))

        def answer(parsed, result, total_s) -> Response:
            headers = tei.timing_headers(result.timings, total_s, result.compute_tokens)
            return Response(dump_json(tei.format_rerank(parsed, result.logits)), media_type=JSON, headers=headers)

        return await app.infer(request, model, parse, answer, inputs=lambda parsed: parsed.pairs)

    async def info(request: Request) -> Response:
        model = state.model(request.path_params.get("name"))
        body = model.info(limits, app.version)
        body["models"] = list(state.names)
        return Response(dump_json(body), media_type=JSON)

    async def health(request: Request) -> Response:
        app.check_accepting()
        return Response(b"", status_code=200)

    return [
        Route("/predict", app.endpoint("/predict", TEI, predict), methods=["POST"]),
        Route("/models/{name}/predict", app.endpoint("/predict", TEI, predict), methods=["POST"]),
        Route("/rerank", app.endpoint("/rerank", TEI, rerank), methods=["POST"]),
        Route("/models/{name}/rerank", app.endpoint("/rerank", TEI, rerank), methods=["POST"]),
        Route("/info", app.endpoint("/info", TEI, info, counted=False), methods=["GET"]),
        Route("/models/{name}/info", app.endpoint("/info", TEI, info, counted=False), methods=["GET"]),
        Route("/health", app.endpoint("/health", TEI, health, counted=False), methods=["GET"]),
    ]


def hf_routes(app: ServingApp) -> list[Route]:
    state, limits = app.state, app.limits

    async def text_classification(request: Request) -> Response:
        model = state.model(request.path_params.get("name"))

        def answer(parsed, result, total_s) -> Response:
            return Response(dump_json(hf.format_text_classification(parsed, result.logits, model.label_names,
                                                                    model.task.score_function)), media_type=JSON)

        return await app.infer(
            request, model, lambda body: hf.parse_text_classification(parse_json(body, hf.EXAMPLE), limits), answer)

    return [
        Route("/", app.endpoint("/", HF, text_classification), methods=["POST"]),
        Route("/models/{name}", app.endpoint("/", HF, text_classification), methods=["POST"]),
    ]


def v2_routes(app: ServingApp) -> list[Route]:
    state, limits = app.state, app.limits

    def versioned_model(request: Request):
        """The model the path names; a version other than the one each model has is an unknown model."""
        model = state.model(request.path_params["name"])
        version = request.path_params.get("version")
        if version is not None and version != v2.MODEL_VERSION:
            raise UnknownModelError(f"model {model.name!r} has no version {version!r}",
                                    f"use version {v2.MODEL_VERSION}, or leave /versions/... out")
        return model

    async def live(request: Request) -> Response:
        return Response(dump_json({"live": True}), media_type=JSON)

    async def ready(request: Request) -> Response:
        return Response(dump_json({"ready": state.accepting}), status_code=200 if state.accepting else 503,
                        media_type=JSON)

    async def server_metadata(request: Request) -> Response:
        return Response(dump_json(triton.server_metadata(app.version)), media_type=JSON)

    async def model_metadata(request: Request) -> Response:
        model = versioned_model(request)
        return Response(dump_json(v2.model_metadata(model.name, model.label_names, model.platform,
                                                    bool(model.task.text_pairs))), media_type=JSON)

    async def model_ready(request: Request) -> Response:
        model = versioned_model(request)
        is_ready = state.accepting and model.ready
        return Response(dump_json({"name": model.name, "ready": is_ready}), status_code=200 if is_ready else 503,
                        media_type=JSON)

    async def infer(request: Request) -> Response:
        model = versioned_model(request)
        header_length = request.headers.get(v2.HEADER_LENGTH)

        def answer(parsed, result, total_s) -> Response:
            content, headers = v2.format_infer(parsed, model.name, result.logits, model.label_names, model.task)
            media_type = headers.pop("content-type")
            return Response(content, media_type=media_type, headers=headers)

        return await app.infer(request, model, lambda body: v2.parse_infer(body, header_length, limits), answer)

    def uncounted(route: str, handler, **options):
        return app.endpoint(route, V2, handler, counted=False, **options)

    return [
        Route("/v2/health/live", uncounted("/v2/health/live", live, needs_key=False), methods=["GET"]),
        Route("/v2/health/ready", uncounted("/v2/health/ready", ready), methods=["GET"]),
        Route("/v2", uncounted("/v2", server_metadata), methods=["GET"]),
        Route("/v2/models/{name}", uncounted("/v2/models", model_metadata), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", uncounted("/v2/models", model_metadata), methods=["GET"]),
        Route("/v2/models/{name}/ready", uncounted("/v2/models/ready", model_ready), methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", uncounted("/v2/models/ready", model_ready),
              methods=["GET"]),
        Route("/v2/models/{name}/infer", app.endpoint("/v2/infer", V2, infer), methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", app.endpoint("/v2/infer", V2, infer), methods=["POST"]),
    ]


def server_routes(app: ServingApp) -> list[Route]:
    async def metrics(request: Request) -> Response:
        return Response(app.state.metrics.render(), media_type=CONTENT_TYPE)

    return [Route("/metrics", app.endpoint("/metrics", TEI, metrics, counted=False), methods=["GET"])]
