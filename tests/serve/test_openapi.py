"""/openapi.json and /docs: every route the app serves is in the schema with its request and response shapes,
and each route's live answer to its documented example validates against its documented response schema.
One in-process server over the fake engine (no weights) serves the module."""

from __future__ import annotations

import html
import json

import jsonschema
import pytest
from serve_client import call

from roberta_deploy.serve.options import Limits

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
from fake_server import KEY, RunningServer  # noqa: E402  (after the skip: it imports the serve extra)
from starlette.routing import Route  # noqa: E402

from roberta_deploy.serve import openapi  # noqa: E402
from roberta_deploy.serve.app import ServerState, create_app  # noqa: E402

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    running = RunningServer(api_key=KEY, limits=Limits(max_client_batch_size=4))
    running.wait_ready(headers=AUTH)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def schema(server) -> dict:
    status, headers, body = call(server.port, "GET", "/openapi.json")  # no key needed, as TEI's
    assert status == 200 and headers["content-type"].startswith("application/json")
    return json.loads(body)


def app_routes() -> list[tuple[str, str]]:
    return openapi.app_routes(create_app(ServerState(names=("fake",))).routes)


def test_every_route_of_the_app_is_in_the_schema_with_its_shapes(schema):
    routes = app_routes()
    assert len(routes) >= 30
    for method, path in routes:
        operation = schema["paths"][path][method.lower()]
        assert operation["summary"] and operation["tags"]
        answer = operation["responses"]["200"]["content"]
        if openapi.ROUTE_DOCS[(method, path)].media_type == "application/json":
            jsonschema.Draft202012Validator.check_schema(answer["application/json"]["schema"])
        if method == "POST":
            request = operation["requestBody"]["content"]["application/json"]
            jsonschema.Draft202012Validator.check_schema(request["schema"])
            jsonschema.validate(json.loads(request["example"]), request["schema"])  # the example fits its schema
        names = [parameter["name"] for parameter in operation["parameters"]]
        assert names == [part[1:-1] for part in path.replace(":", "/").split("/") if part.startswith("{")]
    assert sum(len(methods) for methods in schema["paths"].values()) == len(routes)  # nothing but the app's routes


def test_a_route_without_documentation_fails_the_schema():
    routes = [*create_app(ServerState(names=("fake",))).routes, Route("/undocumented", lambda request: None)]
    with pytest.raises(KeyError, match="GET /undocumented"):
        openapi.openapi_schema(routes, "0")


def concrete(path: str) -> str:
    return path.replace("{name}", "fake").replace("{version}", "1")


def test_every_json_answer_validates_against_its_documented_schema(server, schema):
    checked = 0
    for method, path in app_routes():
        doc = openapi.ROUTE_DOCS[(method, path)]
        if doc.response is None:
            continue
        if method == "POST":
            example = json.loads(doc.example)
            if path.endswith("rerank"):
                continue  # needs a one-logit model; tests/serve/test_serve_tasks.py serves one
            status, _, body = call(server.port, "POST", concrete(path), example, headers=AUTH)
        else:
            status, _, body = call(server.port, "GET", concrete(path), headers=AUTH)
        assert status == 200, (method, path, body)
        jsonschema.validate(json.loads(body), doc.response)
        checked += 1
    assert checked >= 25


def test_docs_page_lists_every_route(server):
    status, headers, body = call(server.port, "GET", "/docs")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    for method, path in app_routes():
        assert f"<code>{method}</code></td><td><code>{html.escape(path)}</code>" in page
    assert "<script" not in page  # self-contained: clusters are often offline
