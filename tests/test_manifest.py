"""A bundle's manifest is checked against a schema and its file list is a trust boundary: one typed
BundleError for anything malformed, never a KeyError, never a read outside the bundle."""

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from roberta_deploy.cli import app
from roberta_deploy.errors import BundleError
from roberta_deploy.manifest import KIND_BUNDLE, file_sha256, read_manifest
from roberta_deploy.runtime.engine import Engine


def copy_with_manifest(bundle, destination, change):
    shutil.copytree(bundle, destination)
    manifest = json.loads((destination / "manifest.json").read_text())
    change(manifest)
    (destination / "manifest.json").write_text(json.dumps(manifest))
    return destination


def set_key(path, value):
    def change(manifest):
        *parents, last = path.split(".")
        target = manifest
        for key in parents:
            target = target[key]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return change


DELETE = object()


@pytest.mark.parametrize("path, value, message", [
    ("labels", DELETE, "labels is missing"),
    ("files", DELETE, "files is missing"),  # no file list means corrupt, not "nothing to verify"
    ("shape_profile", "dynamic", "shape_profile is not a dict"),
    ("shape_profile.max_batch", "64", "shape_profile.max_batch is not an integer"),
    ("shape_profile.extra", 1, "shape_profile has unknown keys ['extra']"),
    ("inputs", ["input_ids", "position_ids"], "inputs ['input_ids', 'position_ids'] must be"),
    ("labels", ["negative", "positive", "neutral"], "3 labels for a model with 2 outputs"),
    ("labels", [], "labels must be a non-empty list"),
    ("export_manifest.vocab_size", None, "export_manifest.vocab_size is not an integer"),
    ("backend_settings", {}, "backend_settings.inference_precision must be one of f32, bf16, f16"),
    ("backend", "tensorrt", "backend 'tensorrt' is not one of"),
    ("precision", "int4", "precision 'int4' is not one of"),
    ("checks.against_fp32_reference", {"passed": "yes"}, "every check needs passed"),
    ("library_versions", [], "library_versions is not a dict"),
])
def test_malformed_manifests_are_one_bundle_error(bundle_factory, tmp_path, path, value, message):
    bundle = copy_with_manifest(bundle_factory("openvino", "fp32"), tmp_path / "bundle", set_key(path, value))
    with pytest.raises(BundleError) as caught:
        Engine.load(bundle)
    assert message in caught.value.problem and "is corrupt" in caught.value.problem
    result = CliRunner().invoke(app, ["inspect", str(bundle)])
    assert result.exit_code == 3 and result.output.startswith("error: ") and len(result.output.splitlines()) == 1


def test_an_onnxruntime_bundle_relabelled_openvino_is_refused(bundle_factory, tmp_path):
    bundle = copy_with_manifest(bundle_factory("onnxruntime", "fp32"), tmp_path / "bundle",
                                set_key("backend", "openvino"))
    with pytest.raises(BundleError, match="files does not list openvino_model.xml, openvino_model.bin, "
                                          "which a openvino bundle needs"):
        Engine.load(bundle)


def test_labels_that_do_not_match_the_model_outputs_are_caught_at_run_time_too(bundle_factory, tmp_path):
    def three_labels(manifest):  # a bundle from before num_labels was recorded
        manifest["labels"] = ["a", "b", "c"]
        del manifest["export_manifest"]["num_labels"]
    bundle = copy_with_manifest(bundle_factory("onnxruntime", "fp32"), tmp_path / "bundle", three_labels)
    engine = Engine.load(bundle)
    with pytest.raises(BundleError, match="the model gives 2 outputs per text but the manifest names 3 labels"):
        engine.predict(["好"])


@pytest.mark.parametrize("name", ["../../../../etc/passwd", "/etc/hostname", "tokenizer/../../x", "./model.xml",
                                  "a\\b", ""])
def test_file_entries_must_be_plain_names_inside_the_bundle(bundle_factory, tmp_path, name):
    def add(manifest):
        manifest["files"][name] = "0" * 64
    bundle = copy_with_manifest(bundle_factory("openvino", "fp32"), tmp_path / "bundle", add)
    with pytest.raises(BundleError) as caught:
        read_manifest(bundle, KIND_BUNDLE)
    assert caught.value.problem == f"{bundle}/manifest.json lists {name!r}, which is not a plain file name inside the folder"


def test_the_error_does_not_tell_whether_an_outside_file_exists(bundle_factory, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    problems = []
    for target in (outside, tmp_path / "no-such-file.txt"):
        def add(manifest, target=target):
            manifest["files"]["../" + target.name] = file_sha256(outside)
        bundle = copy_with_manifest(bundle_factory("openvino", "fp32"), tmp_path / f"bundle-{target.stem}", add)
        with pytest.raises(BundleError) as caught:
            read_manifest(bundle, KIND_BUNDLE)
        problems.append(caught.value.problem.replace(str(bundle), "B").replace(target.name, "NAME"))
    assert problems[0] == problems[1]


def test_a_symlink_leaving_the_bundle_is_refused(bundle_factory, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_factory("openvino", "fp32"), bundle)
    tokenizer = bundle / "tokenizer" / "tokenizer.json"
    outside = tmp_path / "outside.json"
    shutil.move(tokenizer, outside)
    os.symlink(outside, tokenizer)  # same content, same hash: only where it lives is wrong
    with pytest.raises(BundleError, match="tokenizer/tokenizer.json is a link that leads out of the folder"):
        Engine.load(bundle)


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(bundle_factory, tmp_path):
    bundle = copy_with_manifest(bundle_factory("openvino", "fp32"), tmp_path / "bundle",
                                set_key("export_manifest.vocab_size", 1000))
    with pytest.raises(BundleError, match=r"has \d+ tokens but the model's embedding table only 1000"):
        Engine.load(bundle)


def test_a_corrupt_tokenizer_meta_is_a_bundle_error(bundle_factory, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(bundle_factory("onnxruntime", "fp32"), bundle)
    meta = bundle / "tokenizer" / "tokenizer_meta.json"
    meta.write_text("{}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["tokenizer/tokenizer_meta.json"] = file_sha256(meta)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="tokenizer_meta.json"):
        Engine.load(bundle)
