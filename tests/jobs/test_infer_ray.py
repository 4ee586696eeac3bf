"""`infer --ray` (jobs/infer_ray.py) on a local two-node Ray cluster (ray.cluster_utils.Cluster, one CPU per node,
started once for this module and stopped after it, so one Ray cluster runs at a time in the suite): the
predictions and metrics equal single-machine infer row for row for every task, both nodes classify, and an actor
killed mid-run changes nothing. The checks that need no Ray (flags, Parquet reading, bad rows) come first."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import roberta_deploy
from roberta_deploy.data import read_dataset, read_dataset_chunks
from roberta_deploy.jobs.infer import classify_and_write
from roberta_deploy.runtime.engine import THROUGHPUT, Engine

TIMEOUT_S = 300


def environment(**extra) -> dict:
    package_root = str(Path(roberta_deploy.__file__).resolve().parents[1])
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **extra,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roberta_deploy", "infer", *args], capture_output=True, text=True,
                          timeout=TIMEOUT_S, env=environment(), **kwargs)


def texts_of(samples_tsv: Path) -> list[str]:
    return read_dataset(samples_tsv).texts


def write_task_data(folder: Path, kind: str, texts: list[str], rows: int) -> Path:
    """`rows` labelled rows for a task model of conftest.TASK_MODELS, texts drawn from the samples."""
    chooser = random.Random(kind)
    path = folder / f"{kind}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(rows):
            text, other = texts[index % len(texts)], chooser.choice(texts)
            row = {"single": {"text": text, "label": index % 2},
                   "pairs": {"text_a": text, "text_b": other, "label": index % 3},
                   "multilabel": {"text": text, "labels": sorted(chooser.sample(range(4), chooser.randint(0, 2)))},
                   "regression": {"text_a": text, "text_b": other, "label": round(chooser.random(), 3)}}[kind]
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# -- no Ray needed ----------------------------------------------------------------------------------------------

def test_ray_flags_are_checked_before_anything_starts(tmp_path, samples_tsv):
    bundle = tmp_path / "missing-bundle"
    for flags, says in ((["--replicas", "2"], "--replicas"), (["--ray", "--replicas", "2", "--autoscale", "1:2"],
                                                               "--autoscale"),
                        (["--ray", "--replica-cpus", "0"], "--replica-cpus"), (["--ray", "--cpu-threads", "1"],
                                                                               "--cpu-threads"),
                        (["--ray", "--target-ongoing-requests", "3"], "No such option")):
        result = cli("--bundle", str(bundle), "--data", str(samples_tsv), "--output", str(tmp_path / "out"), *flags)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and says in result.stderr, (flags, result.stderr)
        assert says == "No such option" or len(lines) == 1, (flags, result.stderr)
    assert not (tmp_path / "out").exists()


def test_parquet_files_and_folders_read_as_the_same_rows_as_jsonl(tmp_path, samples_tsv):
    import pyarrow
    import pyarrow.parquet as parquet

    texts = texts_of(samples_tsv)
    jsonl = write_task_data(tmp_path, "pairs", texts, 50)
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    folder = tmp_path / "parts"
    folder.mkdir()
    for number, start in enumerate(range(0, 50, 20)):
        parquet.write_table(pyarrow.Table.from_pylist(rows[start:start + 20]), folder / f"part-{number:05d}.parquet")
    expected = read_dataset(jsonl, text_pairs=True)
    for source in (tmp_path / "pairs.parquet", folder):
        chunks = list(read_dataset_chunks(source, text_pairs=True, chunk_rows=16))
        assert [text for chunk in chunks for text in chunk.texts] == expected.texts
        assert [pair for chunk in chunks for pair in chunk.text_pairs] == expected.text_pairs
        assert [label for chunk in chunks for label in chunk.labels] == expected.labels
    part = [dict(row, label=str(row["label"])) for row in rows[20:40]]  # labels as names or ids in a text column
    part[7]["label"] = "seven"
    parquet.write_table(pyarrow.Table.from_pylist(part), folder / "part-00001.parquet")
    with pytest.raises(roberta_deploy.errors.InputDataError, match=r"part-00001\.parquet:8: unknown label 'seven'"):
        list(read_dataset_chunks(folder, text_pairs=True))


def test_a_bad_row_fails_infer_ray_before_ray_starts_naming_its_line(tmp_path, bundle_factory, samples_tsv):
    data = tmp_path / "bad.tsv"
    lines = samples_tsv.read_text(encoding="utf-8").splitlines()
    lines[150] = "7\t" + lines[150].split("\t", 1)[1]  # a label the model does not have, far into the file
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("--ray", "--bundle", str(bundle_factory()), "--data", str(data), "--output", str(tmp_path / "out"))
    assert result.returncode != 0 and f"{data}:151: unknown label 7" in result.stderr, result.stderr
    assert "Ray" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_leaves_no_output_and_nothing_running(tmp_path, bundle_factory, samples_tsv, sig):
    """The command starts a local Ray instance of its own (no cluster fixture is up yet in this module)."""
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    header, *rows = samples_tsv.read_text(encoding="utf-8").splitlines()
    data = tmp_path / "many.tsv"
    data.write_text("\n".join([header, *rows * 300]) + "\n", encoding="utf-8")  # 60,600 rows: minutes of work
    before = set(actor_processes())
    process = subprocess.Popen([sys.executable, "-m", "roberta_deploy", "infer", "--ray", "--bundle",
                                str(bundle_factory()), "--data", str(data), "--output", str(tmp_path / "out")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment(),
                               start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not set(actor_processes()) - before:  # the pool is up: work has started
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.5)
        time.sleep(2)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    assert process.returncode == (143 if sig == signal.SIGTERM else 130), stderr[-2000:]
    assert not (tmp_path / "out").exists()
    assert not [entry for entry in tmp_path.iterdir() if entry.name.startswith(".out")], list(tmp_path.iterdir())
    deadline = time.monotonic() + 60
    while (set(actor_processes()) - before or _group_alive(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not set(actor_processes()) - before, "an actor outlived the command"
    assert not _group_alive(process.pid), "a process of the command's group outlived it"


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


# -- on a two-node cluster ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    """Two nodes of one CPU each (so a pool of two one-CPU actors puts one on each), small object stores; this
    test process is the driver."""
    pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    pytest.importorskip("pyarrow", reason="the ray extra is not installed: pip install -e '.[ray]'")
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "object_store_memory": 100 * 2**20})
    cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def infer_here(bundle: Path, data: Path, output: Path, **reading):
    """Single-machine infer (the reference): predictions rows and metrics."""
    with Engine.load(bundle, hint=THROUGHPUT) as engine:
        chunks = read_dataset_chunks(data, label_names=engine.label_names, text_pairs=engine.task.text_pairs,
                                     task=engine.task.kind, **reading)
        with open(output, "w", encoding="utf-8") as handle:
            report = classify_and_write(engine, chunks, handle)
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()], report.metrics


def infer_on_cluster(bundle: Path, data: Path, output: Path, on_rows_done=None, rows_per_block: int = 128,
                     **reading):
    from roberta_deploy.jobs.infer_ray import BundleSummary, classify_on_ray
    from roberta_deploy.serve.ray_deployment import RayOptions

    summary = BundleSummary.read(bundle)
    chunks = read_dataset_chunks(data, label_names=summary.label_names, text_pairs=summary.task.text_pairs,
                                 task=summary.task.kind, **reading)
    with open(output, "w", encoding="utf-8") as handle:
        report = classify_on_ray(summary, chunks, handle, "jsonl", RayOptions(replicas=2, replica_cpus=1),
                                 on_rows_done=on_rows_done, rows_per_block=rows_per_block)
    return [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()], report.metrics


SCORE_FIELDS = ("score", "probabilities", "scores")
RUN_FIELDS = ("elapsed_seconds", "texts_per_second", "ray")


def assert_same_results(ours: list[dict], reference: list[dict], ours_metrics: dict, reference_metrics: dict):
    """Row for row: every field equal, scores within fp32's tolerance (batches differ between the runs, so the
    padding and summation order do); the metrics equal but for timings."""
    assert len(ours) == len(reference)
    for mine, theirs in zip(ours, reference):
        assert {key: value for key, value in mine.items() if key not in SCORE_FIELDS} == \
               {key: value for key, value in theirs.items() if key not in SCORE_FIELDS}, (mine, theirs)
        for key in SCORE_FIELDS:
            if key in theirs:
                np.testing.assert_allclose(mine[key], theirs[key], atol=1e-4)
    assert_close({key: value for key, value in ours_metrics.items() if key not in RUN_FIELDS},
                 {key: value for key, value in reference_metrics.items() if key not in RUN_FIELDS})


def assert_close(ours, reference, where: str = "metrics") -> None:
    """Equal, but floats (correlations, errors over scores that differ in the last digits) within 1e-4: relative,
    or absolute for values near 0 (a random model's Spearman of 0.045 moved 4.7e-6 when two nearly equal scores,
    each within the rows' 1e-4, swapped ranks)."""
    if isinstance(reference, dict):
        assert isinstance(ours, dict) and ours.keys() == reference.keys(), (where, ours, reference)
        for key in reference:
            assert_close(ours[key], reference[key], f"{where}.{key}")
    elif isinstance(reference, list):
        assert isinstance(ours, list) and len(ours) == len(reference), (where, ours, reference)
        for index, (mine, theirs) in enumerate(zip(ours, reference)):
            assert_close(mine, theirs, f"{where}[{index}]")
    elif isinstance(reference, float):
        assert ours == pytest.approx(reference, rel=1e-4, abs=1e-4), (where, ours, reference)
    else:
        assert ours == reference, (where, ours, reference)


@pytest.mark.parametrize("kind", ["single", "pairs", "multilabel", "regression"])
def test_results_equal_single_machine_infer_row_for_row_on_both_nodes(ray_cluster, kind, bundle_factory,
                                                                       task_bundle_factory, samples_tsv, tmp_path):
    bundle = bundle_factory() if kind == "single" else task_bundle_factory(kind)
    data = write_task_data(tmp_path, kind, texts_of(samples_tsv), 600)
    reading = {"label_column": "labels"} if kind == "multilabel" else {}
    reference, reference_metrics = infer_here(bundle, data, tmp_path / "here.jsonl", **reading)
    ours, metrics = infer_on_cluster(bundle, data, tmp_path / "ray.jsonl", **reading)
    assert_same_results(ours, reference, metrics, reference_metrics)
    assert metrics["ray"]["nodes"] == 2, metrics["ray"]  # both nodes classified rows
    assert sum(metrics["ray"]["rows_per_node"].values()) == 600


def actor_processes() -> list[int]:
    """Pids of the pool's actors (Ray names each process after its actor class)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"ClassifyBlocks" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            continue
    return found


def test_an_actor_killed_mid_run_changes_nothing_in_the_output(ray_cluster, bundle_factory, samples_tsv, tmp_path):
    bundle = bundle_factory()
    data = write_task_data(tmp_path, "single", texts_of(samples_tsv), 2000)
    reference, reference_metrics = infer_here(bundle, data, tmp_path / "here.jsonl")
    done = [0]
    killed: list[tuple[int, int]] = []  # (pid, rows done when it was killed)

    def kill_one_actor_once(rows: int) -> None:
        done[0] += rows
        if not killed:
            victims = actor_processes()
            assert victims, "no actor process found"
            os.kill(victims[0], signal.SIGKILL)
            killed.append((victims[0], done[0]))

    ours, metrics = infer_on_cluster(bundle, data, tmp_path / "ray.jsonl", on_rows_done=kill_one_actor_once,
                                     rows_per_block=64)
    assert killed and killed[0][1] < 2000, killed  # killed while rows were left
    assert not Path(f"/proc/{killed[0][0]}").exists() or b"ClassifyBlocks" not in \
        Path(f"/proc/{killed[0][0]}/cmdline").read_bytes()
    assert_same_results(ours, reference, metrics, reference_metrics)
