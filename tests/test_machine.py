"""The CPU a bundle was verified on, and what loading it on another CPU says; the run-time layer's imports."""

import json
import shutil
import subprocess
import sys

import pytest

from roberta_deploy.machine import SPEED_FLAGS, cpu_mismatch_warning, this_cpu
from roberta_deploy.runtime.engine import Engine

ZEN3 = {"model": "AMD EPYC 7B13 64-Core Processor", "flags": ["avx2", "fma"]}
SAPPHIRE_RAPIDS = {"model": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                   "flags": ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
                             "amx_int8"]}


def test_this_cpu_names_its_model_and_only_speed_flags():
    cpu = this_cpu()
    assert cpu["model"]
    assert set(cpu["flags"]) <= set(SPEED_FLAGS)


def test_a_bundle_records_the_cpu_and_capabilities_it_was_verified_on(bundle_factory):
    manifest = json.loads((bundle_factory("openvino", "fp32") / "manifest.json").read_text())
    from roberta_deploy.backends import get_backend

    assert manifest["verified_on"]["cpu"] == this_cpu()
    assert manifest["verified_on"]["backend_capabilities"] == list(get_backend("openvino").capabilities())


@pytest.mark.parametrize("precision, expected", [
    ("bf16", "bf16 is computed in fp32 here"), ("int8", "slower kernels may be used")])
def test_a_cpu_lacking_the_verified_flags_gets_one_warning(precision, expected):
    manifest = {"precision": precision, "verified_on": {"cpu": SAPPHIRE_RAPIDS}}
    warning = cpu_mismatch_warning(manifest, current=ZEN3)
    assert "avx512_bf16" in warning and "amx_int8" in warning
    assert "avx2" not in warning and "fma" not in warning  # Zen 3 has those
    assert SAPPHIRE_RAPIDS["model"] in warning and ZEN3["model"] in warning and expected in warning
    assert cpu_mismatch_warning(manifest, current=SAPPHIRE_RAPIDS) is None
    assert cpu_mismatch_warning({"precision": "fp32"}, current=ZEN3) is None  # bundles from before the record


def test_loading_a_bundle_verified_on_a_richer_cpu_attaches_the_warning(bundle_factory, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_factory("openvino", "fp32"), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["verified_on"]["cpu"] = {"model": "a future CPU", "flags": this_cpu()["flags"] + ["amx_fp8"]}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    engine = Engine.load(copy)
    assert len(engine.warnings) == 1 and "amx_fp8" in engine.warnings[0] and "a future CPU" in engine.warnings[0]
    assert Engine.load(bundle_factory("openvino", "fp32")).warnings == ()


def test_the_cli_prints_the_warning_once_and_still_classifies(bundle_factory, samples_tsv, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_factory("openvino", "fp32"), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["verified_on"]["cpu"] = {"model": "a future CPU", "flags": ["amx_fp8"]}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = subprocess.run([sys.executable, "-m", "roberta_deploy", "infer", "--bundle", str(copy), "--data",
                             str(samples_tsv), "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("warning:") == 1 and "amx_fp8" in result.stderr
    assert (tmp_path / "out" / "predictions.jsonl").is_file()


def test_importing_the_runtime_loads_no_build_train_or_training_library():
    code = ("import sys, roberta_deploy.runtime, roberta_deploy.runtime.engine, roberta_deploy.runtime.batcher; "
            "print([name for name in sys.modules if name.split('.')[0] in ('torch', 'transformers', 'nncf') "
            "or name.startswith(('roberta_deploy.build', 'roberta_deploy.train'))])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
