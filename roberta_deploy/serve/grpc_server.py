"""The Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`, as Triton and KServe serve it) on
its own port, on the event loop of the HTTP app and over the same `ServerState`: one batcher per model, the same
limits, API key (metadata `authorization: Bearer KEY`), error table (serve/status.py, GRPC_CODES) and metrics.

ModelInfer turns the protobuf request into the HTTP route's binary form and calls serve/v2.py's own parser and
formatter, so both protocols check and answer alike: BYTES inputs `text` (and `text_pair` for pairs) as
`raw_input_contents` or `contents.bytes_contents`; outputs `logits`, `probabilities`, `label` always as
`raw_output_contents`, as Triton sends them. A cancelled RPC, or one past its deadline, cancels its future, so
the batcher drops its texts before compute, as for a disconnected HTTP client. The request size limit is
gRPC's own message limit (--payload-limit; RESOURCE_EXHAUSTED past it).

grpcio and Triton's generated modules (tritonclient.grpc; the serve extra) are imported only when a
--grpc-port is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from concurrent.futures import Executor
from typing import Awaitable, Callable

from ..errors import InputDataError, NotReadyError, UnknownModelError, UsageError
from . import triton, v2
from .payload import dump_json
from .serving import ServerState, ServingApp, check_api_key
from .status import DROPPED, GRPC_CODES, RETRY_AFTER_SECONDS, SUCCESS, describe_error

SERVICE = "inference.GRPCInferenceService"


def import_grpc():
    """grpc, protobuf's json_format and Triton's generated service module, or a UsageError naming the extra."""
    try:
        import grpc
        from google.protobuf import json_format
        from tritonclient.grpc import service_pb2
    except ImportError as error:
        raise UsageError(f"--grpc-port needs grpcio, protobuf and tritonclient ({error})",
                         "pip install 'roberta-deploy[serve]', or leave --grpc-port off") from None
    return grpc, json_format, service_pb2


@contextlib.asynccontextmanager
async def grpc_serving(state: ServerState, host: str, port: int, on_bound: Callable[[int], None], *,
                       grace_s: float, executor: Executor | None = None):
    """Serve gRPC on host:port (0: a free port, given to on_bound) while the block runs, on the running loop;
    on exit stop taking RPCs and wait up to grace_s (--drain-timeout) for those in flight. `executor`: the
    HTTP app's, which parses, tokenizes and encodes off the loop."""
    server = GrpcService(state, executor).build(host, port, on_bound)
    await server.start()
    try:
        yield
    finally:
        await server.stop(grace_s)


class GrpcService:
    def __init__(self, state: ServerState, executor: Executor | None = None):
        self.state = state
        self.app = ServingApp(state, executor)  # the steps HTTP's routes take: readiness, slots, work off the loop
        self.version = self.app.version
        self.grpc, self.json_format, self.pb = import_grpc()

    def build(self, host: str, port: int, on_bound: Callable[[int], None]):
        grpc, pb = self.grpc, self.pb
        methods = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, False, False),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, True, False),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, True, False),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, True, False),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, True, False),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, True, True),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest, True, False),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest, True, False),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest, True, False),
        }
        handlers = {name: grpc.unary_unary_rpc_method_handler(
            self._rpc(name, handler, needs_key=needs_key, counted=counted),
            request_deserializer=request_type.FromString,
            response_serializer=lambda message: message.SerializeToString())
            for name, (handler, request_type, needs_key, counted) in methods.items()}
        # so_reuseport off: a second server on the same port must fail to bind, not share it silently.
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", self.state.limits.payload_limit),
                                          ("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if not bound:
            raise UsageError(f"cannot listen for gRPC on {address}",
                             "pass another --grpc-port (0 picks a free one) or stop the program using it")
        on_bound(bound)
        return server

    def _rpc(self, method: str, handler: Callable, *, needs_key: bool, counted: bool) -> Callable[..., Awaitable]:
        """The handler with what app.py's `endpoint` does for HTTP: the key, the error table, the counts."""
        state, route = self.state, f"/{SERVICE}/{method}"

        async def run(request, context):
            model_name = getattr(request, "model_name", "") or state.names[0]
            if model_name not in state.names:
                model_name = "unknown"
            try:
                if needs_key:
                    metadata = dict(context.invocation_metadata() or ())
                    check_api_key(state.api_key, metadata.get("authorization", "").encode())
                response = await handler(request)
            except asyncio.CancelledError:  # the client cancelled, or its deadline passed
                if counted:
                    state.metrics.count(model_name, route, DROPPED)
                raise
            except Exception as error:  # every failure becomes a code from the one table
                status, message = describe_error(error)
                if counted:
                    state.metrics.count(model_name, route, status.outcome)
                if status.status in (429, 503):
                    context.set_trailing_metadata((("retry-after", str(RETRY_AFTER_SECONDS)),))
                await context.abort(getattr(self.grpc.StatusCode, GRPC_CODES.get(status.status, "INTERNAL")), message)
            if counted:
                state.metrics.count(model_name, route, SUCCESS)
            return response

        return run

    def _message(self, value: dict, message_type):
        return self.json_format.ParseDict(value, message_type())

    async def server_live(self, request):
        return self.pb.ServerLiveResponse(live=True)

    async def server_ready(self, request):
        return self.pb.ServerReadyResponse(ready=self.state.accepting)

    async def model_ready(self, request):
        try:
            model = self.state.model(request.name)
        except NotReadyError:
            return self.pb.ModelReadyResponse(ready=False)
        return self.pb.ModelReadyResponse(ready=self.state.accepting and model.ready)

    async def server_metadata(self, request):
        return self._message(triton.server_metadata(self.version), self.pb.ServerMetadataResponse)

    async def model_metadata(self, request):
        model = self.state.model(request.name)
        return self._message(v2.model_metadata(model.name, model.label_names, model.platform,
                                               bool(model.task.text_pairs)), self.pb.ModelMetadataResponse)

    async def model_config(self, request):
        model = self.state.model(request.name)
        return self._message({"config": triton.model_config(model, self.state.limits)}, self.pb.ModelConfigResponse)

    async def model_statistics(self, request):
        return self._message(triton.model_statistics(self.state, request.name), self.pb.ModelStatisticsResponse)

    async def repository_index(self, request):
        return self._message({"models": triton.repository_index(self.state, request.ready)},
                             self.pb.RepositoryIndexResponse)

    async def model_infer(self, request):
        state, app = self.state, self.app
        model = state.model(request.model_name)
        if request.model_version and request.model_version != v2.MODEL_VERSION:
            raise UnknownModelError(f"model {model.name!r} has no version {request.model_version!r}",
                                    f"use version {v2.MODEL_VERSION}, or leave model_version empty")
        app.check_accepting()
        body, header_length = http_body(request)
        parsed = await app.off_loop(v2.parse_infer, body, header_length, state.limits)
        app.check_accepting()  # a drain may have begun meanwhile
        with app.slot():
            started = time.perf_counter()
            future = await app.submit(model, parsed.texts, truncate=state.limits.auto_truncate)
            try:
                result = await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                future.cancel()  # still queued: the batcher drops it before compute
                raise
            state.metrics.observe_result(model.name, result, time.perf_counter() - started)
            content, headers = await app.off_loop(v2.format_infer, parsed, model.name, result.logits,
                                                  model.label_names, model.task)
        return self.infer_response(content, headers, request.id)

    def infer_response(self, content: bytes, headers: dict[str, str], request_id: str):
        """serve/v2.py's binary answer (JSON header, then every output's bytes) as a ModelInferResponse."""
        header_length = int(headers[v2.HEADER_LENGTH])
        header, binary = json.loads(content[:header_length]), content[header_length:]
        response = self.pb.ModelInferResponse(model_name=header["model_name"], model_version=header["model_version"],
                                              id=request_id)
        offset = 0
        for tensor in header["outputs"]:
            size = tensor["parameters"]["binary_data_size"]
            output = response.outputs.add(name=tensor["name"], datatype=tensor["datatype"])
            output.shape.extend(tensor["shape"])
            response.raw_output_contents.append(binary[offset:offset + size])
            offset += size
        return response


def http_body(request) -> tuple[bytes, str]:
    """A ModelInferRequest as the HTTP route's body with binary tensors (JSON header, then each input's bytes)
    and its Inference-Header-Content-Length, every output asked for in binary."""
    raw_inputs = list(request.raw_input_contents)
    if raw_inputs and len(raw_inputs) != len(request.inputs):
        raise InputDataError(f"{len(raw_inputs)} raw_input_contents for {len(request.inputs)} inputs",
                             "send raw contents for every input, or for none (contents.bytes_contents)")
    inputs, parts = [], []
    for index, tensor in enumerate(request.inputs):
        raw = raw_inputs[index] if raw_inputs else b"".join(
            struct.pack("<I", len(element)) + element for element in tensor.contents.bytes_contents)
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                       "parameters": {"binary_data_size": len(raw)}})
        parts.append(raw)
    header = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if request.outputs:
        header["outputs"] = [{"name": output.name, "parameters": {"binary_data": True}} for output in request.outputs]
    if request.id:
        header["id"] = request.id
    encoded = dump_json(header)
    return encoded + b"".join(parts), str(len(encoded))
