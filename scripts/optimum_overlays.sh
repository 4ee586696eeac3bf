#!/usr/bin/env bash
# Install optimum-intel and Optimum (ONNX Runtime) into overlay folders, each with the transformers it
# pins, and print the variables that point tests/build/test_optimum.py at them:
#   eval "$(scripts/optimum_overlays.sh .venv/bin/python)" && python -m pytest tests/build/test_optimum.py
# They cannot live in the `dev` extra: optimum-intel 2.2 pins transformers<5.6, optimum-onnx 0.1 pins
# transformers<4.58 and optimum 2.1 (optimum-intel needs 2.3). Nothing in the venv is replaced
# (--no-deps --target); the tests run the loaders in a subprocess with the overlay in front.
# If an overlay cannot be installed (no package index), its variable is not printed and its tests skip.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${1:-.venv/bin/python}"
overlays="${OPTIMUM_OVERLAYS:-${TMPDIR:-/tmp}/roberta-deploy-optimum}"
openvino_version="$("$python" -c 'import openvino; print(openvino.__version__.split("-")[0])')"
common=(requests charset-normalizer idna urllib3 certifi hf-xet httpx httpcore h11 anyio sniffio)
install() {  # name, packages...
    local folder="$overlays/$1"; shift
    if [ ! -f "$folder/.complete" ]; then
        rm -rf "$folder"
        "$python" -m pip install --quiet --no-deps --target "$folder" "$@" "${common[@]}" >&2 || return 1
        touch "$folder/.complete"
    fi
    echo "$folder"
}
if folder="$(install openvino optimum-intel==2.2.0 optimum==2.3.0 transformers==5.5.4 "huggingface-hub==1.21.*" \
        tokenizers==0.22.2 "openvino-tokenizers==$openvino_version.0")"; then
    echo "export ROBERTA_DEPLOY_OPTIMUM_OPENVINO='$folder'"
else
    echo "optimum-intel overlay not installed; its tests will skip" >&2
fi
if folder="$(install onnxruntime optimum-onnx==0.1.0 optimum==2.1.0 transformers==4.57.6 "huggingface-hub==0.36.*" \
        tokenizers==0.22.2)"; then
    echo "export ROBERTA_DEPLOY_OPTIMUM_ONNXRUNTIME='$folder'"
else
    echo "optimum-onnx overlay not installed; its tests will skip" >&2
fi
