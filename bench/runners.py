"""How each compared configuration turns raw texts into labels, end to end (tokenization included).

Peers are used the way their own documentation and tools use them: transformers and ONNX Runtime
pad every review to 128 and run batches of 32 in order; OpenVINO runs static 32 x 128 batches
through an AsyncInferQueue under the THROUGHPUT hint, as benchmark_app does. roberta-deploy runs
through its public API, Engine.load(...).predict(texts). Each runner imports its runtime lazily, so
a configuration's process holds only its own libraries (that is what its peak memory measures).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from artifacts import MAX_SEQ_LENGTH, ArtifactPaths, load_tokenizer

PEER_BATCH_SIZE = 32


@dataclass(frozen=True)
class Configuration:
    name: str
    group: str  # "peer" or "roberta-deploy"
    engine: str  # shown in the table
    precision: str  # the precision of its matmuls: picks the ceiling it is compared against
    how: str  # one line on how it is run, for the doc


CONFIGURATIONS = {configuration.name: configuration for configuration in (
    Configuration("pytorch-fp32", "peer", "PyTorch eager", "fp32",
                  "transformers BertForSequenceClassification, pad 128, batch 32"),
    Configuration("pytorch-bf16", "peer", "PyTorch eager", "bf16",
                  "model.to(torch.bfloat16), pad 128, batch 32"),
    Configuration("onnxruntime-fp32", "peer", "ONNX Runtime", "fp32",
                  "transformer optimizer (O2 fusions) + ORT_ENABLE_ALL, pad 128, batch 32"),
    Configuration("onnxruntime-int8", "peer", "ONNX Runtime", "int8",
                  "quantize_dynamic QInt8 (Optimum avx512_vnni dynamic) on the fused model, pad 128, batch 32"),
    Configuration("openvino-bf16", "peer", "OpenVINO", "bf16",
                  "benchmark_app style: static 32x128, THROUGHPUT hint, AsyncInferQueue; bf16 hint"),
    Configuration("openvino-int8", "peer", "OpenVINO", "int8",
                  "benchmark_app style: NNCF int8, static 32x128, THROUGHPUT hint, AsyncInferQueue"),
    Configuration("roberta-deploy-int8", "roberta-deploy", "roberta-deploy (OpenVINO)", "int8",
                  "build_engine openvino int8 dynamic; Engine.predict, length bucketing"),
    Configuration("roberta-deploy-int8-no-bucketing", "roberta-deploy", "roberta-deploy (OpenVINO)", "int8",
                  "same bundle; Engine.predict(bucketing=False): input order, pad 128"),
    Configuration("roberta-deploy-bf16", "roberta-deploy", "roberta-deploy (OpenVINO)", "bf16",
                  "build_engine openvino bf16 dynamic; Engine.predict, length bucketing"),
)}
REFERENCE_CONFIGURATION = "pytorch-fp32"  # agreement is measured against its labels


class Runner:
    """classify(texts) -> float32 logits (n, labels); classify_one(text) -> label; model_only_call(text)
    runs just the model on the text's pre-tokenized inputs (shows what tokenization and framework cost)."""

    def warm_up(self, texts: Sequence[str]) -> None:
        """One batch for every runner. Static-shape peers have then seen their only shape; dynamic-shape
        engines meet some (batch, length) shapes for the first time in the timed pass, as a batch job
        would (a second, warm pass over ChnSentiCorp dev measured 3-7% faster)."""
        self.classify(texts[:PEER_BATCH_SIZE])

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def prepare_latency(self) -> None:
        """Called between the throughput pass and the batch-1 phase, outside any timing."""

    def classify_one(self, text: str) -> int:
        raise NotImplementedError

    def model_only_call(self, text: str) -> Callable[[], object]:
        raise NotImplementedError

    def settings(self) -> dict:
        """What the runtime actually chose (streams, precision hints), recorded with the results."""
        return {}


def create_runner(name: str, paths: ArtifactPaths, threads: int) -> Runner:
    """The one dispatch from configuration name to runner."""
    if name.startswith("pytorch-"):
        return PyTorchRunner(paths.checkpoint, bf16=name.endswith("bf16"), threads=threads)
    if name == "onnxruntime-fp32":
        return OnnxRuntimeRunner(paths.ort_fp32, paths.checkpoint, threads)
    if name == "onnxruntime-int8":
        return OnnxRuntimeRunner(paths.ort_int8, paths.checkpoint, threads)
    if name == "openvino-bf16":
        return OpenVINOAsyncRunner(paths.export / "model.onnx", paths.checkpoint, threads, precision_hint="bf16")
    if name == "openvino-int8":
        return OpenVINOAsyncRunner(paths.openvino_int8, paths.checkpoint, threads, precision_hint=None)
    if name == "roberta-deploy-int8":
        return RobertaDeployRunner(paths.bundle("int8"), threads, bucketing=True)
    if name == "roberta-deploy-int8-no-bucketing":
        return RobertaDeployRunner(paths.bundle("int8"), threads, bucketing=False)
    if name == "roberta-deploy-bf16":
        return RobertaDeployRunner(paths.bundle("bf16"), threads, bucketing=True)
    raise ValueError(f"unknown configuration {name!r}; known: {', '.join(CONFIGURATIONS)}")


class PyTorchRunner(Runner):
    def __init__(self, checkpoint: Path, bf16: bool, threads: int):
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        self._torch = torch
        self.tokenizer = load_tokenizer(checkpoint)
        model = AutoModelForSequenceClassification.from_pretrained(str(checkpoint)).eval()
        self.model = model.to(torch.bfloat16) if bf16 else model

    def _logits(self, inputs):
        with self._torch.inference_mode():
            return self.model(**inputs).logits

    def _encode(self, texts):
        return self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=MAX_SEQ_LENGTH,
                              return_tensors="pt")

    def classify(self, texts):
        logits = [self._logits(self._encode(texts[start:start + PEER_BATCH_SIZE])).float().numpy()
                  for start in range(0, len(texts), PEER_BATCH_SIZE)]
        return np.concatenate(logits)

    def classify_one(self, text):
        return int(self._logits(self._encode([text])).argmax(-1)[0])

    def model_only_call(self, text):
        inputs = self._encode([text])
        return lambda: self._logits(inputs)

    def settings(self):
        return {"torch_threads": self._torch.get_num_threads(), "dtype": str(self.model.dtype),
                "attn_implementation": self.model.config._attn_implementation}


class OnnxRuntimeRunner(Runner):
    def __init__(self, model_path: Path, checkpoint: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [port.name for port in self.session.get_inputs()]
        self.tokenizer = load_tokenizer(checkpoint)
        self.threads = threads

    def _encode(self, texts):
        encoded = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=MAX_SEQ_LENGTH,
                                 return_tensors="np")
        return {name: np.asarray(encoded[name], dtype=np.int64) for name in self.input_names}

    def classify(self, texts):
        logits = [self.session.run(None, self._encode(texts[start:start + PEER_BATCH_SIZE]))[0]
                  for start in range(0, len(texts), PEER_BATCH_SIZE)]
        return np.concatenate(logits).astype(np.float32)

    def classify_one(self, text):
        return int(self.session.run(None, self._encode([text]))[0].argmax(-1)[0])

    def model_only_call(self, text):
        feeds = self._encode([text])
        return lambda: self.session.run(None, feeds)

    def settings(self):
        return {"intra_op_num_threads": self.threads, "graph_optimization_level": "ORT_ENABLE_ALL"}


class OpenVINOAsyncRunner(Runner):
    """Throughput: static (32, 128) model, THROUGHPUT hint, one AsyncInferQueue of the optimal number
    of requests, fed while the previous batches run. Latency: a (1, 128) model under the LATENCY hint
    with a synchronous request, which is what benchmark_app -hint latency measures."""

    def __init__(self, model_path: Path, checkpoint: Path, threads: int, precision_hint: str | None):
        import openvino as ov

        core = ov.Core()
        base = {"INFERENCE_NUM_THREADS": threads}
        if precision_hint:
            base["INFERENCE_PRECISION_HINT"] = precision_hint
        self.throughput_model = core.compile_model(self._reshaped(core, model_path, PEER_BATCH_SIZE), "CPU",
                                                   {**base, "PERFORMANCE_HINT": "THROUGHPUT"})
        self.latency_model = core.compile_model(self._reshaped(core, model_path, 1), "CPU",
                                                {**base, "PERFORMANCE_HINT": "LATENCY"})
        self.latency_request = self.latency_model.create_infer_request()
        self.requests = self.throughput_model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
        self.input_names = [port.get_any_name() for port in self.throughput_model.inputs]
        self.tokenizer = load_tokenizer(checkpoint)
        self._ov = ov

    @staticmethod
    def _reshaped(core, model_path: Path, batch: int):
        model = core.read_model(str(model_path))
        model.reshape({port.get_any_name(): [batch, MAX_SEQ_LENGTH] for port in model.inputs})
        return model

    def _encode(self, texts, rows: int):
        """int64 (rows, 128) feeds; rows past the texts are filler with one attended [PAD] (static shape)."""
        encoded = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=MAX_SEQ_LENGTH,
                                 return_tensors="np")
        feeds = {}
        for name in self.input_names:
            array = np.zeros((rows, MAX_SEQ_LENGTH), dtype=np.int64)
            array[:len(texts)] = encoded[name]
            if name == "attention_mask":
                array[len(texts):, 0] = 1
            feeds[name] = array
        return feeds

    def classify(self, texts):
        logits = np.zeros((len(texts), self.throughput_model.outputs[0].get_partial_shape()[1].get_length()),
                          dtype=np.float32)

        def collect(request, batch_start):
            rows = min(PEER_BATCH_SIZE, len(texts) - batch_start)
            logits[batch_start:batch_start + rows] = request.get_output_tensor(0).data[:rows]

        queue = self._ov.AsyncInferQueue(self.throughput_model, self.requests)
        queue.set_callback(collect)
        for start in range(0, len(texts), PEER_BATCH_SIZE):
            queue.start_async(self._encode(texts[start:start + PEER_BATCH_SIZE], PEER_BATCH_SIZE), userdata=start)
        queue.wait_all()
        return logits

    def classify_one(self, text):
        self.latency_request.infer(self._encode([text], 1))
        return int(self.latency_request.get_output_tensor(0).data.argmax(-1)[0])

    def model_only_call(self, text):
        feeds = self._encode([text], 1)
        return lambda: self.latency_request.infer(feeds)

    def settings(self):
        throughput, latency = self.throughput_model, self.latency_model
        return {"throughput": {"streams": str(throughput.get_property("NUM_STREAMS")), "infer_requests": self.requests,
                               "inference_precision": str(throughput.get_property("INFERENCE_PRECISION_HINT")),
                               "threads": throughput.get_property("INFERENCE_NUM_THREADS")},
                "latency": {"streams": str(latency.get_property("NUM_STREAMS")),
                            "inference_precision": str(latency.get_property("INFERENCE_PRECISION_HINT"))}}


class RobertaDeployRunner(Runner):
    """The throughput pass runs on an engine loaded with hint="throughput" (one 1-thread context per
    core here); before the batch-1 phase it is swapped for one loaded with hint="latency" (one context
    on every core), as a deployment would pick one or the other. One engine is held at a time."""

    def __init__(self, bundle: Path, threads: int, bucketing: bool):
        self.bundle, self.threads, self.bucketing = bundle, threads, bucketing
        self.engine = self._load("throughput")
        self.throughput_settings = self.engine.settings
        self.context = None

    def _load(self, hint: str):
        from roberta_deploy.runtime.engine import Engine

        return Engine.load(self.bundle, cpu_threads=self.threads, hint=hint)

    def classify(self, texts):
        return self.engine.predict(list(texts), bucketing=self.bucketing).logits

    def prepare_latency(self):
        self.engine = None  # released first: the two engines are never needed at once
        self.engine = self._load("latency")
        self.context = self.engine.create_context()

    def classify_one(self, text):
        return int(self.engine.predict([text], bucketing=self.bucketing).labels[0])

    def model_only_call(self, text):
        inputs = self.engine.encoder.encode_padded([text])
        return lambda: self.context.run(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)

    def settings(self):
        manifest = self.engine.manifest
        return {"bundle": str(self.engine.bundle_dir), "shape_profile": self.engine.profile.describe(),
                "backend_settings": manifest["backend_settings"],
                "throughput": {"hint": "throughput", "contexts": self.throughput_settings.contexts,
                               "cpu_threads": self.throughput_settings.cpu_threads},
                "latency": {"hint": "latency", "contexts": self.engine.settings.contexts,
                            "cpu_threads": self.engine.settings.cpu_threads},
                "bucketing": self.bucketing,
                "batch_size": self.engine.default_batch_size(),
                "build_check": manifest["checks"].get("against_fp32_reference")}
