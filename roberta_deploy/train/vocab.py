"""A Chinese BERT WordPiece vocab generated from code, reading/validating vocab files, and a fast
tokenizer built from one.

The generated vocab keeps the bert-base-chinese layout of special tokens, so code written for the
Google Chinese BERT ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103) works unchanged, and
holds every CJK Unified Ideograph, so it does not depend on any training corpus.
"""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
from pathlib import Path

from ..errors import InputDataError, ModelLoadError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
REQUIRED_SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
# Ids of the special tokens in bert-base-chinese, kept so the generated vocab is a drop-in layout.
SPECIAL_TOKEN_IDS = {PAD: 0, UNK: 100, CLS: 101, SEP: 102, MASK: 103}
UNUSED_TOKEN_COUNT = 99  # [unused1] .. [unused99]: room for task tokens without resizing embeddings

ASCII_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
DIGITS = "0123456789"
LOWER_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Full-width forms are common in Chinese text and BertNormalizer does not fold them to ASCII.
FULLWIDTH_DIGITS = "".join(chr(0xFF10 + offset) for offset in range(10))
FULLWIDTH_LOWER_LETTERS = "".join(chr(0xFF41 + offset) for offset in range(26))
# Chinese punctuation and the symbols seen in everyday Chinese writing. Curly quotes, the ellipsis
# and the em dash are here on purpose: Google's Chinese vocab lacks them, which causes most of its
# [UNK]s on review text.
CHINESE_PUNCTUATION = (
    "，。、；：？！…—～·“”‘’（）《》〈〉【】「」『』〔〕〖〗"
    "＂＃＄％＆＇＊＋－．／＜＝＞＠［＼］＾＿｀｛｜｝￥￡￠"
    "―‖′″‰§№°℃±×÷√∞∩∪≈≠≤≥←↑→↓★☆●○◎◇◆□■△▲▽▼※¥"
    "①②③④⑤⑥⑦⑧⑨⑩﹗﹖﹐﹑︶︿"
)
GREEK_LOWER_LETTERS = "αβγδεζηθικλμνξοπρστυφχψω"
HIRAGANA = "".join(chr(code) for code in range(0x3041, 0x3097))
KATAKANA = "".join(chr(code) for code in range(0x30A1, 0x30FB))
CJK_UNIFIED_IDEOGRAPHS = range(0x4E00, 0xA000)  # the main block: 20,992 characters
CONTINUATION_PREFIX = "##"

# The generated vocab has 21,839 tokens; a 2-layer, 128-wide BERT on it is about 13 MB in fp32.


def generate_vocab() -> list[str]:
    """Tokens of the generated Chinese vocab, in id order (index = token id).

    Whole-word entries are single characters: BertNormalizer puts spaces around every CJK character,
    so Chinese text becomes one token per character. Latin words and numbers are spelled out with
    single characters plus `##` continuations ("wifi" -> w ##i ##f ##i), so they never become [UNK].
    Lower-case only: the tokenizer lower-cases its input.
    """
    tokens = [PAD] + [f"[unused{index}]" for index in range(1, UNUSED_TOKEN_COUNT + 1)]
    tokens += [UNK, CLS, SEP, MASK]
    word_characters = DIGITS + LOWER_LETTERS + FULLWIDTH_DIGITS + FULLWIDTH_LOWER_LETTERS
    tokens += list(ASCII_PUNCTUATION + word_characters + CHINESE_PUNCTUATION + GREEK_LOWER_LETTERS)
    tokens += list(HIRAGANA + KATAKANA)
    tokens += [chr(code) for code in CJK_UNIFIED_IDEOGRAPHS]
    # BertPreTokenizer splits only at whitespace and punctuation (ASCII or Unicode category P*), so
    # symbols such as ～ ° ￥ and kana stay inside words ("～～", "30°") and need continuations too.
    joining = [character for character in CHINESE_PUNCTUATION + GREEK_LOWER_LETTERS + HIRAGANA + KATAKANA
               if not unicodedata.category(character).startswith("P")]
    tokens += [CONTINUATION_PREFIX + character for character in [*word_characters, *joining]]
    unique = list(dict.fromkeys(tokens))  # a symbol listed twice must not shift later ids
    for token, token_id in SPECIAL_TOKEN_IDS.items():
        assert unique[token_id] == token, f"{token} must have id {token_id}"
    return unique


def write_vocab(path: str | Path, tokens: list[str] | None = None) -> Path:
    """Write `tokens` (default: the generated vocab) as vocab.txt: one token per line, '\\n' only.

    The file is written under a temporary name and renamed, so a reader never sees half of it.
    """
    tokens = generate_vocab() if tokens is None else tokens
    bad = next((token for token in tokens if "\n" in token or "\r" in token or not token), None)
    if bad is not None:
        raise InputDataError(f"vocab token {bad!r} is empty or holds a line break", "remove it from the vocab")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    try:
        temporary.write_bytes(("\n".join(tokens) + "\n").encode("utf-8"))  # bytes: no newline translation
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def read_vocab(path: str | Path) -> list[str]:
    """Tokens of a vocab file in id order.

    Split on '\\n' only: the Google Chinese vocab holds U+2028 as a token, and str.splitlines()
    would break there and shift every later id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"vocab file {path} does not exist", "check the --vocab path")
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputDataError(f"vocab file {path} is not UTF-8 (byte {error.start})",
                             "re-save the vocab as UTF-8") from None
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def validate_vocab(path: str | Path) -> list[str]:
    """Read a vocab file and check that a BERT tokenizer can use it; return its tokens.

    Raises InputDataError when the file is empty, a special token is missing, a line is empty, or
    a token is listed twice (a duplicate shifts the ids that the model's embeddings were trained on).
    """
    path = Path(path)
    tokens = read_vocab(path)
    if not tokens:
        raise InputDataError(f"vocab file {path} is empty", "give a vocab.txt with one token per line")
    missing = [token for token in REQUIRED_SPECIAL_TOKENS if token not in tokens]
    if missing:
        raise InputDataError(f"vocab file {path} lacks the special tokens {' '.join(missing)}",
                             "add them as lines (bert-base-chinese layout: [PAD] first, [UNK] [CLS] [SEP] [MASK] "
                             "at ids 100-103), or drop --vocab to use the built-in vocab")
    empty = next((index for index, token in enumerate(tokens) if not token.strip(" \t")), None)
    if empty is not None:
        raise InputDataError(f"vocab file {path}: line {empty + 1} is empty", f"remove line {empty + 1}")
    seen: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if token in seen:
            raise InputDataError(f"vocab file {path}: token {token!r} on line {index + 1} repeats line "
                                 f"{seen[token] + 1}", "remove the duplicate line (was the file Unicode-normalised?)")
        seen[token] = index
    return tokens


def tokenizer_from_vocab(vocab_path: str | Path, folder: str | Path, model_max_length: int = 512):
    """A lower-casing fast BERT tokenizer for `vocab_path`, with its files written into `folder`.

    transformers 5 ignores `BertTokenizerFast(vocab_file=...)` and yields a tokenizer that maps
    everything to [UNK]; loading a folder that holds vocab.txt and tokenizer_config.json works in
    transformers 4 and 5 alike. `folder` then holds vocab.txt and tokenizer_config.json; the
    caller's save_pretrained adds tokenizer.json.
    """
    from transformers import AutoTokenizer

    tokens = validate_vocab(vocab_path)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "vocab.txt"
    if not (target.exists() and target.resolve() == Path(vocab_path).resolve()):
        shutil.copyfile(vocab_path, target)
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,  # the vocab has no upper-case letters; without this "WiFi" is [UNK]
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": model_max_length,
        "unk_token": UNK, "pad_token": PAD, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    # A tokenizer that lost its vocab still loads; these checks catch it before any training.
    if len(tokenizer) != len(tokens):
        raise ModelLoadError(f"the tokenizer built from {vocab_path} has {len(tokenizer)} tokens, "
                             f"the file {len(tokens)}", "check that the vocab file is a plain BERT vocab.txt")
    for token in REQUIRED_SPECIAL_TOKENS:
        if tokenizer.convert_tokens_to_ids(token) != tokens.index(token):
            raise ModelLoadError(f"the tokenizer built from {vocab_path} maps {token} to the wrong id",
                                 "check that the vocab file is a plain BERT vocab.txt")
    return tokenizer
