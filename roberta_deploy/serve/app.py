"""The ASGI app: every protocol's routes (serve/routes.py) over one ServingApp (serve/serving.py).

A protocol adds its routes by adding a route set, a function ServingApp -> routes, to ROUTE_SETS.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Callable, Iterable

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from .kserve import kserve_routes
from .openapi import openapi_routes
from .routes import hf_routes, server_routes, tei_routes, v2_routes
from .serving import ServerState, ServingApp, method_not_allowed, not_found
from .triton import triton_routes

__all__ = ["ROUTE_SETS", "ServerState", "create_app"]

RouteSet = Callable[[ServingApp], Iterable[BaseRoute]]
# Triton's before v2's: /v2/models/{name} would take /v2/models/stats for a model named "stats".
ROUTE_SETS: tuple[RouteSet, ...] = (tei_routes, hf_routes, triton_routes, v2_routes, kserve_routes, server_routes,
                                    openapi_routes)


def create_app(state: ServerState, route_sets: Iterable[RouteSet] = ROUTE_SETS,
               executor: Executor | None = None) -> Starlette:
    """The Starlette app of `state`: every route of every route set. `executor` runs parsing, tokenizing and
    encoding (default: a pool of one thread per core, made here)."""
    serving = ServingApp(state, executor)
    routes = [route for route_set in route_sets for route in route_set(serving)]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
    app.state.serving = serving
    return app
