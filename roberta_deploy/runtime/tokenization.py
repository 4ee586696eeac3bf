"""Turning texts into model inputs at run time with the `tokenizers` library only (no transformers import).

Texts are encoded once, unpadded; batches are padded later to whatever length their bucket needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ..errors import BundleError, InputDataError, UsageError

TOKENIZER_DIR = "tokenizer"  # inside an export folder and a bundle
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_META_FILE = "tokenizer_meta.json"
# Texts are cut to this many characters per token of max_seq_length before tokenizing: the tokenizer
# walks the whole text and builds every overflow window, so a huge line takes seconds (docs/benchmarks.md,
# "Figures behind the code"); the prefix gives the same ids whenever it already overflows (checked per
# text, else the text is read whole).
CHARACTERS_PER_TOKEN = 64
LONGEST_WORD = 200  # characters; WordPiece gives up on words past 100, BPE words are shorter
# One model input: a text, or a text pair (encoded as the tokenizer's pair template: token type ids 0
# then 1 for BERT, `[CLS] a [SEP] [SEP] b [SEP]` for RoBERTa; truncated longest-first as transformers does).
TextInput = Union[str, tuple[str, str]]
# Which end of a long text is cut (text-embeddings-inference's truncation_direction, the tokenizers
# library's direction): "right" keeps the start, "left" the end; [CLS] and [SEP] stay either way, and a
# pair loses the same number of tokens per side (longest first), each side from that end.
TRUNCATION_DIRECTIONS = ("right", "left")


@dataclass(frozen=True)
class EncodedTexts:
    """Unpadded token ids of many texts, each already truncated to max_seq_length."""

    token_ids: list[np.ndarray]  # int64 (length,) per text, [CLS] ... [SEP] included
    type_ids: list[np.ndarray]  # int64 (length,) per text
    truncated: np.ndarray  # bool (n,): the text was cut at max_seq_length

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.token_ids), dtype=np.int64, count=len(self.token_ids))

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class ModelInputs:
    """One padded batch, as every engine takes it."""

    input_ids: np.ndarray  # int64 (batch, seq)
    attention_mask: np.ndarray  # int64 (batch, seq), 1 for real tokens
    token_type_ids: np.ndarray  # int64 (batch, seq)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    def as_feeds(self, input_names: Sequence[str]) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in input_names}


class TextEncoder:
    """Encodes texts with a saved fast tokenizer (tokenizer.json) and pads batches with its pad id."""

    def __init__(self, tokenizer_file: Path, pad_token_id: int, max_seq_length: int):
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as error:
            raise BundleError(f"cannot read tokenizer {tokenizer_file}: {error}".splitlines()[0],
                              "re-run export to write the tokenizer again") from None
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_seq_length)  # longest_first, transformers' default
        self._tokenizer_file = tokenizer_file
        self._left_tokenizer = None  # a copy truncating at the left, loaded the first time a request asks for it
        self._counter = None  # an untruncated copy, loaded the first time a pair side is cut (_pair_cut_suffices)
        self.pad_token_id = pad_token_id
        self.max_seq_length = max_seq_length
        self.vocab_size: int = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self._special_only_length = len(self._tokenizer.encode("").ids)  # [CLS] [SEP] and the like

    @classmethod
    def from_folder(cls, folder: Path, max_seq_length: int) -> "TextEncoder":
        """Load the tokenizer that export wrote into `folder/tokenizer/`."""
        meta_path = folder / TOKENIZER_META_FILE
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            pad_token_id = meta["pad_token_id"]
            if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool) or pad_token_id < 0:
                raise ValueError(f"pad_token_id {pad_token_id!r} is not an id")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise BundleError(f"cannot read {meta_path}: {error}", "re-run export or build") from None
        return cls(folder / TOKENIZER_FILE, pad_token_id, max_seq_length)

    def encode(self, texts: Sequence[TextInput], truncation_direction: str = "right") -> EncodedTexts:
        """Tokenize and truncate texts and text pairs (a tuple or list of two strings), cut at the
        `truncation_direction` end (TRUNCATION_DIRECTIONS); InputDataError for a text that is empty or
        gives no tokens."""
        if truncation_direction not in TRUNCATION_DIRECTIONS:
            raise UsageError(f"truncation direction {truncation_direction!r} is unknown",
                             f"use one of {', '.join(TRUNCATION_DIRECTIONS)}")
        left = truncation_direction == "left"
        inputs = [_checked_input(text, index) for index, text in enumerate(texts)]
        singles = [index for index, text in enumerate(inputs) if isinstance(text, str)]
        pairs = [index for index, text in enumerate(inputs) if not isinstance(text, str)]
        encodings: list = [None] * len(inputs)
        for index, encoding in zip(singles, self._encode_truncated([inputs[index] for index in singles], left)):
            encodings[index] = encoding
        for index, encoding in zip(pairs, self._encode_pairs([inputs[index] for index in pairs], left)):
            encodings[index] = encoding
        for index, encoding in enumerate(encodings):
            if isinstance(inputs[index], str):
                if len(encoding.ids) <= self._special_only_length:
                    raise InputDataError(f"text {index} gives no tokens (only control, format or space characters)",
                                         "give every input a text with visible characters")
                continue
            for side, name in ((0, "first"), (1, "second")):
                if side not in encoding.sequence_ids:
                    raise InputDataError(f"the {name} text of pair {index} gives no tokens (only control, format "
                                         "or space characters)", "give both texts of a pair visible characters")
        token_ids = [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]
        type_ids = [np.asarray(encoding.type_ids, dtype=np.int64) for encoding in encodings]
        truncated = np.fromiter((bool(encoding.overflowing) for encoding in encodings), dtype=bool,
                                count=len(encodings))
        return EncodedTexts(token_ids=token_ids, type_ids=type_ids, truncated=truncated)

    def _truncating(self, left: bool):
        """The tokenizer that cuts at the right (the default) or a copy that cuts at the left."""
        if not left:
            return self._tokenizer
        if self._left_tokenizer is None:  # two threads may both load it; either copy encodes the same
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self._tokenizer_file))
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=self.max_seq_length, direction="left")
            self._left_tokenizer = tokenizer
        return self._left_tokenizer

    def _encode_pairs(self, pairs: list[tuple[str, str]], left: bool) -> list:
        """encode_batch of pairs, each side cut at the character limit (its end kept when truncating at the
        left) when the cut cannot change the ids."""
        limit = self.max_seq_length * CHARACTERS_PER_TOKEN
        if not pairs:
            return []
        tokenizer = self._truncating(left)
        encodings = tokenizer.encode_batch([(_cut(first, limit, left), _cut(second, limit, left))
                                            for first, second in pairs])
        for index, (first, second) in enumerate(pairs):
            if (len(first) > limit or len(second) > limit) and not self._pair_cut_suffices(first, second, limit, left):
                encodings[index] = tokenizer.encode(first, second)
        return encodings

    def _pair_cut_suffices(self, first: str, second: str, limit: int, left: bool) -> bool:
        """Longest-first truncation keeps the shorter side's tokens up to half the budget and gives the
        rest to the longer side, so a cut side gives the same ids when its kept part alone already has
        max_seq_length tokens, more than the other side, and those lie a word inside the cut (their
        first starts a word after a left cut; their last ends a word before a right cut). With both
        sides cut, which one is longer is unknown: the caller reads both whole."""
        if len(first) > limit and len(second) > limit:
            return False
        long_side, other = (first, second) if len(first) > limit else (second, first)
        if self._counter is None:  # two threads may both load it; either copy counts the same
            from tokenizers import Tokenizer

            counter = Tokenizer.from_file(str(self._tokenizer_file))
            counter.no_padding()
            counter.no_truncation()
            self._counter = counter
        counted = self._counter.encode(_cut(long_side, limit, left), add_special_tokens=False)
        other_length = len(self._counter.encode(other, add_special_tokens=False).ids)
        if len(counted.ids) < max(self.max_seq_length, other_length + 1):
            return False
        if left:
            return counted.offsets[len(counted.ids) - self.max_seq_length][0] >= LONGEST_WORD
        return counted.offsets[self.max_seq_length - 1][1] <= limit - LONGEST_WORD

    def _encode_truncated(self, texts: list[str], left: bool) -> list:
        """encode_batch, reading long texts only as far as max_seq_length tokens need (from the end when
        truncating at the left).

        A cut text is enough when it overflows and its kept tokens lie more than a word inside the cut
        (so no word straddling the cut changes the kept ids); otherwise the cut part grows.
        """
        limit = self.max_seq_length * CHARACTERS_PER_TOKEN
        tokenizer = self._truncating(left)
        encodings = tokenizer.encode_batch([_cut(text, limit, left) for text in texts])
        for index, text in enumerate(texts):
            cut_length = limit
            while len(text) > cut_length and not self._cut_suffices(encodings[index], cut_length, left):
                cut_length *= 4
                encodings[index] = tokenizer.encode(_cut(text, cut_length, left))
        return encodings

    @staticmethod
    def _cut_suffices(encoding, cut_length: int, left: bool) -> bool:
        if not encoding.overflowing:
            return False
        kept = [offsets for offsets, special in zip(encoding.offsets, encoding.special_tokens_mask) if not special]
        if left:
            return min((start for start, _ in kept), default=0) >= LONGEST_WORD
        return max((end for _, end in kept), default=cut_length) <= cut_length - LONGEST_WORD

    def pad(self, encoded: EncodedTexts, indices: Sequence[int], padded_length: int) -> ModelInputs:
        """Pad the texts at `indices` to (len(indices), padded_length); Context.run pads further
        (filler rows) when the engine needs a larger shape."""
        rows = len(indices)
        input_ids = np.full((rows, padded_length), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((rows, padded_length), dtype=np.int64)
        token_type_ids = np.zeros((rows, padded_length), dtype=np.int64)
        for row, index in enumerate(indices):
            ids = encoded.token_ids[index]
            length = len(ids)
            input_ids[row, :length] = ids
            attention_mask[row, :length] = 1
            token_type_ids[row, :length] = encoded.type_ids[index]
        return ModelInputs(input_ids, attention_mask, token_type_ids)

    def encode_padded(self, texts: Sequence[TextInput], padded_length: int | None = None) -> ModelInputs:
        """Encode and pad to one length (the longest text, or `padded_length`)."""
        encoded = self.encode(texts)
        length = padded_length or int(encoded.lengths.max())
        return self.pad(encoded, range(len(texts)), length)


def _cut(text: str, length: int, left: bool) -> str:
    """The first `length` characters of text, or its last ones when truncating at the left."""
    return text[-length:] if left else text[:length]


def text_input_from_dict(value: dict) -> TextInput:
    """transformers' pair input {"text": ..., "text_pair": ...} (text_pair optional or null: one text) ->
    a text or a (text, text_pair) tuple; InputDataError for any other keys. The texts are checked by encode."""
    unknown = sorted(set(value) - {"text", "text_pair"})
    if unknown or "text" not in value:
        raise InputDataError(f"a text pair dict has keys {sorted(value)}",
                             'use {"text": "...", "text_pair": "..."} (text_pair optional)')
    return value["text"] if value.get("text_pair") is None else (value["text"], value["text_pair"])


def _checked_input(text, index: int) -> TextInput:
    """A non-empty text, or a pair of two (a tuple or a list, as transformers and JSON give them)."""
    if isinstance(text, str):
        if not text.strip():
            raise InputDataError(f"text {index} is empty", "give every input a non-empty text")
        return text
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise InputDataError(f"input {index} holds {len(text)} texts; a pair has two",
                                 "give a text, or a pair (text, text_pair)")
        for side, name in zip(text, ("first", "second")):
            if not isinstance(side, str) or not side.strip():
                raise InputDataError(f"the {name} text of pair {index} is empty or not a string",
                                     "give both texts of a pair as non-empty strings")
        return (text[0], text[1])
    raise InputDataError(f"text {index} is empty", "give every input a non-empty text")


def pad_to_shape(arrays: dict[str, np.ndarray], rows: int, columns: int, pad_token_id: int) -> dict[str, np.ndarray]:
    """Pad int64 (batch, seq) model inputs up to (rows, columns), for engines that need a larger shape.

    Rows past the batch are filler: one [PAD] with attention 1, so no row has an all-zero mask (which
    some kernels turn into NaN); their outputs are discarded.
    """
    batch, seq = arrays["input_ids"].shape
    padded = {}
    for name, array in arrays.items():
        fill = pad_token_id if name == "input_ids" else 0
        target = np.full((rows, columns), fill, dtype=np.int64)
        target[:batch, :seq] = array
        padded[name] = target
    padded["attention_mask"][batch:, 0] = 1
    return padded
