"""`infer --ray`: a data file through an actor pool on a Ray cluster (Ray Data's map_batches), with the
predictions file and metrics that `infer` writes on one machine.

The driver reads the file as `infer` does (data.read_dataset_chunks: one reader, one set of errors naming
file and line) and hands each chunk to Ray's object store as an Arrow table; Ray Data splits the chunks
into blocks and sends them to a pool of actors, each holding one engine and its batcher (length-bucketed
batches, the runtime's offline path), loaded from the bundle shipped through the object store as
`serve --ray` ships it (no shared filesystem). The blocks come back in the input's order and the driver
writes them as they arrive, keeping only what the metrics need, as `infer` does.

ray and pyarrow are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..atomic import OutputFolder
from ..data import Dataset
from ..errors import BackendError, RobertaDeployError
from ..manifest import KIND_BUNDLE, read_manifest
from ..runtime.batcher import Batcher
from ..runtime.engine import THROUGHPUT, Engine
from ..runtime.results import Predictions
from ..serve.bundle_cache import cached_bundle, default_cache_root, pack_bundle, unpack_bundle
from ..serve.ray_deployment import RayOptions, ShippedBundle, _connect, import_ray
from ..shapes import ShapeProfile
from ..tasks import DEFAULT_THRESHOLD, MULTI_LABEL, Task
from .infer import (METRICS_FILE, InferenceReport, summary_of, check_output_format, check_threshold, open_predictions,
                    prediction_rows, predictions_file, summarize, write_predictions)

ROWS_PER_BLOCK = 1024  # rows an actor classifies per call: enough for the batcher to bucket by length, and
# blocks small enough that every actor of the pool gets some of a chunk
# An actor that dies (its process killed, its node lost) is started again and the block it held is sent
# again: Ray Data's own retry. Bounded, so a bundle that crashes every process fails the run instead of
# looping.
ACTOR_RESTARTS = 4
BLOCK_RETRIES = 4
# The pool's first actors (--replicas, or the MIN of --autoscale) must be up within this long: work then
# spreads over all of them from the first block, and a cluster without the CPUs for them fails the run with
# Ray Data's "Timed out while starting actors" instead of waiting for ever.
ACTORS_START_S = 600


@dataclass(frozen=True)
class BundleSummary:
    """What the driver needs of a bundle without loading an engine (it may lack the backend)."""

    path: Path
    label_names: tuple[str, ...]
    task: Task
    backend: str
    precision: str
    max_seq_length: int
    default_batch_size: int

    @classmethod
    def read(cls, bundle: str | Path) -> "BundleSummary":
        manifest = read_manifest(Path(bundle), KIND_BUNDLE)
        profile = ShapeProfile.from_dict(manifest["shape_profile"])
        return cls(path=Path(bundle), label_names=tuple(manifest["labels"]), task=Task.from_manifest(manifest),
                   backend=manifest["backend"], precision=manifest["precision"], max_seq_length=profile.max_seq,
                   default_batch_size=profile.max_batch if not profile.dynamic else min(profile.max_batch, 32))


@dataclass(frozen=True)
class ActorSettings:
    """What each actor of the pool is told (picklable: it travels to every node)."""

    bundle: ShippedBundle
    cache_dir: str | None
    cpu_threads: int
    contexts: int | None
    batch_size: int | None
    max_batch_tokens: int | None
    bucketing: bool


class ClassifyBlocks:
    """One actor of the pool: one engine and its batcher, loaded once; classifies the Arrow tables Ray Data
    hands it and returns them with the logits, truncation and token lengths of each row added, and the
    node and process that did the work (counted in the metrics, then dropped)."""

    def __init__(self, settings: ActorSettings):
        import ray

        cache_root = Path(settings.cache_dir) if settings.cache_dir else default_cache_root()
        shipped = settings.bundle
        folder = cached_bundle(shipped.digest, cache_root) or unpack_bundle(ray.get(shipped.ref), cache_root)
        # Unpinned: Ray reserves CPUs by count, not by core, and other actors compute on this node too.
        self.engine = Engine.load(folder, contexts=settings.contexts, cpu_threads=settings.cpu_threads,
                                  hint=THROUGHPUT, pin_threads=False)
        # The one batcher of this actor, created and started (every context warmed up) here; it lives as long
        # as the actor's process, which Ray ends when the pool is done.
        self.batcher = Batcher(self.engine).start()
        self.settings = settings
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, table):
        import pyarrow

        cpu_started = time.process_time()  # every thread of this process: the engine's included
        texts = table.column("text").to_pylist()
        inputs = (texts if "text_pair" not in table.column_names
                  else list(zip(texts, table.column("text_pair").to_pylist())))
        predictions = self.batcher.run(inputs, batch_size=self.settings.batch_size,
                                       max_batch_tokens=self.settings.max_batch_tokens,
                                       bucketing=self.settings.bucketing)
        labels = predictions.logits.shape[1]
        logits = pyarrow.FixedSizeListArray.from_arrays(pyarrow.array(predictions.logits.astype(np.float32).ravel()),
                                                        labels)
        rows = len(table)
        return (table.append_column("logits", logits)
                .append_column("truncated", pyarrow.array(predictions.truncated.astype(bool)))
                .append_column("token_length", pyarrow.array(predictions.token_lengths.astype(np.int64)))
                .append_column("node", pyarrow.array([self.node] * rows))
                .append_column("pid", pyarrow.array([os.getpid()] * rows, type=pyarrow.int64()))
                .append_column("cpu_s", pyarrow.array([(time.process_time() - cpu_started) / rows] * rows)))


def chunk_table(dataset: Dataset, first_index: int):
    """A chunk as an Arrow table: row index, line, text (and text_pair), the gold label as JSON (a label id,
    a list of ids or a score: one column type for every task)."""
    import pyarrow

    columns = {"index": pyarrow.array(range(first_index, first_index + len(dataset)), type=pyarrow.int64()),
               "line": pyarrow.array(dataset.line_numbers, type=pyarrow.int64()),
               "text": pyarrow.array(dataset.texts, type=pyarrow.string())}
    if dataset.text_pairs is not None:
        columns["text_pair"] = pyarrow.array(dataset.text_pairs, type=pyarrow.string())
    if dataset.labels is not None:
        columns["gold"] = pyarrow.array([json.dumps(label) for label in dataset.labels], type=pyarrow.string())
    return pyarrow.table(columns)


def table_results(table, summary: BundleSummary, source: str, threshold: float) -> tuple[Dataset, Predictions]:
    """A classified table back into what `infer` writes rows from."""
    labels = None
    if "gold" in table.column_names:
        gold = [json.loads(value) for value in table.column("gold").to_pylist()]
        labels = [tuple(value) for value in gold] if summary.task.kind == MULTI_LABEL else gold
    dataset = Dataset(texts=table.column("text").to_pylist(), labels=labels,
                      line_numbers=table.column("line").to_pylist(), source=source,
                      text_pairs=table.column("text_pair").to_pylist() if "text_pair" in table.column_names else None,
                      task=summary.task.kind)
    logits = np.asarray(table.column("logits").combine_chunks().flatten(), dtype=np.float32)
    predictions = Predictions(logits=logits.reshape(len(table), len(summary.label_names)),
                              truncated=np.asarray(table.column("truncated"), dtype=bool),
                              token_lengths=np.asarray(table.column("token_length"), dtype=np.int64),
                              label_names=summary.label_names, task=summary.task, threshold=threshold)
    return dataset, predictions


@contextlib.contextmanager
def ray_session(ray_options: RayOptions):
    """Connected (or a local instance started) for the block; disconnected after, which ends every actor this
    driver started, on an error or a signal too. A Ray that the caller had connected is left connected."""
    ray, _ = import_ray()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    connected_here = not ray.is_initialized()
    _connect(ray, ray_options)
    if main_thread:
        # ray.init installs a SIGTERM handler of its own (sys.exit): the caller's (the CLI's, which unwinds
        # like Ctrl-C) stays in charge.
        signal.signal(signal.SIGTERM, previous)
    try:
        yield ray
    finally:
        if connected_here:
            ray.shutdown()


def classify_on_ray(summary: BundleSummary, chunks: Iterable[Dataset], handle, output_format: str,
                    ray_options: RayOptions, *, contexts: int | None = None, batch_size: int | None = None,
                    max_batch_tokens: int | None = None, bucketing: bool = True,
                    on_rows_done: Callable[[int], None] | None = None, threshold: float = DEFAULT_THRESHOLD,
                    rows_per_block: int = ROWS_PER_BLOCK) -> InferenceReport:
    """classify_and_write's counterpart on Ray: the rows of `chunks` through an actor pool, each chunk's
    predictions written to `handle` in input order as they come back. The metrics equal infer's (the same
    summarize over the same logits); `ray` adds the actors, nodes and rows per node."""
    import ray.data

    check_threshold(threshold)
    started = time.perf_counter()
    packed = pack_bundle(summary.path)  # a corrupt bundle fails here, before Ray starts
    with ray_session(ray_options) as ray:
        shipped = ShippedBundle(name=summary.path.name, digest=packed.digest, ref=ray.put(packed))
        del packed  # the object store holds it now
        refs, source, first_index = [], str(summary.path), 0
        for dataset in chunks:  # read once more, now into the object store; the driver keeps only references
            table = chunk_table(dataset, first_index)
            refs.extend(ray.put(table.slice(offset, rows_per_block)) for offset in range(0, len(table), rows_per_block))
            first_index += len(dataset)
            source = dataset.source
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # blocks come back in the input's order
        # Every block starts on the driver's node (its chunks were put there): sent by locality, all would go to
        # the actors on that node while the others wait.
        with warnings.catch_warnings():  # deprecated in 2.60 ("managed internally"), still read
            warnings.simplefilter("ignore")
            context.execution_options.actor_locality_enabled = False
        context.wait_for_min_actors_s = ACTORS_START_S
        context.enable_progress_bars = False  # the caller shows one bar, the same as infer's
        context.print_on_execution_start = False
        settings = ActorSettings(bundle=shipped, cache_dir=ray_options.cache_dir, cpu_threads=ray_options.cpu_threads,
                                 contexts=contexts, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                 bucketing=bucketing)
        low, high = ray_options.autoscale or (ray_options.replicas, ray_options.replicas)
        with warnings.catch_warnings():
            # Ray 2.60 calls the actor options "deprecated" (named parameters replace them) but names none for
            # restarts and retries; without them Ray Data restarts a crashing actor forever.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
            classified = ray.data.from_arrow_refs(refs).map_batches(
                ClassifyBlocks, fn_constructor_args=(settings,), batch_size=rows_per_block, batch_format="pyarrow",
                # Two blocks in flight per actor: one computing, one arriving. Ray Data's default of four lets
                # the first actor up take every block of a small file while the others still load their engines.
                compute=ray.data.ActorPoolStrategy(min_size=max(low, 1), max_size=high,
                                                   max_tasks_in_flight_per_actor=2),
                num_cpus=ray_options.replica_cpus, max_restarts=ACTOR_RESTARTS, max_task_retries=BLOCK_RETRIES)
        del refs  # the dataset holds them
        done: list[Predictions] = []
        gold: list | None = None
        rows_per_node: dict[str, int] = {}
        actor_cpu_s = [0.0]
        processes: set[int] = set()
        text_pairs = False

        def rows() -> Iterator[dict]:
            nonlocal gold, text_pairs
            with unwrapped_errors():
                for table in classified.iter_batches(batch_size=None, batch_format="pyarrow"):
                    dataset, predictions = table_results(table, summary, source, threshold)
                    done.append(predictions)
                    text_pairs = dataset.text_pairs is not None
                    if dataset.labels is not None:
                        gold = gold if gold is not None else []
                        gold.extend(dataset.labels)
                    for node in table.column("node").to_pylist():
                        rows_per_node[node] = rows_per_node.get(node, 0) + 1
                    processes.update(table.column("pid").unique().to_pylist())
                    actor_cpu_s[0] += float(np.sum(table.column("cpu_s")))
                    yield from prediction_rows(predictions, dataset, table.column("index")[0].as_py())
                    if on_rows_done is not None:
                        on_rows_done(len(table))

        with contextlib.closing(rows()) as stream:
            write_predictions(handle, stream, output_format, summary.label_names)
        predictions = Predictions(logits=np.concatenate([chunk.logits for chunk in done]),
                                  truncated=np.concatenate([chunk.truncated for chunk in done]),
                                  token_lengths=np.concatenate([chunk.token_lengths for chunk in done]),
                                  label_names=summary.label_names, task=summary.task, threshold=threshold)
    metrics = summarize(predictions, gold, source, text_pairs, time.perf_counter() - started)
    metrics.update({"bundle": str(summary.path), "backend": summary.backend, "precision": summary.precision,
                    "batch_size": batch_size or summary.default_batch_size, "bucketing": bucketing,
                    "max_seq_length": summary.max_seq_length,
                    "ray": {"actors": f"{low}..{high}" if ray_options.autoscale else high,
                            "actor_cpus": ray_options.replica_cpus, "nodes": len(rows_per_node),
                            "rows_per_node": rows_per_node, "actor_processes": len(processes),
                            # CPU the actors spent classifying (tokenizing, batching, the engine), all threads
                            "actor_cpu_seconds": round(actor_cpu_s[0], 3)}})
    return InferenceReport(predictions, metrics, summary_of(metrics))


@contextlib.contextmanager
def unwrapped_errors():
    """An error of ours raised inside an actor (a text the tokenizer refuses, a bundle this node's CPU cannot
    run) reaches the driver wrapped in Ray's task errors: raise the one-line error itself. Any other failure on
    the cluster (an actor that cannot start: roberta-deploy missing on a node) becomes one line naming it."""
    from ray.exceptions import RayError

    try:
        yield
    except RobertaDeployError:
        raise
    except Exception as error:
        cause: BaseException | None = error
        while cause is not None and not isinstance(cause, RobertaDeployError):
            cause = getattr(cause, "cause", None) or cause.__cause__
        if cause is not None:
            raise cause from None
        if "KeyboardInterrupt" in str(error):  # Ctrl-C that landed inside Ray's own wait, re-raised as its error
            raise KeyboardInterrupt from None
        if not isinstance(error, RayError) and type(error).__module__.split(".")[0] != "ray":
            raise
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else repr(error))
        raise BackendError(f"the classification on Ray failed: {reason[:300]}",
                           "install the same roberta-deploy with the [ray] and backend extras on every node; each "
                           "actor's log is under Ray's session folder (/tmp/ray/session_latest/logs)") from None


def infer_on_ray_to_folder(summary: BundleSummary, chunks: Iterable[Dataset], output: OutputFolder,
                           output_format: str, ray_options: RayOptions, **options) -> InferenceReport:
    """infer_to_folder on Ray: predictions and metrics.json appear whole in `output` (reserved and locked by
    the caller before the work) or not at all."""
    check_output_format(output_format)
    with output.staging() as work:
        with open_predictions(work / predictions_file(output_format), output_format) as handle:
            report = classify_on_ray(summary, chunks, handle, output_format, ray_options, **options)
        (work / METRICS_FILE).write_text(json.dumps(report.metrics, indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return report

