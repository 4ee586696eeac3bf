"""Triton's extensions of the Open Inference Protocol: model configuration, statistics and the repository
index, as dicts that the HTTP routes send as JSON and the gRPC service (serve/grpc_server.py) turns into
Triton's protobuf messages, so both say the same.

Routes (tritonclient's `get_model_config`, `get_inference_statistics`, `get_model_repository_index`):
GET /v2/models/NAME/config, GET /v2/models/stats and /v2/models/NAME/stats, POST /v2/repository/index.
The configuration describes what this server really does: the batcher's batch limits, wait and contexts,
the tensors of serve/v2.py; Triton fields that mean nothing here are left out.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import RequestTooLargeError
from .models import ServedModel
from .options import Limits
from .payload import dump_json, parse_json
from .serving import V2, ServingApp
from .v2 import INPUT_NAME, PAIR_INPUT_NAME

JSON = "application/json"
INDEX_BODY_LIMIT = 1024
# What this server implements of Triton's and KServe's extension list (no load/unload, shared memory, trace).
EXTENSIONS = ("binary_tensor_data", "model_configuration", "statistics", "model_repository(index)")


def server_metadata(version: str) -> dict:
    """GET /v2 and gRPC ServerMetadata."""
    return {"name": "roberta-deploy", "version": version, "extensions": list(EXTENSIONS)}


def model_config(model: ServedModel, limits: Limits) -> dict:
    """Triton's ModelConfig of a served model. max_batch_size is the texts one request may send
    (--max-client-batch-size); dims exclude that batch dimension, as in Triton."""
    batcher, engine = model.batcher, model.engine
    labels = len(model.label_names)
    text_inputs = [INPUT_NAME] + ([PAIR_INPUT_NAME] if model.task.text_pairs else [])
    parameters = {"task": model.task.kind, "precision": engine.precision, "backend": engine.backend,
                  "max_seq_length": engine.max_seq_length, "max_batch_tokens": batcher.max_batch_tokens,
                  "engine_max_batch_size": batcher.max_batch_size, "labels": ",".join(model.label_names)}
    return {"name": model.name, "platform": model.platform, "backend": engine.backend,
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": limits.max_client_batch_size,
            "input": [{"name": name, "data_type": "TYPE_STRING", "dims": [1], "optional": name == PAIR_INPUT_NAME}
                      for name in text_inputs],
            "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [labels]},
                       {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [labels]},
                       {"name": "label", "data_type": "TYPE_STRING", "dims": [1]}],
            "dynamic_batching": {"max_queue_delay_microseconds": int(round(batcher.max_wait_s * 1_000_000))},
            "instance_group": [{"name": model.name, "kind": "KIND_CPU", "count": batcher.context_count}],
            "parameters": {key: {"string_value": str(value)} for key, value in parameters.items()}}


def model_statistics(state, name: str | None) -> dict:
    """{"model_stats": [...]} for one model, or every model warmed up when name is empty."""
    names = [state.model(name).name] if name else list(state.models)
    return {"model_stats": [state.metrics.statistics[model].as_dict(model) for model in names
                            if model in state.metrics.statistics]}


def repository_index(state, ready_only: bool = False) -> list[dict]:
    """Every model the server was started with: READY once warmed up, LOADING before (UNAVAILABLE once draining)."""
    index = []
    for name in state.names:
        model = state.models.get(name)
        if model is not None and model.ready and not state.draining:
            entry = {"name": name, "version": "1", "state": "READY", "reason": ""}
        elif state.draining:
            entry = {"name": name, "version": "1", "state": "UNAVAILABLE", "reason": "the server is shutting down"}
        else:
            entry = {"name": name, "version": "1", "state": "LOADING", "reason": "warming up"}
        if entry["state"] == "READY" or not ready_only:
            index.append(entry)
    return index


def triton_routes(app: ServingApp) -> list[Route]:
    """The Triton routes (serve/app.py's ROUTE_SETS puts them before the v2 routes: /v2/models/{name} would
    take "stats" for a model name)."""
    state = app.state

    async def config(request: Request) -> Response:
        model = state.model(request.path_params["name"])
        return Response(dump_json(model_config(model, state.limits)), media_type=JSON)

    async def stats(request: Request) -> Response:
        return Response(dump_json(model_statistics(state, request.path_params.get("name"))), media_type=JSON)

    async def index(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():  # at most {"ready": true}: no need for the payload limit's bytes
            body += chunk
            if len(body) > INDEX_BODY_LIMIT:
                raise RequestTooLargeError(f"a repository index request has more than {INDEX_BODY_LIMIT} bytes",
                                           'send {"ready": true} or an empty body')
        ready_only = False
        if body.strip():
            parsed = parse_json(body, '{"ready": true}')
            ready_only = bool(isinstance(parsed, dict) and parsed.get("ready"))
        return Response(dump_json(repository_index(state, ready_only)), media_type=JSON)

    def uncounted(route: str, handler):
        return app.endpoint(route, V2, handler, counted=False)

    return [Route("/v2/models/stats", uncounted("/v2/models/stats", stats), methods=["GET"]),
            Route("/v2/models/{name}/config", uncounted("/v2/models/config", config), methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/config", uncounted("/v2/models/config", config),
                  methods=["GET"]),
            Route("/v2/models/{name}/stats", uncounted("/v2/models/stats", stats), methods=["GET"]),
            Route("/v2/models/{name}/versions/{version}/stats", uncounted("/v2/models/stats", stats),
                  methods=["GET"]),
            Route("/v2/repository/index", uncounted("/v2/repository/index", index), methods=["POST"])]
