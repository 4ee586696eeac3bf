"""KServe's Python clients, unmodified, in a subprocess with the overlay of scripts/kserve_overlay.sh in front
(kserve pins protobuf<7, older than the `dev` environment's), for the server tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest


def run_kserve_client(port: int, script: str, key: str) -> dict:
    """Run `script` (after a prelude that imports KServe's clients and defines `request`, `outputs` and
    `code_of`, with URL (host:port) and KEY set) in a subprocess over the overlay; its last stdout line is JSON."""
    overlay = os.environ.get("ROBERTA_DEPLOY_KSERVE")
    if not overlay:
        pytest.skip('KServe\'s client is not installed: eval "$(scripts/kserve_overlay.sh)" (CI does)')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([overlay, os.environ.get("PYTHONPATH", "")])}
    program = textwrap.dedent('''
        import asyncio, json, sys
        import grpc
        from kserve import InferenceGRPCClient, InferenceRESTClient, InferRequest, InferInput, RESTConfig
        URL, KEY = sys.argv[1], sys.argv[2]
        def request(rows, model="fake"):
            columns = [rows] if isinstance(rows[0], str) else [[a for a, _ in rows], [b for _, b in rows]]
            inputs = []
            for name, column in zip(("text", "text_pair"), columns):
                tensor = InferInput(name=name, shape=[len(column)], datatype="BYTES")
                tensor.set_data_from_numpy(__import__("numpy").array(column, dtype=object))
                inputs.append(tensor)
            return InferRequest(model_name=model, infer_inputs=inputs)
        def outputs(response):
            return {o.name: o.as_numpy().tolist() for o in response.outputs}
        async def code_of(call):
            try:
                await call
            except grpc.RpcError as error:
                return error.code().name
    ''') + textwrap.dedent(script)
    completed = subprocess.run([sys.executable, "-c", program, f"127.0.0.1:{port}", key], env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])
