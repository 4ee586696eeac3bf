"""Load a running server the way its clients would: closed-loop clients at fixed concurrency levels, and an
open loop at fixed request rates (perf_analyzer's --concurrency-range and --request-rate-range).

A small asyncio HTTP/1.1 client with keep-alive sends the requests, so the load generator costs the
shared CPU as little as possible. Latency in the open loop runs from each request's scheduled time, so
a server that falls behind is not excused by a client that waited (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np

from ..atomic import atomic_directory
from ..errors import InputDataError, UsageError
from ..measurement import CpuLoad, machine_load, median_interval

PROTOCOLS = ("predict", "hf", "v2")
REPORT_JSON, REPORT_MARKDOWN, REPORT_PLOT = "loadtest.json", "loadtest.md", "loadtest.png"
LOADTEST_ROUNDS = 3  # each level's --duration is split into this many interleaved rounds
MAX_OPEN_CONNECTIONS = 1024  # open loop: requests past this many outstanding count as client-side errors


@dataclass(frozen=True)
class LoadtestOptions:
    url: str
    texts: tuple  # texts, or (text, text_pair) tuples for a pair model, cycled
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    request_rates: tuple[float, ...] = ()
    duration: float = 10.0  # timed seconds per level
    warmup: float = 1.0  # seconds per level sent but not counted
    texts_per_request: int = 1
    protocol: str = "predict"
    model: str | None = None  # v2 model name (default: the server's first model, read from /info)
    api_key: str | None = None
    timeout: float = 60.0  # seconds before one request counts as failed

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise UsageError(f"unknown --protocol {self.protocol!r}", f"use one of {', '.join(PROTOCOLS)}")
        if not self.texts:
            raise InputDataError("the data file holds no texts", "pass --data with at least one text")
        if self.duration <= 0 or self.warmup < 0 or self.timeout <= 0:
            raise UsageError("--duration and --timeout must be positive, --warmup zero or more",
                             "pass e.g. --duration 10 --warmup 1")
        if self.texts_per_request < 1:
            raise UsageError("--texts-per-request must be at least 1", "pass --texts-per-request 1")
        if not self.concurrency and not self.request_rates:
            raise UsageError("no load level to run", "pass --concurrency 1,8 and/or --request-rate 10,50")
        if any(rate <= 0 for rate in self.request_rates):
            raise UsageError("--request-rate needs positive rates", "pass e.g. --request-rate 10,50")
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise UsageError(f"{self.url!r} is not an http:// URL", "pass e.g. http://127.0.0.1:8080")


@dataclass
class LevelResult:
    mode: str  # "concurrency" (closed loop) or "rate" (open loop, requests/s)
    level: float
    requests: int  # answered with 200 inside the timed window
    errors: int
    errors_by_status: dict[str, int]
    seconds: float
    requests_per_second: float
    texts_per_second: float
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50 p90 p99 mean max
    # Interleaved rounds (measurement.py): requests_per_second is the median round's, with its interval, and
    # the share of the CPU other processes (the server too, when it runs here) took during each round.
    rounds: int = 1
    requests_per_second_interval: dict = field(default_factory=dict)
    others_cpu_share: list[float] = field(default_factory=list)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; `request` reconnects once if the server closed it."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in (headers or {}).items()]
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(payload)
                return await self._read_response()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if fresh or attempt:
                    raise
        raise ConnectionError("unreachable")  # pragma: no cover

    async def _read_response(self) -> tuple[int, dict[str, str], bytes]:
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def request_body(protocol: str, texts: Sequence) -> bytes:
    """One request of texts, or of (text, text_pair) tuples in each protocol's pair shape: [["a", "b"]] on
    /predict (TEI reads a flat ["a", "b"] as one pair, this server as two texts), {"text", "text_pair"}
    on Hugging Face's route, a second BYTES tensor `text_pair` on v2."""
    pairs = not isinstance(texts[0], str)
    if protocol == "v2":
        tensors = [("text", [text[0] for text in texts] if pairs else list(texts))]
        if pairs:
            tensors.append(("text_pair", [text[1] for text in texts]))
        body = {"inputs": [{"name": name, "shape": [len(data)], "datatype": "BYTES", "data": data}
                           for name, data in tensors]}
    elif protocol == "hf" and pairs:
        items = [{"text": first, "text_pair": second} for first, second in texts]
        body = {"inputs": items[0] if len(items) == 1 else items}
    elif pairs:
        body = {"inputs": [[first, second] for first, second in texts]}
    else:
        body = {"inputs": texts[0] if len(texts) == 1 else list(texts)}
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


class _Load:
    """Requests of one protocol, cycling through the texts."""

    def __init__(self, options: LoadtestOptions, model: str | None):
        parts = urlsplit(options.url)
        self.host, self.port = parts.hostname, parts.port or 80
        prefix = parts.path.rstrip("/")
        self.path = {"predict": f"{prefix}/predict", "hf": f"{prefix}/",
                     "v2": f"{prefix}/v2/models/{model}/infer"}[options.protocol]
        self.headers = {"Content-Type": "application/json"}
        if options.api_key:
            self.headers["Authorization"] = f"Bearer {options.api_key}"
        self.options = options
        per = options.texts_per_request
        texts = options.texts
        self.bodies = [request_body(options.protocol, [texts[(start + k) % len(texts)] for k in range(per)])
                       for start in range(0, len(texts), per)]
        self.next_body = 0

    def body(self) -> bytes:
        body = self.bodies[self.next_body % len(self.bodies)]
        self.next_body += 1
        return body

    async def send(self, connection: HttpConnection) -> int:
        try:
            status, _, _ = await asyncio.wait_for(connection.request("POST", self.path, self.body(), self.headers),
                                                  self.options.timeout)
            return status
        except asyncio.TimeoutError:
            connection.close()
            return -1  # timed out
        except (OSError, asyncio.IncompleteReadError, ValueError):
            connection.close()
            return -2  # connection failed


class _Recorder:
    def __init__(self, timed_from: float, timed_until: float):
        self.timed_from, self.timed_until = timed_from, timed_until
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}

    def record(self, started: float, finished: float, status: int) -> None:
        if not self.timed_from <= started < self.timed_until:
            return
        if status == 200:
            self.latencies.append(finished - started)
        else:
            key = {-1: "timeout", -2: "connection"}.get(status, str(status))
            self.statuses[key] = self.statuses.get(key, 0) + 1


async def _closed_loop(load: _Load, concurrency: int, warmup: float, duration: float) -> _Recorder:
    loop = asyncio.get_running_loop()
    start = loop.time()
    recorder = _Recorder(start + warmup, start + warmup + duration)

    async def client() -> None:
        connection = HttpConnection(load.host, load.port)
        try:
            while loop.time() < recorder.timed_until:
                sent = loop.time()
                status = await load.send(connection)
                recorder.record(sent, loop.time(), status)
        finally:
            connection.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return recorder


async def _open_loop(load: _Load, rate: float, warmup: float, duration: float) -> _Recorder:
    loop = asyncio.get_running_loop()
    start = loop.time()
    recorder = _Recorder(start + warmup, start + warmup + duration)
    idle: list[HttpConnection] = []
    outstanding: set[asyncio.Task] = set()

    async def one(scheduled: float) -> None:
        connection = idle.pop() if idle else HttpConnection(load.host, load.port)
        status = await load.send(connection)
        recorder.record(scheduled, loop.time(), status)
        idle.append(connection)

    count = int(math.ceil((warmup + duration) * rate))
    for number in range(count):
        scheduled = start + number / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(outstanding) >= MAX_OPEN_CONNECTIONS:
            recorder.record(scheduled, loop.time(), -2)
            continue
        task = asyncio.ensure_future(one(scheduled))
        outstanding.add(task)
        task.add_done_callback(outstanding.discard)
    if outstanding:
        await asyncio.gather(*outstanding)
    for connection in idle:
        connection.close()
    return recorder


def _summarize(mode: str, level: float, rounds: list[tuple[_Recorder, float, float]],
               texts_per_request: int) -> LevelResult:
    """One level from its rounds: (recorder, timed seconds, others' CPU share) each."""
    latencies = np.array([latency for recorder, _, _ in rounds for latency in recorder.latencies]) * 1000
    statuses: dict[str, int] = {}
    for recorder, _, _ in rounds:
        for status, count in recorder.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    seconds = sum(duration for _, duration, _ in rounds)
    rate = median_interval([len(recorder.latencies) / duration for recorder, duration, _ in rounds])
    summary = LevelResult(mode=mode, level=level, requests=len(latencies), errors=sum(statuses.values()),
                          errors_by_status=statuses, seconds=seconds, requests_per_second=rate.value,
                          texts_per_second=rate.value * texts_per_request, rounds=len(rounds),
                          requests_per_second_interval=rate.to_dict(),
                          others_cpu_share=[round(share, 3) for _, _, share in rounds])
    if len(latencies):
        summary.latency_ms = {"p50": float(np.percentile(latencies, 50)), "p90": float(np.percentile(latencies, 90)),
                              "p99": float(np.percentile(latencies, 99)), "mean": float(latencies.mean()),
                              "max": float(latencies.max())}
    return summary


async def _check_server(options: LoadtestOptions) -> str | None:
    """Fail at once when nothing listens at the URL; return the v2 model name to load (None for others)."""
    parts = urlsplit(options.url)
    connection = HttpConnection(parts.hostname, parts.port or 80)
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    prefix = parts.path.rstrip("/")
    try:
        await connection.request("GET", prefix + "/v2/health/live")
        if options.protocol != "v2" or options.model:
            return options.model
        status, _, body = await connection.request("GET", prefix + "/info", headers=headers)
    except OSError as error:
        raise UsageError(f"cannot reach {options.url}: {error.strerror or error}",
                         "start the server first, or fix the URL") from None
    finally:
        connection.close()
    if status != 200:
        raise UsageError(f"GET /info answered {status}; cannot tell which model to load", "pass --model NAME")
    return json.loads(body)["model_id"]


def run_loadtest(options: LoadtestOptions, on_level=lambda result: None) -> list[LevelResult]:
    """Every concurrency level and every request rate, in LOADTEST_ROUNDS interleaved rounds of duration /
    LOADTEST_ROUNDS seconds each (each round starting one level later), so a burst of load on the machine falls
    on every level alike; on_level(result) for each level once its rounds are done, in the order given."""

    async def main() -> list[LevelResult]:
        load = _Load(options, await _check_server(options))
        levels = [("concurrency", level) for level in options.concurrency] + [("rate", level)
                                                                               for level in options.request_rates]
        seconds = options.duration / LOADTEST_ROUNDS
        rounds: dict[int, list[tuple[_Recorder, float, float]]] = {number: [] for number in range(len(levels))}
        for round_number in range(LOADTEST_ROUNDS):
            start = round_number % len(levels)
            for number in list(range(start, len(levels))) + list(range(start)):
                mode, level = levels[number]
                with CpuLoad() as machine:
                    recorder = await (_closed_loop(load, level, options.warmup, seconds) if mode == "concurrency"
                                      else _open_loop(load, level, options.warmup, seconds))
                rounds[number].append((recorder, seconds, machine.others_share))
        results = [_summarize(mode, level, rounds[number], options.texts_per_request)
                   for number, (mode, level) in enumerate(levels)]
        for result in results:
            on_level(result)
        return results

    return asyncio.run(main())


def markdown_table(results: Sequence[LevelResult]) -> str:
    lines = ["| load | requests/s (median round, interval) | texts/s | p50 ms | p90 ms | p99 ms | max ms | answered | "
             "errors | others' CPU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        latency = result.latency_ms
        interval = result.requests_per_second_interval
        rate = (f"{result.requests_per_second:,.1f} ({interval['low']:,.1f}-{interval['high']:,.1f})" if interval
                else f"{result.requests_per_second:,.1f}")
        cells = [describe_level(result), rate, f"{result.texts_per_second:,.1f}"]
        cells += [f"{latency[name]:.1f}" if latency else "-" for name in ("p50", "p90", "p99", "max")]
        errors = ", ".join(f"{count} x {status}" for status, count in sorted(result.errors_by_status.items()))
        shares = result.others_cpu_share
        cells += [str(result.requests), errors or "0", f"{min(shares):.0%}-{max(shares):.0%}" if shares else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def describe_level(result: LevelResult) -> str:
    return f"{int(result.level)} clients" if result.mode == "concurrency" else f"{result.level:g} req/s offered"


def write_report(results: Sequence[LevelResult], options: LoadtestOptions, output: Path, *,
                 overwrite: bool = False) -> None:
    """loadtest.json, loadtest.md and loadtest.png in `output`, which appears whole or not at all."""
    report = {"url": options.url, "protocol": options.protocol, "texts_per_request": options.texts_per_request,
              "text_pairs": not isinstance(options.texts[0], str),
              "duration_s": options.duration, "warmup_s": options.warmup, "texts": len(options.texts),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "levels": [asdict(result) for result in results]}
    with atomic_directory(output, overwrite=overwrite) as folder:
        (folder / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (folder / REPORT_MARKDOWN).write_text(
            f"# loadtest of {options.url} ({options.protocol}, {options.texts_per_request} text(s) per request)\n\n"
            + markdown_table(results), encoding="utf-8")
        plot_results(results, folder / REPORT_PLOT, title=f"loadtest of {options.url} ({options.protocol}, "
                     f"{options.texts_per_request} text(s) per request, {options.duration:g} s per level)")


def plot_results(results: Sequence[LevelResult], path: Path, title: str = "loadtest") -> None:
    """Answered requests/s (median round, its interval as error bars) and latency percentiles against load,
    one row per mode; both axes from zero, plain numbers, legends inside the figure, the date and the machine's
    load in the title."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no process-wide state
        from matplotlib.ticker import StrMethodFormatter
    except ImportError:
        raise UsageError("the PNG plot needs matplotlib", "pip install 'roberta-deploy[report]'") from None

    modes = [mode for mode in ("concurrency", "rate") if any(result.mode == mode for result in results)]
    figure = Figure(figsize=(11, 3.6 * len(modes) + 0.6), layout="constrained")
    shares = [share for result in results for share in result.others_cpu_share]
    load = machine_load()["load_average"]
    figure.suptitle(f"{title}\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average {load[0]:g}"
                    + (f"; other processes took {min(shares):.0%}-{max(shares):.0%} of the CPU during the rounds"
                       if shares else ""), fontsize=10)
    for number, mode in enumerate(modes):
        rows = [result for result in results if result.mode == mode]
        x = [result.level for result in rows]
        label = "concurrent clients" if mode == "concurrency" else "offered requests/s"
        rate_axes = figure.add_subplot(len(modes), 2, 2 * number + 1)
        rates = [result.requests_per_second for result in rows]
        intervals = [result.requests_per_second_interval for result in rows]
        rate_axes.errorbar(x, rates, yerr=[[max(0.0, rate - i.get("low", rate)) for rate, i in zip(rates, intervals)],
                                           [max(0.0, i.get("high", rate) - rate) for rate, i in zip(rates, intervals)]],
                           fmt="o-", color="tab:blue", capsize=4,
                           label=f"median of {rows[0].rounds} rounds, with its interval")
        rate_axes.set_title(f"{'closed' if mode == 'concurrency' else 'open'} loop: answered requests/s", fontsize=9)
        latency_axes = figure.add_subplot(len(modes), 2, 2 * number + 2)
        for name, style in (("p50", "o-"), ("p90", "^-"), ("p99", "s--")):
            latency_axes.plot(x, [result.latency_ms.get(name, float("nan")) for result in rows], style, label=name)
        latency_axes.set_title(f"{'closed' if mode == 'concurrency' else 'open'} loop: latency (ms)", fontsize=9)
        for axes, ylabel in ((rate_axes, "requests/s"), (latency_axes, "ms")):
            axes.set_xlabel(label)
            axes.set_ylabel(ylabel)
            axes.set_ylim(bottom=0)
            axes.set_xlim(left=0)
            axes.yaxis.set_major_formatter(StrMethodFormatter("{x:,g}"))
            axes.grid(alpha=0.3)
            axes.legend(fontsize=8, loc="best")
    figure.savefig(path, dpi=100)
