"""The application a KubeRay RayService (or `serve run`, or a Serve config file) builds: the import path
`roberta_deploy.serve.ray_app:app`, an application builder that Ray Serve calls with the config's `args`.

`serve --ray` ships bundles from its driver through the object store; a RayService has no driver, so here each
bundle is a folder every worker node has (baked into the image, or a volume) and each replica loads it from
there (its files are checked against the manifest's hashes on load, as always). The args are serve's flags
by their Python names; `bundles` may also come from the ROBERTA_DEPLOY_BUNDLES environment variable, and the
API key only comes from ROBERTA_DEPLOY_API_KEY (a Secret), never from the config:

    import_path: roberta_deploy.serve.ray_app:app
    args: {bundles: ["sentiment=/models/sentiment"], replica_cpus: 2, autoscale: "1:4"}
"""

from __future__ import annotations

import os

from ..errors import UsageError
from .options import BatchingOptions, Limits, ServeOptions, api_key_from, parse_bundle_specs
from .ray_deployment import (DEPLOYMENT_NAME, RayOptions, ReplicaServer, ShippedBundle, deployment_settings,
                             import_ray, parse_autoscale)
from .server import check_bundles

BUNDLES_ENV = "ROBERTA_DEPLOY_BUNDLES"  # NAME=PATH[,NAME=PATH...], when the config's args have no `bundles`
LIMIT_ARGS = ("max_concurrent_requests", "max_client_batch_size", "payload_limit", "max_input_chars", "auto_truncate")
BATCHING_ARGS = ("max_batch_tokens", "max_wait_ms", "contexts")
RAY_ARGS = ("replicas", "autoscale", "replica_cpus", "target_ongoing_requests", "cache_dir")


def app(args: dict):
    """Ray Serve's application builder: the `serve` app as a deployment of ReplicaServer, one per replica."""
    ray, serve = import_ray()
    options, ray_options = options_from_args(args)
    check_bundles(options)  # a missing or foreign folder fails the build, with the path in the message
    bundles = tuple(ShippedBundle(name=spec.name, digest="", ref=None, path=str(spec.path))
                    for spec in options.bundles)
    deployment = serve.deployment(serve.ingress()(ReplicaServer), name=DEPLOYMENT_NAME,
                                  **deployment_settings(options, ray_options))
    return deployment.bind(bundles, options, ray_options)


def options_from_args(args: dict | None, environ=os.environ) -> tuple[ServeOptions, RayOptions]:
    args = dict(args or {})
    known = {"bundles", *LIMIT_ARGS, *BATCHING_ARGS, *RAY_ARGS}
    unknown = sorted(set(args) - known)
    if unknown:
        raise UsageError(f"unknown argument {unknown[0]!r} in the Serve config's args",
                         f"use any of {', '.join(sorted(known))}")
    bundles = args.pop("bundles", None) or environ.get(BUNDLES_ENV, "")
    if isinstance(bundles, str):
        bundles = [value.strip() for value in bundles.split(",") if value.strip()]
    if not bundles:
        raise UsageError("no bundle to serve", f"put bundles: [NAME=PATH] in the config's args, or set {BUNDLES_ENV}")
    limits = Limits(**{name: args[name] for name in LIMIT_ARGS if name in args})
    batching = BatchingOptions(**{name: args[name] for name in BATCHING_ARGS if name in args})
    options = ServeOptions(bundles=parse_bundle_specs(list(bundles)), api_key=api_key_from(None), limits=limits,
                           batching=batching)
    ray_settings = {name: args[name] for name in RAY_ARGS if name in args}
    if "autoscale" in ray_settings:
        ray_settings["autoscale"] = parse_autoscale(str(ray_settings["autoscale"]))
    return options, RayOptions(**ray_settings)
