"""manifest.json: what an export folder or engine bundle holds, where it came from, and what it passed.

Later stages read the manifest instead of guessing from file names, and check every file against
the sha256 recorded here, so a truncated or swapped file is caught at load time.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path, PurePosixPath

from .atomic import atomic_write_json
from .errors import BundleError
from .logs import get_logger
from .precision import PRECISIONS
from .tasks import schema_problem as task_schema_problem

logger = get_logger(__name__)

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
KIND_EXPORT = "export"
KIND_BUNDLE = "bundle"
TRACKED_LIBRARIES = ("roberta-deploy", "torch", "transformers", "tokenizers", "onnx", "onnxruntime",
                     "openvino", "nncf", "numpy")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOKENIZER_FILES = ("tokenizer/tokenizer.json", "tokenizer/tokenizer_meta.json")
# What each backend needs from a bundle: its engine files, and the settings its loader reads. The one place
# these names are declared (each backend reads its own from here); here, not in backends/, so that reading
# a manifest loads no engine code.
BACKEND_REQUIREMENTS = {  # files: one of these sets must be listed (newest first)
    "openvino": {"files": (("openvino_model.xml", "openvino_model.bin"), ("model.xml", "model.bin")),
                 "settings": {"inference_precision": ("f32", "bf16", "f16")}},
    "onnxruntime": {"files": (("model.onnx",),), "settings": {}},
    "torch": {"files": (("config.json", "model.safetensors"),), "settings": {}},
}
SHAPE_PROFILE_KEYS = {"dynamic": bool, "min_batch": int, "max_batch": int, "min_seq": int, "max_seq": int,
                      "static_seq_lengths": list}


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
    problem = schema_problem(manifest, kind)
    if problem:
        raise BundleError(f"{path} is corrupt: {problem}", rebuild)
    if verify_files:
        verify_manifest_files(folder, manifest, rebuild)
        logger.info("%s %s: %d files match their manifest hashes", kind, folder, len(manifest.get("files", {})))
    return manifest


def schema_problem(manifest: dict, kind: str) -> str | None:
    """What makes `manifest` unusable for a `kind` folder (a missing key, a wrong type, labels that do not
    match the model, settings its backend needs), or None when every later stage can read it."""
    def check(container: dict, key: str, expected, where: str = "") -> str | None:
        name = f"{where}{key}"
        if key not in container:
            return f"{name} is missing"
        value = container[key]
        if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            return f"{name} is not an integer"
        if expected is not int and not isinstance(value, expected):
            return f"{name} is not a {getattr(expected, '__name__', 'value of the right type')}"
        return None

    def string_list(value) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(item, str) for item in value)

    common = {"files": dict, "library_versions": dict, "labels": list, "inputs": list, "max_seq_length": int,
              "checks": dict, "source_model": str}
    specific = ({"backend": str, "precision": str, "backend_settings": dict, "shape_profile": dict,
                 "export_manifest": dict} if kind == KIND_BUNDLE else
                {"vocab_size": int, "pad_token_id": int, "num_labels": int, "opset": int, "hidden_size": int,
                 "num_attention_heads": int, "model_type": str})
    for key, expected in {**common, **specific}.items():
        problem = check(manifest, key, expected)
        if problem:
            return problem
    files = manifest["files"]
    if not all(isinstance(name, str) and isinstance(digest, str) for name, digest in files.items()):
        return "files must map file names to sha256 strings"
    if not string_list(manifest["labels"]):
        return "labels must be a non-empty list of names"
    problem = task_schema_problem(manifest)  # task, problem_type, text_pairs: absent before issue 13
    if problem:
        return problem
    inputs = manifest["inputs"]
    if not string_list(inputs) or not set(inputs) <= set(MODEL_INPUTS) or inputs[:2] != list(MODEL_INPUTS[:2]):
        return f"inputs {inputs!r} must be input_ids, attention_mask and optionally token_type_ids"
    if manifest["max_seq_length"] < 1:
        return "max_seq_length must be positive"
    if not all(isinstance(check_, dict) and isinstance(check_.get("passed"), bool)
               and isinstance(check_.get("max_abs_logit_diff"), (int, float))
               and isinstance(check_.get("tolerance"), (int, float)) for check_ in manifest["checks"].values()):
        return "every check needs passed, max_abs_logit_diff and tolerance"
    missing = [name for name in TOKENIZER_FILES if name not in files]
    if kind == KIND_EXPORT:
        if manifest["num_labels"] != len(manifest["labels"]):
            return f"{len(manifest['labels'])} labels for a model with {manifest['num_labels']} outputs"
        missing += [name for name in ("model.onnx",) if name not in files]
        return f"files does not list {', '.join(missing)}" if missing else None
    model = manifest["export_manifest"]
    problem = check(model, "vocab_size", int, "export_manifest.")
    if problem:
        return problem
    for key in ("type_vocab_size", "num_labels"):  # recorded since issue 9; older bundles lack them
        if model.get(key) is not None:
            problem = check(model, key, int, "export_manifest.")
            if problem:
                return problem
    if model.get("num_labels") is not None and model["num_labels"] != len(manifest["labels"]):
        return f"{len(manifest['labels'])} labels for a model with {model['num_labels']} outputs"
    profile = manifest["shape_profile"]
    for key, expected in SHAPE_PROFILE_KEYS.items():
        problem = check(profile, key, expected, "shape_profile.")
        if problem:
            return problem
    if set(profile) != set(SHAPE_PROFILE_KEYS):
        return f"shape_profile has unknown keys {sorted(set(profile) - set(SHAPE_PROFILE_KEYS))}"
    if not 1 <= profile["min_batch"] <= profile["max_batch"] or not 1 <= profile["min_seq"] <= profile["max_seq"]:
        return "shape_profile ranges are empty"
    if profile["max_seq"] > manifest["max_seq_length"] or not all(
            isinstance(length, int) and 1 <= length <= profile["max_seq"] for length in profile["static_seq_lengths"]):
        return "shape_profile lengths exceed max_seq_length"
    if not profile["dynamic"] and (not profile["static_seq_lengths"] or profile["static_seq_lengths"][-1] != profile["max_seq"]):
        return "a static shape_profile needs static_seq_lengths ending at max_seq"
    backend = manifest["backend"]
    if backend not in BACKEND_REQUIREMENTS:
        return f"backend {backend!r} is not one of {', '.join(BACKEND_REQUIREMENTS)}"
    if manifest["precision"] not in PRECISIONS:
        return f"precision {manifest['precision']!r} is not one of {', '.join(PRECISIONS)}"
    requirements = BACKEND_REQUIREMENTS[backend]
    engine_files = next((names for names in requirements["files"] if all(name in files for name in names)),
                        requirements["files"][0])
    missing += [name for name in engine_files if name not in files]
    if missing:
        return f"files does not list {', '.join(missing)}, which a {backend} bundle needs"
    for key, allowed in requirements["settings"].items():
        if manifest["backend_settings"].get(key) not in allowed:
            return f"backend_settings.{key} must be one of {', '.join(allowed)} for a {backend} bundle"
    return None


def verify_manifest_files(folder: Path, manifest: dict, fix: str) -> None:
    """Every listed file is a plain relative name inside `folder`, and matches its sha256.

    Names are checked before the filesystem is touched, so a manifest that names ../../etc/passwd
    learns nothing about what exists outside the folder; a link inside that leads out is refused too.
    """
    root = Path(os.path.realpath(folder))
    for name in manifest["files"]:
        parts = PurePosixPath(name).parts
        if (not name or "\\" in name or "\0" in name or PurePosixPath(name).is_absolute()
                or any(part in ("..", ".") for part in parts) or name != str(PurePosixPath(name))):
            raise BundleError(f"{folder}/{MANIFEST_FILE} lists {name!r}, which is not a plain file name inside "
                              "the folder", fix)
        path = folder / name
        if not Path(os.path.realpath(path)).is_relative_to(root):
            raise BundleError(f"{folder}/{name} is a link that leads out of the folder", fix)
        if not path.is_file():
            raise BundleError(f"{folder} is missing {name}", fix)
        if file_sha256(path) != manifest["files"][name]:
            raise BundleError(f"{folder}/{name} is corrupt (its sha256 differs from the manifest)", fix)
