"""deployment.json as a later deploy reads it: whether an earlier record in the output folder can be trusted
(kind, schema, the field types a reuse decision reads), and whether an artifact it lists can be reused as
it is (same settings, bundle files matching their hashes and the recorded manifest)."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import holds_our_marker
from ..errors import BundleError, OutputExistsError
from ..manifest import KIND_BUNDLE, MANIFEST_FILE, file_sha256, read_manifest

DEPLOYMENT_JSON = "deployment.json"
KIND = "deployment"
SCHEMA_VERSION = 2  # 2: interleaved rounds with intervals, the accuracy gate; version 1's timings are not reused


def previous_deployment(folder: Path) -> tuple[dict | None, str | None]:
    """(deployment.json of an earlier deploy into `folder`, None); (None, None) for a missing or empty folder.
    A record that cannot be read or has the wrong shape, in a folder holding this tool's marker, is stale:
    (None, why), and every candidate is built and measured again. Any other folder is refused: deploy updates
    its folder in place and must not mix into another's."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None, None
    try:
        record = json.loads((folder / DEPLOYMENT_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        problem = "is missing"
    except (OSError, ValueError) as error:
        problem = f"cannot be read ({type(error).__name__})"
    else:
        problem = record_problem(record)
    if problem is None:
        return record, None
    if holds_our_marker(folder):
        return None, f"{DEPLOYMENT_JSON} {problem}"
    raise OutputExistsError(f"output folder {folder} is not a deployment (its {DEPLOYMENT_JSON} {problem})",
                            "choose another --output folder for deploy")


def record_problem(record) -> str | None:
    """What makes a deployment.json unusable as a record (wrong kind, schema or field types), or None. Only the
    fields a later deploy reads are checked; a wrong one anywhere means the record cannot be trusted."""
    if not isinstance(record, dict) or record.get("kind") != KIND:
        return "is not a deployment record"
    version = record.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version > SCHEMA_VERSION:
        return f"has schema_version {version!r}, not one this roberta-deploy reads (up to {SCHEMA_VERSION})"
    if not isinstance(record.get("model_sha256"), str):
        return "has no model_sha256"
    for key in ("candidates", "other_candidates"):
        rows = record.get(key, [])
        if not isinstance(rows, list):
            return f"has {key} that is not a list"
        for row in rows:
            if not isinstance(row, dict) or not all(isinstance(row.get(name), str) for name in ("backend", "precision")):
                return f"has a {key} entry that is not a record of a backend and precision"
            for name, expected in (("build_settings", dict), ("measurement_settings", dict), ("measured", dict),
                                   ("rejected", str), ("bundle_manifest_sha256", str), ("quantization", str)):
                if name in row and not isinstance(row[name], expected):
                    return f"has a {key} entry whose {name} is {type(row[name]).__name__}"
    return None


def why_not_reusable(earlier: dict | None, key: str, settings: dict) -> str | None:
    if earlier is None:
        return f"{DEPLOYMENT_JSON} has no record of it yet"
    if earlier.get(key) != settings:
        changed = sorted(name for name in settings if (earlier.get(key) or {}).get(name) != settings[name])
        return f"made with other settings: {', '.join(changed)}"
    return None


def bundle_changed(bundle: Path, earlier: dict) -> str | None:
    try:
        read_manifest(bundle, KIND_BUNDLE)  # every file against its hash
    except BundleError as error:
        return error.problem
    if file_sha256(bundle / MANIFEST_FILE) != earlier.get("bundle_manifest_sha256"):
        return "its manifest is not the one this deployment recorded"
    return None
