"""Where the files that ship with the package live, so every command can run offline with no arguments."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEMO_DIR = PACKAGE_DIR / "demo"
DEMO_MODEL_DIR = DEMO_DIR / "model"  # small BERT trained by `finetune` on ChnSentiCorp train
DEMO_SAMPLES_PATH = DEMO_DIR / "samples.tsv"  # short reviews written for this project, with labels
DEFAULT_MAX_SEQ_LENGTH = 128
DEFAULT_BACKEND = "openvino"  # fastest measured on the project's CPUs at every precision it offers
AUTO_BACKEND = "auto"  # deploy --backend auto: every CPU engine of AUTO_BACKENDS that is installed
AUTO_BACKENDS = ("openvino", "onnxruntime")
