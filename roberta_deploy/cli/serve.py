"""`roberta-deploy serve` and `roberta-deploy loadtest`: the command-line faces of roberta_deploy.serve and
roberta_deploy.serve.loadtest. Only these functions print."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.table import Table
from rich.text import Text

from .. import flags
from ..data import TEXT_PAIR_COLUMN_CANDIDATES, read_dataset
from ..errors import UsageError
from ..serve.options import API_KEY_ENV, ServeOptions, api_key_from
from .app import INPUT, LIMITS, MODEL, OUTPUT, SERVER, command, examples
from .common import data_path, parse_int_list
from .console import console, status_console
from .exits import reports_errors
from .serving_flags import RayFlags, ServeFlags, with_ray_flags, with_serve_flags

LOADTEST_PAIR_HELP = ("Column holding the second text of a sentence pair, sent as each protocol sends pairs "
                      "(default: the pair columns " + ", ".join(f"{first}/{second}" for first, second in
                                                              TEXT_PAIR_COLUMN_CANDIDATES) + " when present).")
EXAMPLE_TEXT = "酒店很干净"  # the curl line's text when the caller has none of the model's own data

# What the server answers, printed once it is ready (docs/serving.md has the full table).
ROUTES = (("POST /predict", "text-embeddings-inference: every label with its score"),
          ("POST /", "Hugging Face text classification (InferenceClient)"),
          ("POST /v2/models/{name}/infer", "Open Inference Protocol (tritonclient)"),
          ("GET  /info, /health, /v2/health/ready", "the model; readiness"),
          ("GET  /metrics", "Prometheus"))


def endpoint_printer(options: ServeOptions, example_text: str = EXAMPLE_TEXT) -> Callable[[str], None]:
    """What `serve` and `deploy` print once the server is ready: where, its routes, and a curl line to try."""
    name = options.bundles[0].name

    def print_endpoint(url: str) -> None:
        served = ", ".join(bundle.name for bundle in options.bundles)
        console.print(f"serving {served} at {url} (Ctrl-C or SIGTERM stops it; accepted requests are answered first)")
        routes = [(route.replace("{name}", name), what) for route, what in ROUTES]
        width = max(len(route) for route, _ in routes)
        for route, what in routes:
            console.print(f"  {route:{width}}  {what}")
        key = f" -H \"Authorization: Bearer ${API_KEY_ENV}\"" if options.api_key else ""
        body = shlex.quote(json.dumps({"inputs": example_text}, ensure_ascii=False))
        console.print(f"try: curl -s {url}/predict -H 'Content-Type: application/json'{key} -d {body}")

    return print_endpoint


def require_serve_extra() -> None:
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise UsageError(f"serving needs {error.name}, which is not installed",
                         "pip install 'roberta-deploy[serve]'") from None


def event_printer() -> Callable[[str], None]:
    started = time.perf_counter()
    return lambda message: status_console.print(
        Text.assemble((f"{time.perf_counter() - started:6.1f}s", "dim"), f" {message}"))


@command("serve", epilog=examples(
    "roberta-deploy serve --bundle deployments/model/bundles/openvino-int8 --port 8080",
    "roberta-deploy serve --bundle sentiment=bundles/a --bundle topics=bundles/b --port 0",
    "roberta-deploy serve --ray --bundle bundle --replicas 2 --port 8000   # pip install 'roberta-deploy[ray]'"))
@reports_errors
@with_ray_flags
@with_serve_flags
def serve_command(
    bundle: Annotated[list[str], typer.Option(help="Bundle folder to serve, or NAME=PATH; repeat to serve several "
                                                   "models from one process, each with its own batcher. The first "
                                                   "answers /predict and /.", rich_help_panel=MODEL)],
    serve_flags: ServeFlags,
    ray_flags: RayFlags,
) -> None:
    """Serve bundles over HTTP: text-embeddings-inference's /predict, Hugging Face's text classification at /,
    the Open Inference Protocol (v2) and Prometheus /metrics, with dynamic batching; with --ray, as Ray Serve
    replicas across a cluster."""
    require_serve_extra()
    options = serve_flags.options(bundle)
    ray_options = ray_flags.options(options)
    if ray_options is None:
        from ..serve.server import serve

        serve(options, on_event=event_printer(), on_ready=endpoint_printer(options))
        return
    from ..serve.ray_deployment import serve_until_stopped

    serve_until_stopped(options, ray_options, on_event=event_printer(), on_ready=endpoint_printer(options))


@command("loadtest", epilog=examples(
    "roberta-deploy loadtest http://127.0.0.1:8080 --data roberta_deploy/demo/samples.tsv --concurrency 1,8 "
    "--duration 5",
    "roberta-deploy loadtest http://127.0.0.1:8080 --data dev.tsv --request-rate 50,100 --protocol v2 --output lt"))
@reports_errors
def loadtest_command(
    url: Annotated[str, typer.Argument(help="Server to load, e.g. http://127.0.0.1:8080.")],
    data: Annotated[Path, typer.Option(help="Texts to send (TSV/CSV/JSONL, as infer reads them), cycled; - reads "
                                            "stdin.", rich_help_panel=INPUT)],
    concurrency: Annotated[str, typer.Option(help="Closed loop: comma-separated numbers of clients, each sending "
                                                  "its next request when the last is answered. '' for none.",
                                             rich_help_panel=LIMITS)] = "1,8,32,64",
    request_rate: Annotated[Optional[str], typer.Option(help="Open loop: comma-separated request rates (per "
                                                             "second) sent on schedule whatever the server's "
                                                             "speed, as perf_analyzer --request-rate-range.",
                                                        rich_help_panel=LIMITS)] = None,
    duration: Annotated[float, typer.Option(help="Timed seconds per level.", rich_help_panel=LIMITS),
                        flags.SECONDS] = 10.0,
    warmup: Annotated[float, typer.Option(help="Seconds per level sent before timing starts.",
                                          rich_help_panel=LIMITS), flags.SECONDS] = 1.0,
    texts_per_request: Annotated[int, typer.Option(help="Texts in each request.", rich_help_panel=INPUT),
                                 flags.COUNT] = 1,
    protocol: Annotated[str, typer.Option(help="predict (text-embeddings-inference), hf (POST /) or v2 (Open "
                                               "Inference Protocol).", rich_help_panel=SERVER)] = "predict",
    model: Annotated[Optional[str], typer.Option(help="v2 model name (default: the server's first).",
                                                 rich_help_panel=SERVER)] = None,
    api_key: Annotated[Optional[str], typer.Option(help=f"Bearer key (default: ${API_KEY_ENV}).",
                                                   rich_help_panel=SERVER)] = None,
    output: Annotated[Optional[Path], typer.Option(help="Folder for loadtest.json, loadtest.md and loadtest.png.",
                                                   rich_help_panel=OUTPUT)] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.", rich_help_panel=OUTPUT)]
        = False,
    text_column: Annotated[Optional[str], typer.Option(help="Column holding the text.", rich_help_panel=INPUT)]
        = None,
    text_pair_column: Annotated[Optional[str], typer.Option(help=LOADTEST_PAIR_HELP, rich_help_panel=INPUT)] = None,
) -> None:
    """Measure a running server: throughput, p50/p90/p99 latency and errors per load level."""
    from ..serve.loadtest import LoadtestOptions, describe_level, run_loadtest, write_report

    rates = ()
    if request_rate:
        try:
            rates = tuple(float(part) for part in request_rate.split(",") if part.strip())
        except ValueError:
            raise UsageError(f"--request-rate {request_rate!r} is not a comma-separated list of numbers",
                             "pass e.g. --request-rate 10,50") from None
    with data_path(data) as readable:
        texts = tuple(read_dataset(readable, text_column=text_column, text_pair_column=text_pair_column,
                                   ignore_labels=True).inputs)
    options = LoadtestOptions(
        url=url, texts=texts,
        concurrency=parse_int_list(concurrency, "--concurrency") if concurrency.strip() else (),
        request_rates=rates, duration=duration, warmup=warmup, texts_per_request=texts_per_request,
        protocol=protocol, model=model, api_key=api_key_from(api_key))
    if output is not None and output.exists() and any(output.iterdir()) and not overwrite:
        raise UsageError(f"{output} already exists and is not empty", "pass --overwrite or another --output")
    table = Table(title=f"loadtest {url} ({protocol}, {texts_per_request} text(s)/request, {duration:g} s per level)")
    for column in ("load", "requests/s", "texts/s", "p50 ms", "p90 ms", "p99 ms", "answered", "errors"):
        table.add_column(column, justify="right")

    def on_level(result) -> None:
        latency = result.latency_ms
        status_console.print(f"{describe_level(result)}: {result.requests_per_second:.1f} requests/s, "
                             f"p99 {latency.get('p99', float('nan')):.1f} ms, {result.errors} errors", highlight=False)
        table.add_row(describe_level(result), f"{result.requests_per_second:.1f}", f"{result.texts_per_second:.1f}",
                      *(f"{latency[name]:.1f}" if latency else "-" for name in ("p50", "p90", "p99")),
                      str(result.requests), str(result.errors))

    results = run_loadtest(options, on_level=on_level)
    console.print(table)
    if output is not None:
        write_report(results, options, output, overwrite=overwrite)
        console.print(f"wrote {output}")
