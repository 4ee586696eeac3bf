"""Bundles for machines that do not have the folder: packed once into bytes where the bundle is, unpacked
into a local cache folder on each machine that serves it, checked against the manifest's hashes.

No Ray here: serve/ray_deployment.py moves the packed bytes through Ray's object store; anything else
that moves bytes (a file copy, an HTTP download) could use the same two functions.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..atomic import OutputFolder
from ..errors import BundleError, OutputLockedError
from ..manifest import KIND_BUNDLE, MANIFEST_FILE, read_manifest

CACHE_ENV = "ROBERTA_DEPLOY_CACHE"
WAIT_FOR_OTHER_WRITER_S = 600.0  # another replica on this machine is unpacking the same bundle: at most this long


@dataclass(frozen=True)
class PackedBundle:
    """Every file of a verified bundle as bytes, keyed by its path inside the bundle (manifest.json included)."""

    digest: str  # sha256 of manifest.json, which lists every other file's sha256: it names the whole content
    files: dict[str, bytes]

    @property
    def size(self) -> int:
        return sum(len(content) for content in self.files.values())


def default_cache_root() -> Path:
    """ROBERTA_DEPLOY_CACHE, else $XDG_CACHE_HOME/roberta-deploy/bundles (~/.cache by default)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "roberta-deploy" / "bundles"


def pack_bundle(folder: str | Path) -> PackedBundle:
    """Read a bundle after checking every file against its manifest hash, so a corrupt bundle fails here,
    once, and not on every machine it was sent to."""
    folder = Path(folder)
    manifest = read_manifest(folder, KIND_BUNDLE, verify_files=True)
    manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
    files = {MANIFEST_FILE: manifest_bytes}
    files.update({name: (folder / name).read_bytes() for name in manifest["files"]})
    return PackedBundle(digest=hashlib.sha256(manifest_bytes).hexdigest(), files=files)


def cached_bundle(digest: str, cache_root: Path) -> Path | None:
    """The cached folder of bundle `digest`, if one is there and every file still matches its hash."""
    folder = cache_root / digest
    if not (folder / MANIFEST_FILE).is_file():
        return None
    try:
        read_manifest(folder, KIND_BUNDLE, verify_files=True)
    except BundleError:
        return None  # damaged since it was written: unpack_bundle writes it again
    return folder


def unpack_bundle(packed: PackedBundle, cache_root: Path) -> Path:
    """Write `packed` to cache_root/DIGEST (whole or not at all) and return that folder; a cached copy that
    still verifies is used as it is. Replicas on one machine share the folder: while another one writes
    it, this one waits for it instead of writing it twice."""
    deadline = time.monotonic() + WAIT_FOR_OTHER_WRITER_S
    while True:
        folder = cached_bundle(packed.digest, cache_root)
        if folder is not None:
            return folder
        try:
            return _write(packed, cache_root / packed.digest)
        except OutputLockedError:  # a folder that is a file or holds foreign files is raised at once
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # another writer holds the folder's lock; it is done when the cache verifies


def _write(packed: PackedBundle, folder: Path) -> Path:
    if hashlib.sha256(packed.files.get(MANIFEST_FILE, b"")).hexdigest() != packed.digest:
        raise BundleError(f"the shipped bundle {packed.digest[:12]} arrived with a different {MANIFEST_FILE}",
                          "restart the deployment so the bundle is sent again")
    with OutputFolder(folder, overwrite=True, flag="the bundle cache folder") as output:
        with output.staging() as work:
            for name, content in packed.files.items():
                if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
                    raise BundleError(f"the shipped bundle {packed.digest[:12]} names {name!r}, which is not a "
                                      "file inside the bundle", "rebuild the bundle with `roberta-deploy build`")
                path = work / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
            # Hashes checked before the folder is put in place: a copy that arrived damaged is never cached.
            read_manifest(work, KIND_BUNDLE, verify_files=True)
    return folder
