"""The cost of each protocol's transport on one `serve` process: the same texts sent as Open Inference Protocol
requests over gRPC (tritonclient.grpc), over HTTP with binary tensors and with JSON (tritonclient.http), in
interleaved rounds from a few client threads. Prints requests/s per protocol and round, and the ratios to gRPC.

    python bench/protocols_bench.py --bundle BUNDLE --data dev.tsv [--rounds 3] [--requests 200] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roberta_deploy.data import read_dataset  # noqa: E402


def start_server(bundle: str) -> tuple[subprocess.Popen, int, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "roberta_deploy", "serve", "--bundle", f"demo={bundle}",
                                "--port", "0", "--grpc-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env)
    http = grpc = None
    deadline = time.monotonic() + 120
    for line in process.stdout:
        if match := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
            http = int(match.group(1))
        if match := re.search(r"gRPC .* listening on 127\.0\.0\.1:(\d+)", line):
            grpc = int(match.group(1))
        if line.startswith("ready") or "ready:" in line or time.monotonic() > deadline:
            break
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    if http is None or grpc is None:
        process.kill()
        raise SystemExit("the server did not start")
    return process, http, grpc


def sender(protocol: str, http_port: int, grpc_port: int, texts: list[str]):
    if protocol == "grpc":
        import tritonclient.grpc as client_module

        client = client_module.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    else:
        import tritonclient.http as client_module

        client = client_module.InferenceServerClient(f"127.0.0.1:{http_port}", network_timeout=60)
    binary = protocol != "http-json"
    data = np.array([text.encode() for text in texts], dtype=object)

    def send():
        tensor = client_module.InferInput("text", [len(texts)], "BYTES")
        outputs = None
        if protocol == "grpc":
            tensor.set_data_from_numpy(data)
        else:
            tensor.set_data_from_numpy(data, binary_data=binary)
            outputs = [client_module.InferRequestedOutput(name, binary_data=binary)
                       for name in ("logits", "probabilities", "label")]
        result = client.infer("demo", [tensor], outputs=outputs)
        assert result.as_numpy("logits").shape[0] == len(texts)

    return send


def measure(protocol: str, http_port: int, grpc_port: int, texts: list[str], requests: int, clients: int) -> float:
    """Requests/s of `clients` threads, each with a client of its own made on its thread (tritonclient.http
    runs on gevent, whose hub belongs to one thread); only answered requests count."""
    per_client = requests // clients
    answered, failures = [0] * clients, []
    ready = threading.Barrier(clients + 1)

    def loop(index: int) -> None:
        try:
            send = sender(protocol, http_port, grpc_port, texts)
            send()  # connect
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)
            ready.abort()
            return
        ready.wait()
        for _ in range(per_client):
            send()
            answered[index] += 1

    threads = [threading.Thread(target=loop, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait(120)
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    if failures or sum(answered) != per_client * clients:
        raise SystemExit(f"{protocol}: {sum(answered)} of {per_client * clients} answered ({failures[:1]})")
    return sum(answered) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--texts-per-request", type=int, default=8)
    args = parser.parse_args()
    texts = read_dataset(args.data).texts[:args.texts_per_request]
    process, http_port, grpc_port = start_server(args.bundle)
    protocols = ("grpc", "http-binary", "http-json")
    rates = {protocol: [] for protocol in protocols}
    try:
        for number in range(args.rounds):
            order = protocols if number % 2 == 0 else protocols[::-1]
            for protocol in order:
                load = os.getloadavg()[0]
                rate = measure(protocol, http_port, grpc_port, texts, args.requests, args.clients)
                rates[protocol].append(rate)
                print(f"round {number + 1} {protocol}: {rate:.1f} requests/s (load average before {load:.2f})",
                      flush=True)
    finally:
        process.terminate()
        process.wait(60)
    for protocol in protocols:
        ratios = [rate / base for rate, base in zip(rates[protocol], rates["grpc"])]
        print(f"{protocol}: median {statistics.median(rates[protocol]):.1f} requests/s "
              f"(min {min(rates[protocol]):.1f}, max {max(rates[protocol]):.1f}); against gRPC per round: "
              + ", ".join(f"{ratio:.3f}" for ratio in ratios))


if __name__ == "__main__":
    main()
