import json

import pytest

from roberta_deploy.data import read_dataset, read_dataset_chunks
from roberta_deploy.errors import InputDataError

LABELS = ["negative", "positive"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_every_row_of_the_dev_split(dev_tsv):
    dataset = read_dataset(dev_tsv, label_names=LABELS)
    assert len(dataset) == 1200
    assert sorted(set(dataset.labels)) == [0, 1]
    assert dataset.labels.count(1) == 593
    assert dataset.line_numbers[0] == 2


def test_csv_and_jsonl_with_column_flags_and_label_names(tmp_path):
    csv_path = write(tmp_path, "a.csv", 'review,gold\n"很好,推荐",positive\n太差了,0\n')
    dataset = read_dataset(csv_path, text_column="review", label_column="gold", label_names=LABELS)
    assert dataset.texts == ["很好,推荐", "太差了"] and dataset.labels == [1, 0]
    jsonl_path = write(tmp_path, "a.jsonl", json.dumps({"text": "不错", "label": 1}, ensure_ascii=False) + "\n")
    assert read_dataset(jsonl_path).labels == [1]
    unlabelled = write(tmp_path, "u.tsv", "text_a\n好\n")
    assert read_dataset(unlabelled).labels is None


@pytest.mark.parametrize("content, message", [
    ("label\ttext_a\n1\t好\n0\t差\textra\n", "b.tsv:3: malformed row with 3 tab-separated fields"),
    ("label\ttext_a\n1\t好\nneutral\t一般\n", "b.tsv:3: unknown label 'neutral'"),
    ("label\ttext_a\n7\t好\n", "b.tsv:2: unknown label 7"),
    ("label\ttext_a\n1\t  \n", "b.tsv:2: empty text"),
    ("label\ttext_a\n", "has a header but no rows"),
    ("", "is empty"),
    ("label\tcomment\n1\t好\n", "has no text column"),
])
def test_bad_rows_name_the_line_and_the_fix(tmp_path, content, message):
    path = write(tmp_path, "b.tsv", content)
    with pytest.raises(InputDataError) as caught:
        read_dataset(path, label_names=LABELS)
    assert message in caught.value.problem
    assert caught.value.fix
    assert "\n" not in caught.value.one_line()


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(InputDataError, match="does not exist"):
        read_dataset(tmp_path / "nope.tsv")
    with pytest.raises(InputDataError, match="cannot tell the format"):
        read_dataset(write(tmp_path, "a.xlsx", "x"))
    pytest.importorskip("pyarrow")
    with pytest.raises(InputDataError, match="a.parquet is not a readable Parquet file"):
        read_dataset(write(tmp_path, "a.parquet", "x"))


def test_texts_keep_unicode_line_separators(tmp_path):
    path = write(tmp_path, "s.tsv", "label\ttext_a\n1\t好\u2028评\n")
    assert read_dataset(path).texts == ["好\u2028评"]


@pytest.mark.parametrize("label, message", [
    ("１", "unknown label '１'"),  # fullwidth digit: int() would read 1
    ("٠", "unknown label '٠'"),  # Arabic-Indic digit: int() would read 0
    ("+1", "unknown label '+1'"),
])
def test_labels_are_ascii_digits_or_names_only(tmp_path, label, message):
    path = write(tmp_path, "b.tsv", f"label\ttext_a\n{label}\t好\n")
    with pytest.raises(InputDataError) as caught:
        read_dataset(path, label_names=LABELS)
    assert f"b.tsv:2: {message}" in caught.value.problem and "ASCII digits" in caught.value.fix


@pytest.mark.parametrize("value, message", [
    (True, "label true is a JSON boolean"),
    (1.0, "label 1.0 is a JSON float"),
    ([1], "label [1] is a JSON list"),
    (None, "missing label"),
])
def test_jsonl_labels_of_other_json_types_are_named(tmp_path, value, message):
    path = write(tmp_path, "b.jsonl", json.dumps({"text": "好", "label": value}) + "\n")
    with pytest.raises(InputDataError, match="b.jsonl:1: " + message.replace("[", r"\[").replace("]", r"\]")):
        read_dataset(path, label_names=LABELS)


@pytest.mark.parametrize("text", ["\x00\x00", "\u200b\u200b", "\x01\x02\x7f", "\u200d\ufeff\u2060", " \u3000 "])
def test_texts_without_visible_characters_are_empty(tmp_path, text):
    path = write(tmp_path, "b.jsonl", json.dumps({"text": text, "label": 1}) + "\n")
    with pytest.raises(InputDataError, match="b.jsonl:1: (empty text|the text has only control, format or space)"):
        read_dataset(path, label_names=LABELS)


def test_absurdly_nested_json_is_an_input_error_not_a_recursion_error(tmp_path):
    path = write(tmp_path, "deep.jsonl", json.dumps({"text": "好", "label": 1}) + "\n"
                 + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(InputDataError, match="deep.jsonl:2: JSON nested too deeply"):
        read_dataset(path)


@pytest.mark.parametrize("name, content", [
    ("c.tsv", "label\ttext_a\n" + "".join(f"{n % 2}\t好{n}\n" for n in range(23))),
    ("c.csv", "label,text\n" + "".join(f'{n % 2},"好,{n}"\n' for n in range(23))),
    ("c.jsonl", "".join(json.dumps({"text": f"好{n}", "label": n % 2}) + "\n\n" for n in range(23))),
])
def test_chunks_are_the_dataset_read_a_piece_at_a_time(tmp_path, name, content):
    path = write(tmp_path, name, content)
    whole = read_dataset(path)
    chunks = list(read_dataset_chunks(path, chunk_rows=5))
    assert [len(chunk) for chunk in chunks] == [5, 5, 5, 5, 3]
    assert [text for chunk in chunks for text in chunk.texts] == whole.texts
    assert [label for chunk in chunks for label in chunk.labels] == whole.labels
    assert [number for chunk in chunks for number in chunk.line_numbers] == whole.line_numbers


def test_a_bad_row_in_a_late_chunk_names_its_line_when_the_reading_gets_there(tmp_path):
    rows = "".join(f"1\t好{n}\n" for n in range(12))
    path = write(tmp_path, "late.tsv", "label\ttext_a\n" + rows + "2\t坏\n")
    chunks = read_dataset_chunks(path, label_names=LABELS, chunk_rows=5)
    assert len(next(chunks)) == 5 and len(next(chunks)) == 5
    with pytest.raises(InputDataError, match="late.tsv:14: unknown label 2"):
        next(chunks)


def test_streamed_reading_keeps_the_whole_file_checks(tmp_path):
    spanning = write(tmp_path, "s.csv", 'label,text\n1,ok\n0,"two\nlines"\n')
    with pytest.raises(InputDataError, match="CSV texts span several lines"):
        read_dataset(spanning)
    bad_bytes = tmp_path / "b.tsv"
    bad_bytes.write_bytes("\ufefflabel\ttext_a\n1\t好\n".encode() + b"0\t\xff\n")
    with pytest.raises(InputDataError, match=r"is not UTF-8 \(byte 24\)"):  # counted from the file's start
        read_dataset(bad_bytes)
    late_column = write(tmp_path, "l.jsonl", '{"text": "a"}\n{"text": "b", "label": 1}\n')
    with pytest.raises(InputDataError, match="l.jsonl:1: missing label"):  # a column seen on any row counts
        read_dataset(late_column)
