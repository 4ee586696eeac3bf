"""Bundles shipped as bytes and unpacked into a per-machine cache (what Ray replicas on other nodes do)."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest

from roberta_deploy.errors import BundleError, OutputExistsError, OutputLockedError
from roberta_deploy.manifest import MANIFEST_FILE
from roberta_deploy.runtime.engine import Engine
from roberta_deploy.serve.bundle_cache import cached_bundle, pack_bundle, unpack_bundle


@pytest.fixture(scope="module")
def bundle(bundle_factory):
    return bundle_factory("openvino", "fp32")


def test_an_unpacked_bundle_loads_and_answers_as_the_original(bundle, tmp_path, samples_tsv):
    packed = pack_bundle(bundle)
    manifest = json.loads(packed.files[MANIFEST_FILE])
    assert set(packed.files) == {MANIFEST_FILE, *manifest["files"]}
    folder = unpack_bundle(packed, tmp_path / "cache")
    assert folder == tmp_path / "cache" / packed.digest
    texts = ["房间干净，服务热情", "太差了", "一般"]
    assert (Engine.load(folder).predict(texts).logits == Engine.load(bundle).predict(texts).logits).all()
    assert cached_bundle(packed.digest, tmp_path / "cache") == folder
    assert unpack_bundle(packed, tmp_path / "cache") == folder  # the second replica on a machine reuses it


def test_a_copy_damaged_on_the_way_is_refused_and_never_cached(bundle, tmp_path):
    packed = pack_bundle(bundle)
    name = next(name for name in packed.files if name.endswith(".bin"))
    damaged = dataclasses.replace(packed, files={**packed.files, name: packed.files[name][:-1] + b"\0"})
    with pytest.raises(BundleError, match="corrupt"):
        unpack_bundle(damaged, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing half-written, not even the staging folder
    swapped = dataclasses.replace(packed, digest="0" * 64)
    with pytest.raises(BundleError, match="different manifest.json"):
        unpack_bundle(swapped, tmp_path / "cache")


def test_a_cached_copy_damaged_later_is_written_again(bundle, tmp_path):
    packed = pack_bundle(bundle)
    folder = unpack_bundle(packed, tmp_path / "cache")
    name = next(name for name in packed.files if name.endswith(".xml"))
    (folder / name).write_text("damaged", encoding="utf-8")
    assert cached_bundle(packed.digest, tmp_path / "cache") is None
    assert unpack_bundle(packed, tmp_path / "cache") == folder
    assert (folder / name).read_bytes() == packed.files[name]


def test_a_cache_path_that_can_never_be_written_is_raised_at_once_not_waited_for(bundle, tmp_path):
    packed = pack_bundle(bundle)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / packed.digest).write_text("a file where the folder goes", encoding="utf-8")
    started = threading.Event()
    errors = []

    def unpack():
        started.set()
        try:
            unpack_bundle(packed, tmp_path / "cache")
        except OutputExistsError as error:
            errors.append(error)

    worker = threading.Thread(target=unpack, daemon=True)
    worker.start()
    worker.join(30)  # it used to retry for WAIT_FOR_OTHER_WRITER_S (10 minutes), as if another writer held it
    assert started.is_set() and not worker.is_alive()
    assert len(errors) == 1 and not isinstance(errors[0], OutputLockedError) and "not a folder" in errors[0].problem


def test_replicas_unpacking_at_once_on_one_machine_share_one_copy(bundle, tmp_path):
    packed = pack_bundle(bundle)
    folders, errors = [], []

    def unpack():
        try:
            folders.append(unpack_bundle(packed, tmp_path / "cache"))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=unpack) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and not any(thread.is_alive() for thread in threads)
    assert folders == [tmp_path / "cache" / packed.digest] * 3
    assert cached_bundle(packed.digest, tmp_path / "cache") is not None


def test_packing_a_corrupt_bundle_fails_where_it_is(bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    next(copy.glob("*.bin")).write_bytes(b"not weights")
    with pytest.raises(BundleError, match="corrupt"):
        pack_bundle(copy)
