"""KServe's v1 protocol, as its Hugging Face runtime answers a sequence-classification model.

POST /v1/models/NAME:predict {"instances": ["text", ...]} (or "inputs") -> {"predictions": [label index, ...]},
the argmax of each row as the runtime sends it by default. The runtime's --return_probabilities and
--return_raw_logits are server flags there; here a request asks with "return_probabilities": true
({"0": p0, "1": p1, ...} per row, rounded to 4 decimals, as the runtime rounds them) or "return_raw_logits": true.
A sentence pair is an instance ["text", "text_pair"] or {"text", "text_pair"} (the runtime takes texts only).
GET /v1/models/NAME -> {"name", "ready"}; GET /v1/models -> {"models": [names]}; GET / -> {"status": "alive"}
(KServe's liveness, which its v1 client reads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InputDataError
from ..runtime.tokenization import text_input_from_dict
from ..tasks import Task
from .options import Limits
from .payload import check_texts, dump_json, optional_bool, parse_json
from .serving import JSON, V2, ServingApp

EXAMPLE = '{"instances": ["酒店很干净", "房间太小了"]}'


@dataclass(frozen=True)
class PredictRequest:
    texts: list  # a text, or a (text, text_pair) tuple, per instance
    return_probabilities: bool
    return_raw_logits: bool


def parse_predict(body: Any, limits: Limits) -> PredictRequest:
    if not isinstance(body, dict) or not ("instances" in body or "inputs" in body):
        raise InputDataError("the request has no `instances`", f"send a JSON object such as {EXAMPLE}")
    field = "instances" if "instances" in body else "inputs"
    instances = body[field]
    if not isinstance(instances, list):
        raise InputDataError(f"`{field}` is {type(instances).__name__}, not a list of texts", f"send {EXAMPLE}")
    probabilities = bool(optional_bool(body.get("return_probabilities"), "return_probabilities"))
    raw_logits = bool(optional_bool(body.get("return_raw_logits"), "return_raw_logits"))
    if probabilities and raw_logits:
        raise InputDataError("`return_probabilities` and `return_raw_logits` are both true",
                             "ask for one of them (or neither, for the label index)")
    texts = check_texts([_instance(item, index) for index, item in enumerate(instances)], limits, field)
    return PredictRequest(texts=texts, return_probabilities=probabilities, return_raw_logits=raw_logits)


def _instance(item: Any, index: int) -> Any:
    if isinstance(item, dict):
        return text_input_from_dict(item)
    if isinstance(item, list):
        if len(item) == 2:
            return (item[0], item[1])
        raise InputDataError(f"instance {index} is a list of {len(item)} items",
                             'send a text, or a pair as ["text", "text_pair"]')
    return item


def format_predict(request: PredictRequest, logits: np.ndarray, task: Task) -> dict:
    if request.return_raw_logits:
        rows = [{str(index): float(value) for index, value in enumerate(row)} for row in logits]
    elif request.return_probabilities:
        rows = [{str(index): round(float(value), 4) for index, value in enumerate(row)} for row in task.scores(logits)]
    else:
        rows = [int(index) for index in logits.argmax(axis=1)]
    return {"predictions": rows}


def model_status(name: str, ready: bool) -> dict:
    return {"name": name, "ready": ready}


def kserve_routes(app: ServingApp) -> list[Route]:
    state, limits = app.state, app.limits

    async def predict(request: Request) -> Response:
        model = state.model(request.path_params["name"])

        def answer(parsed, result, total_s) -> Response:
            return Response(dump_json(format_predict(parsed, result.logits, model.task)), media_type=JSON)

        return await app.infer(request, model, lambda body: parse_predict(parse_json(body, EXAMPLE), limits), answer)

    async def model_ready(request: Request) -> Response:
        model = state.model(request.path_params["name"])
        ready = state.accepting and model.ready
        return Response(dump_json(model_status(model.name, ready)), status_code=200 if ready else 503,
                        media_type=JSON)

    async def models(request: Request) -> Response:
        return Response(dump_json({"models": list(state.names)}), media_type=JSON)

    async def live(request: Request) -> Response:
        return Response(dump_json({"status": "alive"}), media_type=JSON)

    return [Route("/v1/models/{name}:predict", app.endpoint("/v1/predict", V2, predict), methods=["POST"]),
            Route("/v1/models/{name}", app.endpoint("/v1/models", V2, model_ready, counted=False), methods=["GET"]),
            Route("/v1/models", app.endpoint("/v1/models", V2, models, counted=False), methods=["GET"]),
            Route("/", app.endpoint("/", V2, live, needs_key=False, counted=False), methods=["GET"])]
