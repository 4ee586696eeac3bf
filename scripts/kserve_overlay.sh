#!/usr/bin/env bash
# Install KServe's Python package into an overlay folder and print the variable that points
# tests/serve/test_grpc.py and tests/serve/test_kserve.py at it:
#   eval "$(scripts/kserve_overlay.sh .venv/bin/python)" && python -m pytest tests/serve/test_grpc.py
# It cannot live in the `test` extra: kserve 0.21 pins protobuf<7, psutil<6 and pandas<3, older than what
# `dev` installs (ray, onnx and opentelemetry take the newer ones). Nothing in the venv is replaced
# (--no-deps --target, with the pure-Python packages kserve imports that the venv lacks); the tests run
# KServe's client in a subprocess with the overlay in front, over the venv's grpcio and protobuf.
# If the overlay cannot be installed (no package index), the variable is not printed and those tests skip.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"
folder="${KSERVE_OVERLAY:-${TMPDIR:-/tmp}/roberta-deploy-kserve}"
if [ ! -f "$folder/.complete" ]; then
    rm -rf "$folder"
    if ! "$python" -m pip install --quiet --no-deps --target "$folder" kserve==0.21.0 cloudevents==1.13.0 \
            kubernetes==37.0.1 grpc-interceptor==0.15.4 orjson==3.13.0 httpx==0.29.0 httpcore==1.0.9 \
            timing-asgi==0.3.2 python-multipart==0.0.34 PyJWT==2.15.1 durationpy==0.11 websocket-client==1.9.2 \
            requests-oauthlib==2.0.0 oauthlib==4.0.1 deprecation==2.1.0 aiohttp-retry==2.9.1 >&2; then
        echo "kserve overlay not installed; its tests will skip" >&2
        exit 0
    fi
    touch "$folder/.complete"
fi
echo "export ROBERTA_DEPLOY_KSERVE='$folder'"
