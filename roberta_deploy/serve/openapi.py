"""/openapi.json and /docs: the OpenAPI 3.1 schema of the app, built by walking the app's own routes.

Every route the app serves is looked up in ROUTE_DOCS by (method, path); a route without an entry fails the
schema (and tests/serve/test_openapi.py), so the schema cannot fall behind the routes. The request and
response schemas are JSON Schema; the tests send each route its example and validate the live answer
against them. `route_summaries(routes)` is the one list of route descriptions for anything that prints them.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from . import hf, kserve, tei, v2
from .payload import dump_json
from .serving import JSON, TEI, ServingApp

_STR = {"type": "string"}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_OBJ = {"type": "object"}


def _array(items: dict, **extra) -> dict:
    return {"type": "array", "items": items, **extra}


def _object(required: tuple[str, ...] = (), **properties) -> dict:
    return {"type": "object", "required": list(required), "properties": properties}


LABEL_SCORE = _object(("label", "score"), label=_STR, score=_NUM)
ERROR = _object(("error",), error=_STR, error_type=_STR)
TEXT_OR_PAIR = {"anyOf": [_STR, _array(_STR, minItems=1, maxItems=2)]}
TEI_PREDICT = _object(("inputs",), inputs={"anyOf": [_STR, _array(TEXT_OR_PAIR)]}, truncate=_BOOL,
                      truncation_direction={"enum": ["right", "left", "Right", "Left"]}, raw_scores=_BOOL)
TEI_PREDICT_ANSWER = {"anyOf": [_array(LABEL_SCORE), _array(_array(LABEL_SCORE))]}
TEI_RERANK = _object(("query", "texts"), query=_STR, texts=_array(_STR), raw_scores=_BOOL, return_text=_BOOL,
                     truncate=_BOOL, truncation_direction={"enum": ["right", "left", "Right", "Left"]})
TEI_RERANK_ANSWER = _array(_object(("index", "score"), index=_INT, score=_NUM, text=_STR))
INFO = _object(("model_id", "labels", "backend", "precision", "max_input_length", "models"), model_id=_STR,
               labels=_array(_STR), backend=_STR, precision=_STR, max_input_length=_INT, task=_STR,
               models=_array(_STR), max_client_batch_size=_INT, version=_STR)
PAIR_OBJECT = _object(("text",), text=_STR, text_pair={"type": ["string", "null"]})
HF_REQUEST = _object(("inputs",), inputs={"anyOf": [_STR, PAIR_OBJECT, _array({"anyOf": [_STR, PAIR_OBJECT]})]},
                     parameters=_object(top_k=_INT, function_to_apply={"enum": list(hf.FUNCTIONS)}))
HF_ANSWER = _array(_array(LABEL_SCORE))
TENSOR_METADATA = _object(("name", "datatype", "shape"), name=_STR, datatype=_STR, shape=_array(_INT))
V2_MODEL = _object(("name", "versions", "platform", "inputs", "outputs"), name=_STR, versions=_array(_STR),
                   platform=_STR, inputs=_array(TENSOR_METADATA), outputs=_array(TENSOR_METADATA))
V2_TENSOR = _object(("name", "datatype", "shape"), name=_STR, datatype=_STR, shape=_array(_INT),
                    data=_array({}), parameters=_OBJ)
V2_INFER = _object(("inputs",), id=_STR, inputs=_array(V2_TENSOR), outputs=_array(_object(("name",), name=_STR,
                                                                                          parameters=_OBJ)),
                   parameters=_OBJ)
V2_INFER_ANSWER = _object(("model_name", "outputs"), model_name=_STR, model_version=_STR, id=_STR,
                          outputs=_array(V2_TENSOR))
DURATION = _object(("count", "ns"), count=_INT, ns=_INT)
TRITON_STATS = _object(("model_stats",), model_stats=_array(_object(
    ("name", "version", "inference_count", "execution_count", "inference_stats", "batch_stats"), name=_STR,
    version=_STR, last_inference=_INT, inference_count=_INT, execution_count=_INT,
    inference_stats=_object(("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"),
                            success=DURATION, fail=DURATION, queue=DURATION, compute_input=DURATION,
                            compute_infer=DURATION, compute_output=DURATION),
    batch_stats=_array(_object(("batch_size", "compute_infer"), batch_size=_INT, compute_infer=DURATION)))))
TRITON_CONFIG = _object(("name", "platform", "max_batch_size", "input", "output"), name=_STR, platform=_STR,
                        backend=_STR, max_batch_size=_INT,
                        input=_array(_object(("name", "data_type", "dims"), name=_STR, data_type=_STR,
                                             dims=_array(_INT))),
                        output=_array(_object(("name", "data_type", "dims"), name=_STR, data_type=_STR,
                                              dims=_array(_INT))),
                        dynamic_batching=_object(max_queue_delay_microseconds=_INT),
                        instance_group=_array(_object(("kind", "count"), kind=_STR, count=_INT)), parameters=_OBJ)
TRITON_INDEX = _array(_object(("name", "state"), name=_STR, version=_STR, state=_STR, reason=_STR))
KSERVE_PREDICT = _object(("instances",), instances=_array({"anyOf": [_STR, _array(_STR, minItems=2, maxItems=2),
                                                                     PAIR_OBJECT]}),
                         return_probabilities=_BOOL, return_raw_logits=_BOOL)
KSERVE_ANSWER = _object(("predictions",), predictions=_array({"anyOf": [_INT, {"type": "object",
                                                                              "additionalProperties": _NUM}]}))
READY = _object(("ready",), ready=_BOOL, name=_STR)


@dataclass(frozen=True)
class RouteDoc:
    protocol: str
    summary: str
    request: dict | None = None  # JSON Schema of the body; None: no body
    response: dict | None = None  # JSON Schema of a 200 JSON answer; None: not JSON (see media_type)
    example: str | None = None  # a request body, the one the parser's error messages show
    media_type: str = "application/json"


TEI_API, HF, V2, TRITON, KSERVE, SERVER = ("text-embeddings-inference", "Hugging Face Inference API",
                                       "Open Inference Protocol v2", "Triton extensions", "KServe v1", "server")
_INFER_BINARY = ("; with Inference-Header-Content-Length the body is that many bytes of JSON, then the tensors' "
                 "raw bytes")
ROUTE_DOCS: dict[tuple[str, str], RouteDoc] = {
    ("POST", "/predict"): RouteDoc(TEI_API, "Classify texts or text pairs: every label with its score", TEI_PREDICT,
                                   TEI_PREDICT_ANSWER, tei.EXAMPLE),
    ("POST", "/models/{name}/predict"): RouteDoc(TEI_API, "/predict of one named model", TEI_PREDICT, TEI_PREDICT_ANSWER,
                                                 tei.EXAMPLE),
    ("POST", "/rerank"): RouteDoc(TEI_API, "Rank texts against a query (one-logit cross-encoders)", TEI_RERANK,
                                  TEI_RERANK_ANSWER, tei.RERANK_EXAMPLE),
    ("POST", "/models/{name}/rerank"): RouteDoc(TEI_API, "/rerank of one named model", TEI_RERANK, TEI_RERANK_ANSWER,
                                                tei.RERANK_EXAMPLE),
    ("GET", "/info"): RouteDoc(TEI_API, "The default model, its labels, engine and the server's limits", None, INFO),
    ("GET", "/models/{name}/info"): RouteDoc(TEI_API, "/info of one named model", None, INFO),
    ("GET", "/health"): RouteDoc(TEI_API, "200 once every model is warmed up, 503 before and while draining",
                                 media_type="text/plain"),
    ("POST", "/"): RouteDoc(HF, "Text classification as InferenceClient.text_classification sends it", HF_REQUEST,
                            HF_ANSWER, hf.EXAMPLE),
    ("POST", "/models/{name}"): RouteDoc(HF, "Text classification of one named model", HF_REQUEST, HF_ANSWER,
                                         hf.EXAMPLE),
    ("GET", "/v2/health/live"): RouteDoc(V2, "Liveness (no API key needed)", None, _object(("live",), live=_BOOL)),
    ("GET", "/v2/health/ready"): RouteDoc(V2, "Readiness", None, READY),
    ("GET", "/v2"): RouteDoc(V2, "Server metadata and extensions", None,
                             _object(("name", "version", "extensions"), name=_STR, version=_STR,
                                     extensions=_array(_STR))),
    ("GET", "/v2/models/{name}"): RouteDoc(V2, "Model metadata: its input and output tensors", None, V2_MODEL),
    ("GET", "/v2/models/{name}/versions/{version}"): RouteDoc(V2, "Model metadata (every version is 1)", None,
                                                              V2_MODEL),
    ("GET", "/v2/models/{name}/ready"): RouteDoc(V2, "Model readiness", None, READY),
    ("GET", "/v2/models/{name}/versions/{version}/ready"): RouteDoc(V2, "Model readiness", None, READY),
    ("POST", "/v2/models/{name}/infer"): RouteDoc(V2, "Inference: BYTES `text` (and `text_pair`) in; `logits`, "
                                                      "`probabilities`, `label` out" + _INFER_BINARY, V2_INFER,
                                                  V2_INFER_ANSWER, v2.EXAMPLE),
    ("POST", "/v2/models/{name}/versions/{version}/infer"): RouteDoc(V2, "Inference (every version is 1)", V2_INFER,
                                                                     V2_INFER_ANSWER, v2.EXAMPLE),
    ("GET", "/v2/models/stats"): RouteDoc(TRITON, "Statistics of every model: counts and cumulative ns per stage",
                                          None, TRITON_STATS),
    ("GET", "/v2/models/{name}/stats"): RouteDoc(TRITON, "Statistics of one model", None, TRITON_STATS),
    ("GET", "/v2/models/{name}/versions/{version}/stats"): RouteDoc(TRITON, "Statistics of one model", None,
                                                                    TRITON_STATS),
    ("GET", "/v2/models/{name}/config"): RouteDoc(TRITON, "Triton's model configuration of a served model", None,
                                                  TRITON_CONFIG),
    ("GET", "/v2/models/{name}/versions/{version}/config"): RouteDoc(TRITON, "Model configuration", None,
                                                                     TRITON_CONFIG),
    ("POST", "/v2/repository/index"): RouteDoc(TRITON, "Every model and its state (READY, LOADING, UNAVAILABLE)",
                                               _object(ready=_BOOL), TRITON_INDEX, '{"ready": true}'),
    ("POST", "/v1/models/{name}:predict"): RouteDoc(KSERVE, "KServe v1 prediction, as KServe's Hugging Face runtime "
                                                            "answers: label indices, or scores on request",
                                                    KSERVE_PREDICT, KSERVE_ANSWER, kserve.EXAMPLE),
    ("GET", "/v1/models/{name}"): RouteDoc(KSERVE, "KServe v1 model readiness", None, READY),
    ("GET", "/"): RouteDoc(KSERVE, "KServe v1 liveness (no API key needed)", None,
                           _object(("status",), status={"const": "alive"})),
    ("GET", "/v1/models"): RouteDoc(KSERVE, "KServe v1 model list", None, _object(("models",), models=_array(_STR))),
    ("GET", "/metrics"): RouteDoc(SERVER, "Prometheus metrics: requests, batches, stages, process",
                                  media_type="text/plain"),
    ("GET", "/openapi.json"): RouteDoc(SERVER, "This schema", None, _object(("openapi", "paths"), openapi=_STR,
                                                                             paths=_OBJ)),
    ("GET", "/docs"): RouteDoc(SERVER, "The routes of this schema as a page", media_type="text/html"),
}


def app_routes(routes) -> list[tuple[str, str]]:
    """(method, path) of every Starlette route, HEAD (added by Starlette to GET) left out."""
    return [(method, route.path) for route in routes for method in sorted(route.methods or ()) if method != "HEAD"]


def openapi_schema(routes, version: str) -> dict:
    """The OpenAPI 3.1 document of `routes` (the app's). KeyError names a route without ROUTE_DOCS."""
    paths: dict[str, dict] = {}
    for method, path in app_routes(routes):
        doc = ROUTE_DOCS.get((method, path))
        if doc is None:
            raise KeyError(f"route {method} {path} has no entry in serve/openapi.py ROUTE_DOCS")
        operation: dict = {"summary": doc.summary, "tags": [doc.protocol],
                           "parameters": [{"name": name, "in": "path", "required": True, "schema": _STR}
                                          for name in _path_parameters(path)]}
        if doc.request is not None:
            content = {"schema": doc.request}
            if doc.example is not None:
                content["example"] = doc.example
            operation["requestBody"] = {"required": method == "POST" and path != "/v2/repository/index",
                                        "content": {"application/json": content}}
        answer = {"schema": doc.response} if doc.response is not None else {}
        operation["responses"] = {
            "200": {"description": "success", "content": {doc.media_type: answer}},
            "default": {"description": "an error: one line naming the problem and the fix",
                        "content": {"application/json": {"schema": ERROR}}}}
        paths.setdefault(path, {})[method.lower()] = operation
    return {"openapi": "3.1.0", "info": {"title": "roberta-deploy", "version": version}, "paths": paths}


def route_summaries(routes) -> list[tuple[str, str, str]]:
    """(method, path, summary) of every route, for the docs page and anything else that lists the routes."""
    return [(method, path, ROUTE_DOCS[(method, path)].summary) for method, path in app_routes(routes)]


def docs_page(routes, version: str) -> str:
    """A self-contained HTML page (no external scripts: clusters are often offline) of the routes by protocol."""
    rows = "".join(f"<tr><td>{html.escape(ROUTE_DOCS[(method, path)].protocol)}</td><td><code>{method}</code></td>"
                   f"<td><code>{html.escape(path)}</code></td><td>{html.escape(summary)}</td></tr>"
                   for method, path, summary in route_summaries(routes))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>roberta-deploy {html.escape(version)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;text-align:left}"
            "tr:nth-child(even){background:#f4f4f4}</style></head><body>"
            f"<h1>roberta-deploy {html.escape(version)}</h1><p>The full schema, with request and response shapes: "
            "<a href='openapi.json'>openapi.json</a>.</p><table><tr><th>protocol</th><th>method</th><th>path</th>"
            f"<th>what</th></tr>{rows}</table></body></html>")


def _path_parameters(path: str) -> list[str]:
    return [part[1:part.index("}")] for part in path.replace(":", "/").split("/") if part.startswith("{")]


def openapi_routes(app: ServingApp) -> list[Route]:
    """/openapi.json and /docs of the app that serves them (request.app: every route set's routes)."""

    async def schema(request: Request) -> Response:
        return Response(dump_json(openapi_schema(request.app.routes, app.version)), media_type=JSON)

    async def docs(request: Request) -> Response:
        return HTMLResponse(docs_page(request.app.routes, app.version))

    return [Route("/openapi.json", app.endpoint("/openapi.json", TEI, schema, needs_key=False, counted=False),
                  methods=["GET"]),
            Route("/docs", app.endpoint("/docs", TEI, docs, needs_key=False, counted=False), methods=["GET"])]
