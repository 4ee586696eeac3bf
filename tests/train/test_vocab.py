"""The generated vocab, reading and validating vocab files, and the tokenizer built from a vocab."""

from __future__ import annotations

from pathlib import Path

import pytest

from roberta_deploy.build.checkpoint import check_tokenizer_on_texts
from roberta_deploy.data import read_dataset
from roberta_deploy.errors import InputDataError
from roberta_deploy.train.vocab import (
    REQUIRED_SPECIAL_TOKENS,
    SPECIAL_TOKEN_IDS,
    generate_vocab,
    read_vocab,
    tokenizer_from_vocab,
    validate_vocab,
    write_vocab,
)

SAMPLES = Path(__file__).resolve().parents[2] / "roberta_deploy" / "demo" / "samples.tsv"


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


@pytest.fixture(scope="module")
def tokenizer(vocab_file, tmp_path_factory):
    return tokenizer_from_vocab(vocab_file, tmp_path_factory.mktemp("tokenizer"))


def test_generated_vocab_has_the_bert_base_chinese_special_ids():
    tokens = generate_vocab()
    for token, token_id in SPECIAL_TOKEN_IDS.items():
        assert tokens[token_id] == token
    assert tokens[1] == "[unused1]" and tokens[99] == "[unused99]"
    assert len(tokens) == len(set(tokens))
    assert "中" in tokens and "##a" in tokens and "“" in tokens and "…" in tokens
    # Small enough that a 2-layer, 128-wide BERT on it stays under 16 MB of fp32 weights.
    assert 20_000 < len(tokens) < 23_000


def test_written_vocab_uses_newlines_only_and_round_trips(vocab_file):
    raw = vocab_file.read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    assert read_vocab(vocab_file) == generate_vocab()
    assert validate_vocab(vocab_file) == generate_vocab()


def test_read_vocab_keeps_unicode_line_separators_as_tokens(tmp_path):
    tokens = ["[PAD]", "\u2028", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "##\u2028", "中"]
    path = write_vocab(tmp_path / "vocab.txt", tokens)
    assert read_vocab(path) == tokens  # str.splitlines() would give 10 lines and shift the ids


def test_google_chinese_vocab_validates_with_the_right_ids(shared_data):
    tokens = validate_vocab(shared_data / "vocab" / "bert-base-chinese-vocab.txt")
    assert len(tokens) == 21128
    assert tokens[343] == "\u2028" and tokens[100] == "[UNK]"


def test_vocab_without_special_tokens_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("[PAD]\n[UNK]\n中\n国\n".encode())
    with pytest.raises(InputDataError) as caught:
        validate_vocab(path)
    message = caught.value.one_line()
    assert "[CLS] [SEP] [MASK]" in message and "fix:" in message and "\n" not in message


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty"),
    ("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n中\n中\n".encode(), "repeats line 6"),
    ("[PAD]\n\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n".encode(), "line 2 is empty"),
    (b"\xff\xfe[PAD]\n", "not UTF-8"),
])
def test_broken_vocab_files_are_refused(tmp_path, content, expected):
    path = tmp_path / "vocab.txt"
    path.write_bytes(content)
    with pytest.raises(InputDataError, match=expected):
        validate_vocab(path)


def test_missing_vocab_file_is_an_input_error(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        validate_vocab(tmp_path / "nope.txt")


def test_tokenizer_uses_the_vocab_and_lower_cases(tokenizer):
    assert tokenizer.pad_token_id == 0
    assert [tokenizer.convert_tokens_to_ids(token) for token in REQUIRED_SPECIAL_TOKENS] == [0, 100, 101, 102, 103]
    ids = tokenizer("酒店WiFi很好")["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102
    assert tokenizer("WiFi")["input_ids"] == tokenizer("wifi")["input_ids"]
    assert tokenizer.tokenize("酒店WiFi“好”…") == ["酒", "店", "w", "##i", "##f", "##i", "“", "好", "”", "…"]


def test_tokenizer_has_few_unknown_tokens_on_the_samples(tokenizer):
    texts = read_dataset(SAMPLES).texts
    assert len(texts) >= 150
    assert check_tokenizer_on_texts(tokenizer, texts) < 0.002


def test_tokenizer_folder_reloads_with_auto_tokenizer(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "房间WiFi信号很强，开视频会议一点都不卡。"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.pad_token_id == 0
