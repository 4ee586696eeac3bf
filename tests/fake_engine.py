"""A fake engine with the surface a Batcher (and a server) needs, and no weights.

Each character is one token. A row's logits are (real tokens, sum of its token ids / 100), so every
text's expected logits are known without running a model, whatever batch and padding it ran in.
A text containing "!" makes its batch fail; `gate` holds every context call until it is set.
"""

from __future__ import annotations

import threading

import numpy as np

from roberta_deploy.backends.base import RuntimeSettings
from roberta_deploy.errors import InputDataError
from roberta_deploy.runtime.tokenization import EncodedTexts, ModelInputs, pad_to_shape
from roberta_deploy.shapes import ShapeProfile

CLS, SEP, PAD = 101, 102, 0
FAILING_CHARACTER = "!"
GATE_TIMEOUT_S = 20  # a test that forgets to open the gate fails instead of blocking forever


def token_ids(text, max_seq_length: int, left: bool = False) -> list[int]:
    """A text, or a pair (a, b) as [CLS] a [SEP] b [SEP]; a long text keeps its start, or with `left`
    its end, between [CLS] and [SEP] (a pair is always cut at the right here)."""
    if not isinstance(text, str):
        return (token_ids(text[0], max_seq_length)[:-1] + [SEP] + token_ids(text[1], max_seq_length)[1:])[:max_seq_length]
    body = [1000 + ord(character) % 5000 for character in text]
    if left and len(body) > max_seq_length - 2:
        return [CLS] + body[len(body) - (max_seq_length - 2):] + [SEP]
    return ([CLS] + body + [SEP])[:max_seq_length]


def expected_logits(texts, max_seq_length: int = 32) -> np.ndarray:
    rows = [token_ids(text, max_seq_length) for text in texts]
    return np.array([[len(ids), sum(ids) / 100] for ids in rows], dtype=np.float32)


class FakeEncoder:
    def __init__(self, max_seq_length: int):
        self.max_seq_length = max_seq_length
        self.pad_token_id = PAD

    def encode(self, texts, truncation_direction: str = "right") -> EncodedTexts:
        for index, text in enumerate(texts):
            parts = [text] if isinstance(text, str) else list(text) if isinstance(text, (tuple, list)) else [None]
            if len(parts) > 2 or not all(isinstance(part, str) and part.strip() for part in parts):
                raise InputDataError(f"text {index} is empty", "give every input a non-empty text")
        ids = [np.array(token_ids(text, self.max_seq_length, truncation_direction == "left"), dtype=np.int64)
               for text in texts]
        truncated = np.array([(len(text) + 2 if isinstance(text, str) else len(text[0]) + len(text[1]) + 3)
                              > self.max_seq_length for text in texts], dtype=bool)
        return EncodedTexts(token_ids=ids, type_ids=[np.zeros_like(row) for row in ids], truncated=truncated)

    def pad(self, encoded: EncodedTexts, indices, padded_length: int) -> ModelInputs:
        indices = list(indices)
        input_ids = np.full((len(indices), padded_length), PAD, dtype=np.int64)
        attention_mask = np.zeros_like(input_ids)
        for row, index in enumerate(indices):
            ids = encoded.token_ids[index]
            input_ids[row, :len(ids)] = ids
            attention_mask[row, :len(ids)] = 1
        return ModelInputs(input_ids, attention_mask, np.zeros_like(input_ids))


class FakeContext:
    def __init__(self, engine: "FakeEngine", number: int):
        self.engine = engine
        self.number = number

    def run(self, input_ids, attention_mask, token_type_ids=None) -> np.ndarray:
        engine = self.engine
        with engine.lock:
            engine.calls.append({"context": self.number, "thread": threading.current_thread().name,
                                 "shape": input_ids.shape, "rows": [tuple(row[mask == 1]) for row, mask in
                                                                     zip(input_ids, attention_mask)]})
        if engine.gate is not None and not engine.gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError("the test never opened the gate")
        batch, seq = input_ids.shape
        arrays = pad_to_shape({"input_ids": input_ids, "attention_mask": attention_mask,
                               "token_type_ids": np.zeros_like(input_ids)}, *engine.profile.fit(batch, seq), PAD)
        ids, mask = arrays["input_ids"], arrays["attention_mask"]
        if (ids == 1000 + ord(FAILING_CHARACTER)).any():
            raise RuntimeError("simulated engine failure")
        return np.stack([mask.sum(1), (ids * mask).sum(1) / 100], axis=1).astype(np.float32)[:batch]

    def warm_up(self, input_ids, attention_mask, token_type_ids=None) -> None:
        self.run(input_ids, attention_mask, token_type_ids)  # as Context.warm_up on a one-resource backend


class FakeEngine:
    """The engine surface: encoder, profile, settings, label_names, max_seq_length, create_context()."""

    def __init__(self, contexts: int = 2, max_seq_length: int = 32, max_batch: int = 16):
        self.max_seq_length = max_seq_length
        self.label_names = ("short", "long")
        self.task = None  # single-label
        self.run_token_limit = None  # no preferred run size: the batcher's default budget
        self.encoder = FakeEncoder(max_seq_length)
        self.profile = ShapeProfile(dynamic=True, min_batch=1, max_batch=max_batch, min_seq=1, max_seq=max_seq_length)
        self.settings = RuntimeSettings(contexts=contexts, cpu_threads=contexts)
        self.gate: threading.Event | None = None  # set by a test (after start) to hold every call
        self.lock = threading.Lock()
        self.calls: list[dict] = []
        self.contexts_created = 0

    def create_context(self) -> FakeContext:
        self.contexts_created += 1
        return FakeContext(self, self.contexts_created - 1)

    def default_batch_size(self) -> int:
        return min(8, self.profile.max_batch)
