"""`roberta-deploy serve` and `roberta-deploy loadtest`: the command-line faces of roberta_deploy.serve and
roberta_deploy.loadtest. cli.py registers both; only these functions print."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import UsageError
from .serve.options import API_KEY_ENV, BatchingOptions, Limits

console = Console()
status_console = Console(stderr=True)
_DEFAULT_LIMITS = Limits()


def _require_serve_extra() -> None:
    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise UsageError(f"serving needs {error.name}, which is not installed",
                         "pip install 'roberta-deploy[serve]'") from None


def _event_printer() -> Callable[[str], None]:
    started = time.perf_counter()
    return lambda message: status_console.print(f"[dim]{time.perf_counter() - started:6.1f}s[/dim] {message}",
                                                highlight=False, soft_wrap=True)


def serve_command(
    bundle: Annotated[list[str], typer.Option(help="Bundle folder to serve, or NAME=PATH; repeat to serve several "
                                                   "models from one process, each with its own batcher. The first "
                                                   "answers /predict and /.")],
    host: Annotated[str, typer.Option(help="Address to listen on. 127.0.0.1 keeps the server private to this "
                                           "machine; 0.0.0.0 exposes it (set --api-key then).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one (printed at start).")] = 8080,
    name: Annotated[Optional[str], typer.Option(help="Model name for a single --bundle PATH (default: the "
                                                     "folder's name); used in /v2/models/NAME.")] = None,
    max_batch_tokens: Annotated[Optional[int], typer.Option(
        help="Padded tokens (rows x padded length) per engine batch. Bounds memory and the latency of one "
             "batch; too small and concurrent requests cannot share a batch (default: one full-length batch "
             "split across the contexts).")] = None,
    max_wait_ms: Annotated[float, typer.Option(
        help="How long a partial batch waits for more requests. Higher merges more requests into a batch "
             "(throughput) at the cost of latency when the server is quiet.")] = 2.0,
    max_concurrent_requests: Annotated[int, typer.Option(
        help="Requests in flight at once; past it the server answers 429 with Retry-After at once instead of "
             "queueing without bound.")] = _DEFAULT_LIMITS.max_concurrent_requests,
    max_client_batch_size: Annotated[int, typer.Option(
        help="Texts in one request; more is answered 422.")] = _DEFAULT_LIMITS.max_client_batch_size,
    payload_limit: Annotated[int, typer.Option(
        help="Bytes in one request body; more is answered 413.")] = _DEFAULT_LIMITS.payload_limit,
    max_input_chars: Annotated[int, typer.Option(
        help="Characters in one text, checked before tokenizing; more is answered 422.")]
        = _DEFAULT_LIMITS.max_input_chars,
    auto_truncate: Annotated[bool, typer.Option(
        "--auto-truncate/--no-auto-truncate",
        help="Cut texts past the bundle's max_seq_length (as infer does) unless a /predict request sends "
             "\"truncate\": false; with --no-auto-truncate such texts are answered 422.")] = True,
    api_key: Annotated[Optional[str], typer.Option(
        help=f"Require 'Authorization: Bearer KEY' on every route but /v2/health/live (401 otherwise). Default: "
             f"the {API_KEY_ENV} environment variable, which keeps the key out of the process list.")] = None,
    contexts: Annotated[Optional[int], typer.Option(
        help="Engine contexts computing batches at once (default: one per core below 8 cores).")] = None,
) -> None:
    """Serve bundles over HTTP: text-embeddings-inference's /predict, Hugging Face's text classification at /,
    the Open Inference Protocol (v2) and Prometheus /metrics, with dynamic batching."""
    from .serve.options import ServeOptions, api_key_from, parse_bundle_specs

    _require_serve_extra()
    from .serve.server import Server, check_bundles

    options = ServeOptions(
        bundles=parse_bundle_specs(bundle, default_name=name), host=host, port=port, api_key=api_key_from(api_key),
        limits=Limits(max_concurrent_requests=max_concurrent_requests, max_client_batch_size=max_client_batch_size,
                      payload_limit=payload_limit, max_input_chars=max_input_chars, auto_truncate=auto_truncate),
        batching=BatchingOptions(max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, contexts=contexts))
    check_bundles(options)
    Server(options, on_event=_event_printer()).run()


def loadtest_command(
    url: Annotated[str, typer.Argument(help="Server to load, e.g. http://127.0.0.1:8080.")],
    data: Annotated[Path, typer.Option(help="Texts to send (TSV/CSV/JSONL, as infer reads them), cycled.")],
    concurrency: Annotated[str, typer.Option(help="Closed loop: comma-separated numbers of clients, each sending "
                                                  "its next request when the last is answered. '' for none.")]
        = "1,8,32,64",
    request_rate: Annotated[Optional[str], typer.Option(help="Open loop: comma-separated request rates (per "
                                                             "second) sent on schedule whatever the server's "
                                                             "speed, as perf_analyzer --request-rate-range.")]
        = None,
    duration: Annotated[float, typer.Option(help="Timed seconds per level.")] = 10.0,
    warmup: Annotated[float, typer.Option(help="Seconds per level sent before timing starts.")] = 1.0,
    texts_per_request: Annotated[int, typer.Option(help="Texts in each request.")] = 1,
    protocol: Annotated[str, typer.Option(help="predict (text-embeddings-inference), hf (POST /) or v2 (Open "
                                               "Inference Protocol).")] = "predict",
    model: Annotated[Optional[str], typer.Option(help="v2 model name (default: the server's first).")] = None,
    api_key: Annotated[Optional[str], typer.Option(help=f"Bearer key (default: ${API_KEY_ENV}).")] = None,
    output: Annotated[Optional[Path], typer.Option(help="Folder for loadtest.json, loadtest.md and loadtest.png.")]
        = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    text_column: Annotated[Optional[str], typer.Option(help="Column holding the text.")] = None,
) -> None:
    """Measure a running server: throughput, p50/p90/p99 latency and errors per load level."""
    from .cli import parse_int_list
    from .data import read_dataset
    from .loadtest import LoadtestOptions, describe_level, run_loadtest, write_report
    from .serve.options import api_key_from

    rates = ()
    if request_rate:
        try:
            rates = tuple(float(part) for part in request_rate.split(",") if part.strip())
        except ValueError:
            raise UsageError(f"--request-rate {request_rate!r} is not a comma-separated list of numbers",
                             "pass e.g. --request-rate 10,50") from None
    options = LoadtestOptions(
        url=url, texts=tuple(read_dataset(data, text_column=text_column).texts),
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
