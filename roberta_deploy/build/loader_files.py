"""Files that let the usual tools load a bundle as it is: config.json and the tokenizer at its root.

optimum-intel's `OVModelForSequenceClassification.from_pretrained(bundle)` looks for
`openvino_model.xml`/`.bin` and `config.json`; Optimum's `ORTModelForSequenceClassification` for
`model.onnx` and `config.json`; `transformers.pipeline` then loads the tokenizer from the same folder.
Every file is listed and hashed in the manifest like the rest of the bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..runtime.tokenization import TOKENIZER_META_FILE
from .export import TOKENIZER_DIR, ExportArtifact

CONFIG_FILE = "config.json"
# Config keys a loader needs when an export from before config.json was written has to be described.
_MANIFEST_CONFIG_KEYS = ("model_type", "hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size",
                         "pad_token_id")


def write_loader_files(export: ExportArtifact, bundle_dir: Path) -> None:
    """config.json with id2label/label2id from the manifest's labels, and the tokenizer files at the root."""
    labels = list(export.manifest["labels"])
    # A backend that ships the checkpoint (torch) has written its config already; otherwise the export's.
    source = next((path for path in (bundle_dir / CONFIG_FILE, export.folder / CONFIG_FILE) if path.is_file()), None)
    if source is not None:
        config = json.loads(source.read_text(encoding="utf-8"))
    else:
        config = {key: export.manifest[key] for key in _MANIFEST_CONFIG_KEYS if key in export.manifest}
        config["architectures"] = [export.manifest["architecture"]]
    # The manifest's labels are the ones every roberta-deploy command reports: keep the tools in step.
    config["id2label"] = {str(index): name for index, name in enumerate(labels)}
    config["label2id"] = {name: index for index, name in enumerate(labels)}
    (bundle_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for path in sorted((export.folder / TOKENIZER_DIR).iterdir()):
        if path.is_file() and path.name != TOKENIZER_META_FILE:
            shutil.copyfile(path, bundle_dir / path.name)
