"""Finding and loading a Hugging Face sequence-classification checkpoint (local folder or hub id)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

from ..errors import ModelLoadError
from ..quiet import quiet_in_this_thread

# Files whose bytes define a checkpoint's behaviour; their hash identifies the source model.
IDENTITY_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt")
MAX_UNKNOWN_TOKEN_SHARE = 0.5


def resolve_checkpoint(model: str | Path) -> Path:
    """Return a local folder for `model`: the folder itself, or a hub snapshot downloaded for it.

    Hub ids need network access (or a warm cache); with HF_HUB_OFFLINE=1 only the cache is used.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json, so it is not a Hugging Face checkpoint",
                                 "point --model at the folder that holds config.json and the weights")
        return path
    text = str(model)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelLoadError(f"model folder {text} does not exist", "check the --model path")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:  # pragma: no cover - installed with the export extra
        raise ModelLoadError("huggingface_hub is not installed", "pip install 'roberta-deploy[export]'") from error
    try:
        return Path(snapshot_download(repo_id=text, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"]))
    except Exception as error:  # the hub client raises many types; all mean the same to the user
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = "unset HF_HUB_OFFLINE or download the model first" if offline else "check the hub id and your network"
        raise ModelLoadError(f"no folder {text} here, and cannot fetch model {text!r} from the hub: "
                             f"{type(error).__name__}", hint) from None


def quiet_transformers():
    """transformers draws a "Loading weights" progress bar and logs advice; the library must not print,
    so this thread's output is dropped while we load (other threads keep theirs)."""
    import transformers  # noqa: F401  (its logger and handler exist from here on)

    return quiet_in_this_thread(("transformers",))


def checkpoint_hash(folder: Path) -> str:
    """sha256 over the files that define the checkpoint, so a bundle names exactly what it came from."""
    digest = hashlib.sha256()
    for name in IDENTITY_FILES:
        file = folder / name
        if file.is_file():
            digest.update(name.encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def load_fast_tokenizer(folder: Path):
    """Load the checkpoint's fast tokenizer. Loading the folder (not vocab_file=...) is what works in
    transformers 5; see check_tokenizer_on_texts for the guard against an all-[UNK] tokenizer."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception as error:
        raise ModelLoadError(f"cannot load a tokenizer from {folder}: {error}".splitlines()[0],
                             "the checkpoint folder needs tokenizer.json or vocab.txt") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{folder} has no fast tokenizer", "add tokenizer.json or vocab.txt to the checkpoint")
    if tokenizer.pad_token_id is None:
        raise ModelLoadError(f"the tokenizer in {folder} has no padding token", "add [PAD] to the vocab")
    return tokenizer


def check_tokenizer_on_texts(tokenizer, texts: Sequence[str]) -> float:
    """Share of [UNK] among the tokens of real texts; raise when most tokens are unknown.

    A tokenizer that silently lost its vocab maps everything to [UNK] and still "works".
    """
    unk_id = tokenizer.unk_token_id
    total = unknown = 0
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        total += len(ids)
        unknown += sum(1 for token in ids if token == unk_id)
    share = unknown / total if total else 1.0
    if total == 0 or share > MAX_UNKNOWN_TOKEN_SHARE:
        raise ModelLoadError(f"the tokenizer maps {share:.0%} of the tokens of real texts to [UNK]",
                             "the vocab was not loaded or does not fit the language; check vocab.txt/tokenizer.json")
    return share
