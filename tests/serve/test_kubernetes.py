"""deploy/kubernetes/: each manifest validates against its CRD's own openAPIV3Schema (the CRD files are vendored
in tests/serve/crds/, see its README), with no field the schema does not know (Kubernetes would drop it
silently); the serve arguments are serve's real flags, the probes its real health routes; the RayService's
import path is imported and built as Ray Serve builds it, over a real bundle."""

from __future__ import annotations

import gzip
import importlib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
CRDS = Path(__file__).parent / "crds"
CRD_FILES = {"ServingRuntime": "serving.kserve.io_servingruntimes.yaml.gz",
             "InferenceService": "serving.kserve.io_inferenceservices.yaml.gz",
             "RayService": "ray.io_rayservices.yaml.gz"}


def manifests() -> dict[str, dict]:
    documents = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            documents[document["kind"]] = document
    return documents


def crd_schema(kind: str, api_version: str) -> dict:
    crd = yaml.safe_load(gzip.decompress((CRDS / CRD_FILES[kind]).read_bytes()))
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    served = {entry["name"]: entry for entry in crd["spec"]["versions"]}
    assert version in served and served[version]["served"], f"{kind} {api_version} is not served by the CRD"
    return served[version]["schema"]["openAPIV3Schema"]


def unknown_fields(instance, schema: dict, where: str = "") -> list[str]:
    """Fields of `instance` that a structural schema does not declare (the API server would prune them)."""
    if isinstance(instance, dict) and "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        found = []
        for key, value in instance.items():
            if key not in schema["properties"]:
                if not schema.get("additionalProperties"):
                    found.append(f"{where}.{key}")
                continue
            found += unknown_fields(value, schema["properties"][key], f"{where}.{key}")
        return found
    if isinstance(instance, dict) and isinstance(schema.get("additionalProperties"), dict):
        return [field for key, value in instance.items()
                for field in unknown_fields(value, schema["additionalProperties"], f"{where}.{key}")]
    if isinstance(instance, list) and isinstance(schema.get("items"), dict):
        return [field for index, item in enumerate(instance)
                for field in unknown_fields(item, schema["items"], f"{where}[{index}]")]
    return []


def test_the_three_manifests_are_there():
    assert set(manifests()) == set(CRD_FILES)


@pytest.mark.parametrize("kind", sorted(CRD_FILES))
def test_manifest_validates_against_its_crd(kind):
    manifest = manifests()[kind]
    schema = crd_schema(kind, manifest["apiVersion"])
    jsonschema.validate(manifest, schema)
    assert unknown_fields(manifest, schema) == []


def test_the_crd_check_catches_a_misspelt_field_and_a_wrong_type():
    manifest = manifests()["ServingRuntime"]
    schema = crd_schema("ServingRuntime", manifest["apiVersion"])
    misspelt = {**manifest, "spec": {**manifest["spec"], "supportedModelFormat": []}}
    assert unknown_fields(misspelt, schema) == [".spec.supportedModelFormat"]
    wrong = {**manifest, "spec": {**manifest["spec"], "containers": "kserve-container"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, schema)


def serve_command():
    import typer

    from roberta_deploy.cli.app import app

    return typer.main.get_command(app).commands["serve"]


def test_serving_runtime_runs_serve_with_its_real_flags_and_probes_its_real_routes():
    from roberta_deploy.serve.app import ServerState, create_app

    container = manifests()["ServingRuntime"]["spec"]["containers"][0]
    assert container["command"] == ["roberta-deploy", "serve"]
    arguments = [argument.replace("{{.Name}}", "sentiment") for argument in container["args"]]
    context = serve_command().make_context("serve", list(arguments))  # parses every flag and value; runs nothing
    assert context.params["grpc_port"] == 8081 and context.params["port"] == 8080
    assert {port["containerPort"] for port in container["ports"]} == {8080, 8081}
    routes = {route.path for route in create_app(ServerState(names=("sentiment",))).routes if "GET" in route.methods}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == 8080
    predictor = manifests()["InferenceService"]["spec"]["predictor"]["model"]
    assert predictor["runtime"] == manifests()["ServingRuntime"]["metadata"]["name"]
    assert predictor["resources"] == container["resources"]


def serve_config() -> dict:
    return yaml.safe_load(manifests()["RayService"]["spec"]["serveConfigV2"])


def test_rayservice_import_path_builds_the_app_over_a_real_bundle(bundle_factory):
    pytest.importorskip("ray.serve", reason="the ray extra is not installed: pip install -e '.[ray]'")
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application

    from roberta_deploy.serve.ray_deployment import ReplicaServer

    application = serve_config()["applications"][0]
    module, _, attribute = application["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attribute)
    bundle = bundle_factory("openvino", "fp32")
    name = application["args"]["bundles"][0].partition("=")[0]
    args = {**application["args"], "bundles": [f"{name}={bundle}"]}
    built = call_user_app_builder_with_args_if_necessary(builder, args)
    assert isinstance(built, Application)
    deployment = built._bound_deployment
    assert deployment.func_or_class.__name__ == ReplicaServer.__name__
    # One replica per worker pod: the CPUs a replica reserves are the pod's Ray CPUs and CPU request.
    worker = manifests()["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    cpus = float(worker["rayStartParams"]["num-cpus"])
    assert deployment.ray_actor_options["num_cpus"] == cpus == float(application["args"]["replica_cpus"])
    assert float(worker["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]) == cpus
    autoscaling = deployment._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (1, 4)
    assert worker["maxReplicas"] >= autoscaling.max_replicas  # room for every replica
    bundles, options, ray_options = deployment.init_args
    assert bundles[0].path == str(bundle) and bundles[0].name == name
    assert options.limits.max_concurrent_requests == application["args"]["max_concurrent_requests"]


def test_rayservice_args_are_checked(tmp_path):
    from roberta_deploy.errors import UsageError
    from roberta_deploy.serve.ray_app import options_from_args

    with pytest.raises(UsageError, match="unknown argument 'replica_cpu'"):
        options_from_args({"bundles": ["a=/x"], "replica_cpu": 2})
    with pytest.raises(UsageError, match="no bundle"):
        options_from_args({}, environ={})
    options, ray_options = options_from_args({"replicas": 2}, environ={"ROBERTA_DEPLOY_BUNDLES": "a=/x, b=/y"})
    assert [spec.name for spec in options.bundles] == ["a", "b"] and ray_options.replicas == 2
