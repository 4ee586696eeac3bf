"""Prometheus metrics of one server, in a registry of its own (never the process-wide default one).

Names follow text-embeddings-inference's (`te_request_queue_duration`, `te_batch_next_size`) under the
`roberta_deploy_` prefix; every series carries the model name. The process's own CPU, memory and open
file descriptors (`process_*`, prometheus-client's process collector) join them, as every exporter has them.
Triton's per-model statistics (serve/statistics.py) are fed from the same observations.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily

from .statistics import InferenceStatistics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BATCH_TOKEN_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
BATCHER_COUNTERS = ("requests", "texts", "batches", "dropped", "failed")


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        registry = self.registry
        ProcessCollector(registry=registry)
        self.requests = Counter("roberta_deploy_requests", "HTTP requests by route and outcome (success, validation, "
                                "overloaded, dropped, backend_error, not_ready, unauthorized, internal_error)",
                                ["model", "route", "outcome"], registry=registry)
        self.in_flight = Gauge("roberta_deploy_requests_in_flight", "Inference requests admitted and not yet answered",
                               registry=registry)
        self.queue_size = Gauge("roberta_deploy_queue_size", "Texts waiting in the batcher for a batch", ["model"],
                                registry=registry)
        self.batch_size = Histogram("roberta_deploy_batch_size", "Texts per batch run by the engine", ["model"],
                                    buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.batch_tokens = Histogram("roberta_deploy_batch_tokens", "Padded tokens (rows x padded length) per batch",
                                      ["model"], buckets=BATCH_TOKEN_BUCKETS, registry=registry)
        # With roberta_deploy_batch_tokens_sum: how much of what the engine computed was padding.
        self.batch_real_tokens = Counter("roberta_deploy_batch_real_tokens", "The texts' own tokens in engine "
                                         "batches (padding not counted)", ["model"], registry=registry)
        self.batch_inference = Histogram("roberta_deploy_batch_inference_duration_seconds",
                                         "Engine time per batch", ["model"], buckets=DURATION_BUCKETS,
                                         registry=registry)
        self.durations = {stage: Histogram(f"roberta_deploy_request_{stage}_duration_seconds",
                                           f"Per request: {stage} time", ["model"], buckets=DURATION_BUCKETS,
                                           registry=registry)
                          for stage in ("tokenization", "queue", "inference", "total")}
        self.texts = Counter("roberta_deploy_texts", "Texts classified", ["model"], registry=registry)
        self.truncated = Counter("roberta_deploy_texts_truncated", "Texts cut at the bundle's max_seq_length",
                                 ["model"], registry=registry)
        self.connections_cut = Counter("roberta_deploy_connections_cut", "Connections the server closed: a request's "
                                       "headers or body past its deadline, or a connection past --max-connections",
                                       ["reason"], registry=registry)
        self.open_connections = Gauge("roberta_deploy_connections_open", "Client connections open now",
                                      registry=registry)
        self._batchers: dict[str, object] = {}
        self._request_children: dict[tuple[str, str, str], Counter] = {}
        self._model_children: dict[str, tuple] = {}
        self.statistics: dict[str, InferenceStatistics] = {}  # Triton's, per watched model
        registry.register(_BatcherStatsCollector(self._batchers))

    def watch(self, model_name: str, batcher) -> None:
        """Export a batcher's queue size, batches and counters under `model_name`."""
        self._batchers[model_name] = batcher
        statistics = self.statistics[model_name] = InferenceStatistics()
        self.queue_size.labels(model=model_name).set_function(lambda: batcher.queued_texts)
        size, tokens, seconds = (self.batch_size.labels(model=model_name), self.batch_tokens.labels(model=model_name),
                                 self.batch_inference.labels(model=model_name))
        real_tokens = self.batch_real_tokens.labels(model=model_name)

        def on_batch(stats) -> None:  # called from the batcher's worker threads; prometheus-client locks
            size.observe(stats.rows)
            tokens.observe(stats.tokens)
            real_tokens.inc(stats.real_tokens)
            seconds.observe(stats.inference_s)
            statistics.on_batch(stats)

        batcher.add_batch_listener(on_batch)

    def observe_result(self, model_name: str, result, total_s: float) -> None:
        tokenization, queue, inference, total, texts, truncated = self._per_model(model_name)
        timings = result.timings
        tokenization.observe(timings.tokenization_s)
        queue.observe(timings.queue_s)
        inference.observe(timings.inference_s)
        total.observe(total_s)
        texts.inc(len(result.logits))
        cut = int(result.truncated.sum())
        if cut:
            truncated.inc(cut)
        if model_name in self.statistics:
            self.statistics[model_name].on_result(result, total_s)

    def count(self, model_name: str, route: str, outcome: str) -> None:
        key = (model_name, route, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(model=model_name, route=route, outcome=outcome)
        child.inc()
        if outcome not in ("success", "dropped") and model_name in self.statistics:
            self.statistics[model_name].on_failure()  # only inference routes are counted

    def _per_model(self, model_name: str) -> tuple:
        """The labelled children of one model, looked up once (labels() costs more than the observation)."""
        children = self._model_children.get(model_name)
        if children is None:
            children = self._model_children[model_name] = (
                *(self.durations[stage].labels(model=model_name) for stage in ("tokenization", "queue", "inference",
                                                                               "total")),
                self.texts.labels(model=model_name), self.truncated.labels(model=model_name))
        return children

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _BatcherStatsCollector:
    """The batcher's own counters (requests, texts, batches, dropped before compute, failed), read at scrape time."""

    def __init__(self, batchers: dict[str, object]):
        self._batchers = batchers

    def collect(self):
        families = {name: CounterMetricFamily(f"roberta_deploy_batcher_{name}",
                                              f"Batcher counter: {name}", labels=["model"])
                    for name in BATCHER_COUNTERS}
        for model_name, batcher in self._batchers.items():
            stats = batcher.stats
            for name, family in families.items():
                value = getattr(stats, name, None)
                if value is not None:
                    family.add_metric([model_name], float(value))
        return list(families.values())

    def describe(self):
        return []


def metric_value(text: str, name: str, labels: Callable[[dict], bool] | None = None) -> float:
    """Sum of the samples called `name` in Prometheus text `text` whose labels pass `labels` (for tests, loadtest)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or labels(sample.labels)):
                total += sample.value
    return total
