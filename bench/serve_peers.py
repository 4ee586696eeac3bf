"""roberta-deploy's `serve` against infinity-emb on the same random BERT-base classifier, as a user comparing servers
would run them: each with its defaults, one review per request, closed-loop clients (issue 21).

Servers: roberta-deploy OpenVINO int8 (calibrated), ONNX Runtime dynamic int8 (when this checkout's `build` knows
--quantization dynamic) and OpenVINO fp32; infinity-emb 0.0.78 (its own venv under --workdir) on its optimum engine
(ONNX Runtime fp32, and dynamic int8 from `optimum-cli onnxruntime quantize` for this CPU's instruction set) and
its torch engine (fp32). Texts are ChnSentiCorp dev reviews cut to the max length's worth of tokens before sending,
the same texts for every server (infinity's optimum engine does not truncate, and hangs past 512 tokens).

Rounds are interleaved: in round r every server is measured in turn, the order rotated by r, at every client count
(the counts' order rotated too), next to offline `roberta-deploy infer` on each roberta-deploy bundle. Each server
is started for its turn and stopped after it: only one server is resident at a time, so none takes memory or
background threads from another on the 2 shared cores; start-up and warm-up are not timed. Every measurement
records the load average and the share of the CPU other processes took; each server's labels on a sample are
checked against offline fp32 `infer` (random weights give near-ties: agreement is reported, never enforced).

    python bench/serve_peers.py --prepare-only      # venv, exports, bundles, ONNX models (cached in --workdir)
    python bench/serve_peers.py --max-lengths 128 512 --clients 1 8 64 --rounds 3 --duration 30 --warmup 10 \\
        --output docs/serving-peers.json --markdown /tmp/serving-peers.md          # the full run (quiet machine)

The full run takes about 2 hours on a 2-core Zen 3 (6 servers x 3 client counts x (warm-up + duration + the
requests still out) per round and length, plus start-ups and offline `infer` of --offline-texts per bundle);
--duration 20 --warmup 5 brings it near 75 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]  # sibling modules and this checkout's package

from artifacts import CENTRING_SAMPLES, ArtifactPaths, load_tokenizer, log, prepare_checkpoint  # noqa: E402
from peer_servers import (BUNDLE_BUILDS, REFERENCE_SERVER, SERVERS, Prepared, cache_folder, prepare_bundles,  # noqa: E402
                          prepare_infinity_models, prepare_infinity_venv, start_server)
from report import machine_description, write_report  # noqa: E402
from serve_bench import (DEFAULT_CALIBRATION_DATA, DEFAULT_DATA, DEFAULT_WORKDIR, CpuShares, cli,  # noqa: E402
                         environment)

from roberta_deploy.data import read_dataset  # noqa: E402
from roberta_deploy.measurement import Interval, median_interval  # noqa: E402
from roberta_deploy.serve.loadtest import HttpConnection  # noqa: E402

REQUEST_TIMEOUT_S = 300.0  # 64 clients on torch fp32 at 512 queue for tens of seconds; slower still is an error
HEADERS = {"Content-Type": "application/json"}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.error = lambda message: sys.exit(f"serve_peers.py: {message}; see --help")  # one line, not the usage
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="Cache of the checkpoint, bundles, ONNX models and infinity's venv.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Texts sent, one per request, in order.")
    parser.add_argument("--calibration-data", type=Path, default=DEFAULT_CALIBRATION_DATA)
    parser.add_argument("--max-lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64], help="Closed-loop client counts.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds; the table shows each.")
    parser.add_argument("--duration", type=float, default=30.0, help="Timed seconds per measurement.")
    parser.add_argument("--warmup", type=float, default=10.0, help="Seconds of load before each measurement's "
                        "window; at 64 clients it should exceed one request's latency.")
    parser.add_argument("--offline-texts", type=int, default=300, help="Texts offline `infer` classifies per round.")
    parser.add_argument("--sample", type=int, default=64, help="Texts whose served labels are checked (round 1).")
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), metavar="NAME",
                        help=f"Subset of: {', '.join(SERVERS)}.")
    parser.add_argument("--prepare-only", action="store_true", help="Only build what the servers need.")
    parser.add_argument("--output", type=Path, default=None, help="JSON report (default: <workdir>/serve-peers.json).")
    parser.add_argument("--markdown", type=Path, default=None)
    arguments = parser.parse_args(argv)
    problems = [
        (any(not 16 <= length <= 512 for length in arguments.max_lengths), "--max-lengths must be 16 to 512 (BERT's "
         "position table)", "pass e.g. --max-lengths 128 512"),
        (any(count < 1 for count in arguments.clients), "--clients must be 1 or more", "pass e.g. --clients 1 8 64"),
        (arguments.rounds < 1, "--rounds must be 1 or more", "pass e.g. --rounds 3"),
        (arguments.duration <= 0 or arguments.warmup < 0, "--duration must be positive and --warmup 0 or more",
         "pass e.g. --duration 30 --warmup 10"),
        (arguments.offline_texts < 1 or arguments.sample < 1, "--offline-texts and --sample must be 1 or more",
         "pass e.g. --offline-texts 300 --sample 64"),
        (bool(set(arguments.servers) - set(SERVERS)), f"unknown --servers {sorted(set(arguments.servers) - set(SERVERS))}",
         f"pick from {', '.join(SERVERS)}"),
        (not arguments.data.is_file() or not arguments.calibration_data.is_file(),
         f"no such file: {arguments.data if not arguments.data.is_file() else arguments.calibration_data}",
         "pass --data/--calibration-data as ChnSentiCorp-style TSV files"),
    ]
    for failed, problem, fix in problems:
        if failed:
            sys.exit(f"serve_peers.py: {problem}; {fix}")
    arguments.workdir = arguments.workdir.expanduser().resolve()
    arguments.servers = list(dict.fromkeys(arguments.servers))
    return arguments


def prepare(arguments) -> Prepared:
    paths = ArtifactPaths(arguments.workdir)
    prepare_checkpoint(paths, read_dataset(arguments.calibration_data).texts[:CENTRING_SAMPLES])
    folder = cache_folder(arguments.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [name for name in SERVERS if name in arguments.servers or name == REFERENCE_SERVER]
    bundles, skipped = prepare_bundles(paths.checkpoint, folder, arguments.max_lengths, wanted, arguments.data,
                                       arguments.calibration_data)
    infinity = [name for name in arguments.servers if SERVERS[name].project == "infinity"]
    python = prepare_infinity_venv(arguments.workdir / "infinity-venv") if infinity else None
    models, flag = prepare_infinity_models(python, paths.checkpoint, folder, infinity) if infinity else ({}, None)
    return Prepared(paths.checkpoint, bundles, python, models, flag, skipped)


def cut_texts(tokenizer, texts: list[str], max_length: int) -> list[str]:
    """Each text cut after its (max_length - 2)-th token ([CLS] and [SEP] take two), at the token's last character,
    so every server computes the same tokens and none truncates on its own."""
    cut = []
    for text in texts:
        tokens = max_length - 2
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        keep = tokens
        while len(offsets) > tokens:
            shorter = text[:offsets[keep - 1][1]]
            if len(tokenizer(shorter, add_special_tokens=False)["input_ids"]) <= tokens:
                text, offsets = shorter, []
            keep -= 1  # a word cut inside may re-tokenize into more pieces: cut one token earlier
        cut.append(text)
    return cut


# -- measurements -------------------------------------------------------------------------------------------

async def closed_loop(server, bodies: list[bytes], clients: int, warmup: float, duration: float) -> dict:
    """`clients` keep-alive connections, each sending the next body as soon as its last answer arrived. Counted:
    answers that arrive inside the window (at 64 clients a request can outlast a short window, so counting the
    requests sent in it would miss them); the requests still out when it closes are awaited, not counted."""
    loop = asyncio.get_running_loop()
    opens = loop.time() + warmup
    closes = opens + duration
    latencies, errors, order = [], Counter(), itertools.count()

    async def client():
        connection = HttpConnection("127.0.0.1", server.port)
        try:
            while loop.time() < closes:
                sent = loop.time()
                try:
                    status, _, _ = await asyncio.wait_for(
                        connection.request("POST", server.path, bodies[next(order) % len(bodies)], HEADERS),
                        REQUEST_TIMEOUT_S)
                except asyncio.TimeoutError:
                    status = "timeout"
                    connection.close()
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    status = "connection"
                    connection.close()
                answered = loop.time()
                if opens <= answered < closes:
                    if status == 200:
                        latencies.append(answered - sent)
                    else:
                        errors[str(status)] += 1
        finally:
            connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    milliseconds = np.asarray(latencies) * 1000
    percentiles = {f"p{q}": float(np.percentile(milliseconds, q)) for q in (50, 90, 99)} if len(latencies) else {}
    return {"requests_per_second": len(latencies) / duration, "texts_per_second": len(latencies) / duration,
            "answered": len(latencies), "errors": sum(errors.values()), "errors_by_kind": dict(errors),
            "latency_ms": percentiles}


def check_answers(server, texts: list[str], reference: list[str]) -> dict:
    """Each sample text sent alone; its label against offline fp32 `infer`'s."""

    async def ask() -> list[str | None]:
        connection = HttpConnection("127.0.0.1", server.port)
        labels = []
        try:
            for text in texts:
                status, _, body = await connection.request("POST", server.path, server.body(text), HEADERS)
                labels.append(server.label(json.loads(body)) if status == 200 else None)
        finally:
            connection.close()
        return labels

    labels = asyncio.run(ask())
    agree = sum(label == expected for label, expected in zip(labels, reference))
    return {"texts": len(texts), "agree": agree, "agreement": agree / len(texts),
            "failed": sum(label is None for label in labels)}


def measure_server(name: str, prepared: Prepared, max_length: int, texts: list[str], client_order: list[int],
                   arguments, logs: Path, reference: list[str] | None) -> tuple[list[dict], dict | None]:
    started = time.monotonic()
    server = start_server(name, prepared, max_length, arguments.workdir, logs)
    results, answers = [], None
    try:
        start_s = time.monotonic() - started
        rss_ready = server.process.memory_info().rss
        if reference is not None:
            answers = {**check_answers(server, texts[:len(reference)], reference), "server_notes": server.notes()}
        bodies = [server.body(text) for text in texts]
        for clients in client_order:
            tokens_before = server.token_counts()
            with CpuShares(server.process) as cpu:
                result = asyncio.run(closed_loop(server, bodies, clients, arguments.warmup, arguments.duration))
            tokens_after = server.token_counts()
            if tokens_before is not None and tokens_after is not None:  # warm-up load included: same batching
                padded, real = (after - before for before, after in zip(tokens_before, tokens_after))
                result["padded_per_real_token"] = padded / real if real else None
            results.append({"server": name, "max_length": max_length, "clients": clients, **result,
                            "load_average_1min": os.getloadavg()[0], "others_cpu_share": cpu.others_share,
                            "server_cpu_share": cpu.server_s / (cpu.wall_s * os.cpu_count()),
                            "rss_mb_ready": rss_ready / 1e6, "rss_mb_end": server.process.memory_info().rss / 1e6,
                            "start_seconds": start_s})
            log(f"  {name} @ {max_length}, {clients} clients: {result['requests_per_second']:.1f} req/s, "
                f"p99 {result['latency_ms'].get('p99', float('nan')):.0f} ms, {result['errors']} errors, "
                f"others {cpu.others_share:.0%}" + (f", padded/real tokens {result['padded_per_real_token']:.2f}"
                                                    if result.get("padded_per_real_token") else ""))
    finally:
        exit_code = server.stop()
    for result in results:
        result["exit_code"] = exit_code
    return results, answers


def offline_infer(bundle: Path, data: Path, scratch: Path) -> dict:
    """`roberta-deploy infer` on the bundle: texts/s as it reports them, and each text's label."""
    output = scratch / f"infer-{bundle.name}"
    with CpuShares() as cpu:
        subprocess.run(cli("infer", "--bundle", str(bundle), "--data", str(data), "--output", str(output),
                           "--overwrite"), check=True, env=environment(), capture_output=True, text=True)
    metrics = json.loads((output / "metrics.json").read_text())
    rows = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    return {"texts": metrics["examples"], "texts_per_second": metrics["texts_per_second"],
            "others_cpu_share": cpu.others_share, "load_average_1min": os.getloadavg()[0],
            "labels": [row["label_name"] for row in rows]}


def write_texts(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts), encoding="utf-8")
    return path


def rotated(items: list, by: int) -> list:
    return items[by % len(items):] + items[:by % len(items)]


# -- report -------------------------------------------------------------------------------------------------

def summarize(report: dict, arguments) -> dict:
    """Per max length and server: each client count's req/s per round with median and range, p99 at the most
    clients, offline texts/s, served/offline; then roberta-deploy's best against infinity's fastest."""
    summary = {}
    for max_length in arguments.max_lengths:
        rows = {}
        for name in report["servers"]:
            measured = [m for m in report["measurements"] if m["server"] == name and m["max_length"] == max_length]
            if not measured:
                continue
            row = {"clients": {}}
            for clients in arguments.clients:
                rates = [m["requests_per_second"] for m in measured if m["clients"] == clients]
                p99 = [m["latency_ms"].get("p99") for m in measured if m["clients"] == clients]
                row["clients"][str(clients)] = {"per_round": rates, "interval": median_interval(rates).to_dict(),
                                           "spread": (max(rates) - min(rates)) / np.median(rates) if np.median(rates)
                                           else None, "p99_ms": float(np.median([v for v in p99 if v is not None]))
                                           if any(v is not None for v in p99) else None}
            offline = [o for o in report["offline"] if o["server"] == name and o["max_length"] == max_length]
            if offline:
                most = max(arguments.clients)
                row["offline_per_round"] = [o["texts_per_second"] for o in offline]
                row["served_over_offline"] = median_interval(
                    [m["texts_per_second"] / o["texts_per_second"] for o in offline for m in measured
                     if m["clients"] == most and m["round"] == o["round"]]).to_dict()
            row["errors"] = sum(m["errors"] for m in measured)
            row["others_cpu_share_max"] = max(m["others_cpu_share"] for m in measured)
            row["agreement"] = report["agreement"].get(str(max_length), {}).get(name)
            rows[name] = row
        summary[str(max_length)] = {"rows": rows, "best_vs_fastest": best_against_fastest(rows, arguments.clients)}
    return summary


def best_against_fastest(rows: dict, client_counts: list[int]) -> dict:
    """At each client count: roberta-deploy's fastest server against infinity's fastest (all CPU), by median; a tie
    when the two servers' round ranges overlap (differences inside the noise are ties)."""
    verdicts = {}
    for clients in client_counts:
        def fastest(project):
            names = [name for name in rows if SERVERS[name].project == project]
            return max(names, key=lambda name: rows[name]["clients"][str(clients)]["interval"]["value"], default=None)

        ours, theirs = fastest("roberta-deploy"), fastest("infinity")
        if ours is None or theirs is None:
            continue
        a = Interval.from_dict(rows[ours]["clients"][str(clients)]["interval"])
        b = Interval.from_dict(rows[theirs]["clients"][str(clients)]["interval"])
        verdicts[str(clients)] = {"roberta_deploy": ours, "infinity": theirs, "ratio": a.value / b.value if b.value else None,
                             "tie": a.overlaps(b)}
    return verdicts


def render_markdown(report: dict) -> str:
    machine, arguments = report["machine"], report["arguments"]
    clients = arguments["clients"]
    lines = [f"Measured {machine['date']} on {machine['cpu_model']} ({machine['cores_available']} cores), "
             f"roberta-deploy {machine.get('roberta_deploy_revision')}, infinity-emb {report['infinity_version']}; "
             f"{arguments['rounds']} interleaved rounds of {arguments['duration']:g} s per measurement "
             f"(+{arguments['warmup']:g} s warm-up); optimum-cli quantize {report['quantize_flag']}. "
             f"Command: `{report['command']}`.", ""]
    for name, reason in report["skipped"].items():
        lines.append(f"Not measured: {name} ({reason}).")
    for max_length, part in report["summary"].items():
        lines += ["", f"Max length {max_length} (texts cut to {int(max_length) - 2} tokens for every server). "
                  "Requests/s: median (each round's); spread = (max - min) / median.", "",
                  "| server | " + " | ".join(f"{count} client{'s' * (count > 1)} req/s" for count in clients)
                  + f" | p99 ms at {max(clients)} | offline texts/s | {max(clients)} clients / offline "
                  "| labels = fp32 | errors | others' CPU (max) |",
                  "|---|" + "---:|" * (len(clients) + 6)]
        for name, row in part["rows"].items():
            cells = []
            for count in clients:
                level = row["clients"][str(count)]
                spread = f"; spread {level['spread']:.0%}" if level["spread"] and len(level["per_round"]) > 1 else ""
                cells.append(f"**{level['interval']['value']:.1f}** ({' / '.join(f'{v:.1f}' for v in level['per_round'])}"
                             f"{spread})")
            top = row["clients"][str(max(clients))]
            offline = " / ".join(f"{v:.1f}" for v in row.get("offline_per_round", [])) or "n/a"
            ratio = f"{row['served_over_offline']['value']:.2f}" if "served_over_offline" in row else "n/a"
            agreement = (f"{row['agreement']['agree']}/{row['agreement']['texts']}" if row["agreement"] else "n/a")
            p99 = f"{top['p99_ms']:,.0f}" if top["p99_ms"] is not None else "n/a"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {p99} | {offline} | {ratio} | {agreement} "
                         f"| {row['errors']} | {row['others_cpu_share_max']:.0%} |")
        verdicts = [f"{count} client{'s' * (int(count) > 1)}: " + (
            "n/a (infinity answered nothing in the window)" if v["ratio"] is None else
            f"tie ({v['ratio']:.2f}x, ranges overlap)" if v["tie"] else f"{v['ratio']:.2f}x")
            + f" ({v['roberta_deploy']} vs {v['infinity']})" for count, v in part["best_vs_fastest"].items()]
        if verdicts:
            lines += ["", "roberta-deploy's best against infinity's fastest: " + "; ".join(verdicts) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    prepared = prepare(arguments)
    for name, reason in prepared.skipped.items():
        log(f"{name}: not measured ({reason})")
    if arguments.prepare_only:
        log(f"prepared under {cache_folder(arguments.workdir)}; infinity venv {prepared.infinity_python}")
        return 0
    servers = [name for name in arguments.servers if name not in prepared.skipped]
    versions = (prepared.infinity_python.parent.parent / "peers-ready.txt").read_text().split() \
        if prepared.infinity_python else []
    report = {"command": " ".join(["python"] + sys.argv), "machine": machine_description(),
              "arguments": {key: str(value) if isinstance(value, Path) else value
                            for key, value in vars(arguments).items()},
              "servers": servers, "how": {name: SERVERS[name].how for name in servers}, "skipped": prepared.skipped,
              "infinity_version": next((line.split("==")[1] for line in versions if line.startswith("infinity")), None),
              "infinity_venv_packages": versions, "quantize_flag": prepared.quantize_flag,
              "load_average_before": os.getloadavg(), "measurements": [], "offline": [], "agreement": {}}
    tokenizer = load_tokenizer(prepared.checkpoint)
    texts = read_dataset(arguments.data).texts
    logs = arguments.workdir / "serve-peers-logs"  # infinity's own output, kept for a server that misbehaves
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="serve-peers-") as scratch_name:
        scratch = Path(scratch_name)
        cut = {length: cut_texts(tokenizer, texts, length) for length in arguments.max_lengths}
        for length in arguments.max_lengths:
            sample = write_texts(scratch / f"sample-{length}.jsonl", cut[length][:arguments.sample])
            reference = offline_infer(prepared.bundles[REFERENCE_SERVER, length], sample, scratch)["labels"]
            report["agreement"][str(length)] = {"reference": f"offline infer, {REFERENCE_SERVER} bundle"}
            report.setdefault("references", {})[str(length)] = reference
        for round_number in range(arguments.rounds):
            for length in arguments.max_lengths:
                offline_data = write_texts(scratch / f"offline-{length}.jsonl", cut[length][:arguments.offline_texts])
                jobs = [("serve", name) for name in servers] + [("infer", name) for name in servers
                                                                if SERVERS[name].project == "roberta-deploy"]
                for kind, name in rotated(jobs, round_number):
                    log(f"round {round_number + 1}/{arguments.rounds}, max length {length}: {kind} {name} "
                        f"({time.monotonic() - started:.0f} s in)")
                    if kind == "infer":
                        result = offline_infer(prepared.bundles[name, length], offline_data, scratch)
                        del result["labels"]
                        report["offline"].append({"round": round_number, "server": name, "max_length": length,
                                                  **result})
                        continue
                    reference = report["references"][str(length)] if round_number == 0 else None
                    results, answers = measure_server(name, prepared, length, cut[length],
                                                      rotated(arguments.clients, round_number), arguments,
                                                      logs, reference)
                    report["measurements"] += [{"round": round_number, **result} for result in results]
                    if answers:
                        report["agreement"][str(length)][name] = answers
    report["wall_seconds"] = time.monotonic() - started
    report["load_average_after"] = os.getloadavg()
    report["summary"] = summarize(report, arguments)
    output = arguments.output or arguments.workdir / "serve-peers.json"
    print(write_report(report, output, arguments.markdown, render_markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
