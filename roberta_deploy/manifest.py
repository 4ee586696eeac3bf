"""manifest.json: what an export folder or engine bundle holds, where it came from, and what it passed.

Later stages read the manifest instead of guessing from file names, and check every file against
the sha256 recorded here, so a truncated or swapped file is caught at load time.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from .atomic import atomic_write_json
from .errors import BundleError
from .logs import get_logger

logger = get_logger(__name__)

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
KIND_EXPORT = "export"
KIND_BUNDLE = "bundle"
TRACKED_LIBRARIES = ("roberta-deploy", "torch", "transformers", "tokenizers", "onnx", "onnxruntime",
                     "openvino", "nncf", "numpy")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    return versions


def write_manifest(folder: Path, kind: str, content: dict) -> dict:
    """Write folder/manifest.json with `content` plus schema, kind, file hashes and versions."""
    files = {
        str(path.relative_to(folder)): file_sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **content,
        "files": files,
        "library_versions": library_versions(),
    }
    atomic_write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(folder: str | Path, kind: str, verify_files: bool = True) -> dict:
    """Read and check folder/manifest.json; raise BundleError naming what is wrong and how to fix it."""
    folder = Path(folder)
    rebuild = "re-run export" if kind == KIND_EXPORT else "rebuild the bundle with `roberta-deploy build`"
    if not folder.is_dir():
        raise BundleError(f"{kind} folder {folder} does not exist", f"check the path, or {rebuild}")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{folder} has no {MANIFEST_FILE}, so it is not a roberta-deploy {kind}", rebuild)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path} is corrupt ({error})", rebuild) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("schema_version"), int):
        raise BundleError(f"{path} has no schema_version", rebuild)
    if manifest["schema_version"] > SCHEMA_VERSION:
        raise BundleError(
            f"{folder} was written with manifest schema {manifest['schema_version']}, "
            f"newer than this roberta-deploy understands ({SCHEMA_VERSION})",
            "upgrade roberta-deploy, or rebuild the bundle with this version")
    if manifest.get("kind") != kind:
        raise BundleError(f"{folder} is a {manifest.get('kind')!r} folder, not a {kind}",
                          "pass an export folder to build and a bundle to infer/perf/inspect")
    if verify_files:
        verify_manifest_files(folder, manifest, rebuild)
        logger.info("%s %s: %d files match their manifest hashes", kind, folder, len(manifest.get("files", {})))
    return manifest


def verify_manifest_files(folder: Path, manifest: dict, fix: str) -> None:
    for name, expected in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise BundleError(f"{folder} is missing {name}", fix)
        if file_sha256(path) != expected:
            raise BundleError(f"{folder}/{name} is corrupt (its sha256 differs from the manifest)", fix)
