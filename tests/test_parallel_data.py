"""Bad data files and rows are found by `load_parallel_data`, before anything is trained, with a message that names
the file (or Hub dataset and split), the row as the user finds it (line, data row, record or row index), the field,
and the fix. Good files of every format load into the same `source`/`target` pairs."""

import gzip
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from posformer.training import parallel_data
from posformer.training.arguments import DataArguments, DataSourceArguments
from posformer.training.parallel_data import load_parallel_data, prepare_splits

PAIR = {"translation": {"en": "open file", "de": "Datei öffnen"}}
GOOD_LINE = json.dumps(PAIR, ensure_ascii=False) + "\n"


def jsonl(*records) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def parquet_bytes(table: pa.Table, path: Path) -> bytes:
    pq.write_table(table, path)
    return path.read_bytes()


def load_train_file(path: Path) -> DatasetDict:
    return load_parallel_data(DataSourceArguments(train_file=str(path)))


# (id, file name, its bytes (or a function of the path that writes it), the error, what the message must say)
BAD_FILES = [
    ("missing-language-key", "train.jsonl", jsonl(PAIR, {"translation": {"en": "close"}}),
     ValueError, ["line 2", "'de'", "Fix that row or delete it"]),
    ("translation-is-a-string", "train.jsonl", jsonl(PAIR, {"translation": "close"}, PAIR),
     ValueError, ["line 2", "`translation` is 'close' (str), not a {language: text} dict"]),
    ("translation-is-null", "train.jsonl", jsonl(PAIR, {"translation": None}),
     ValueError, ["line 2", "`translation` is null or missing"]),
    ("text-is-null-after-a-white-space-line", "train.jsonl",
     jsonl(PAIR) + b"  \n" + jsonl({"translation": {"en": "a", "de": None}}),
     ValueError, ["line 3", "`translation['de']` has no text (it is null or missing)"]),
    ("text-is-a-number", "train.jsonl", jsonl(PAIR, {"translation": {"en": "a", "de": 5}}),
     ValueError, ["line 2", "`translation['de']` is 5 (int), not a text"]),
    ("text-is-not-utf-8", "train.jsonl", GOOD_LINE.encode() + b'{"translation": {"en": "caf\xe9", "de": "x"}}\n',
     ValueError, ["line 2", "`translation['en']` is not UTF-8", "Save the file as UTF-8"]),
    ("json-list-record-lacks-a-key", "train.json", json.dumps([PAIR, {"translation": {"en": "a"}}]).encode(),
     ValueError, ["record 2 of its JSON list", "'de'"]),
    ("json-list-record-not-an-object", "train.json", json.dumps([PAIR, "open"]).encode(),
     ValueError, ["record 2 of its JSON list is 'open' (str), not a JSON object"]),
    ("column-is-null", "train.jsonl", jsonl({"en": "a", "de": "b"}, {"en": "c", "de": None}),
     ValueError, ["line 2", "the 'de' column has no text"]),
    ("column-is-a-number", "train.jsonl", jsonl({"en": "a", "de": "b"}, {"en": "c", "de": 3}),
     ValueError, ["line 2", "the 'de' column is 3 (int), not a text"]),
    ("languages-not-there", "train.jsonl", jsonl({"translation": {"en": "a", "fr": "b"}}),
     ValueError, ["has languages ['en', 'fr'], not ['de']", "Set --source_lang/--target_lang"]),
    ("columns-not-there", "train.jsonl", jsonl({"english": "a", "german": "b"}),
     ValueError, ["has columns ['english', 'german']", "set --source_lang/--target_lang to the column names"]),
    ("every-pair-has-an-empty-side", "train.jsonl", jsonl({"translation": {"en": "a", "de": ""}}),
     ValueError, ["every pair has an empty source or target text"]),
    ("truncated-last-line", "train.jsonl", (GOOD_LINE * 2 + '{"translation": {"en": "x", "de"').encode(),
     ValueError, ["line 3 is not valid JSON", "It is the last line: was the file cut short?"]),
    ("a-line-that-is-not-json", "train.jsonl", (GOOD_LINE + "open file\tDatei öffnen\n" + GOOD_LINE).encode(),
     ValueError, ["line 2 is not valid JSON", "Fix that row or delete it"]),
    ("a-line-that-is-not-an-object", "train.jsonl", (GOOD_LINE + "[1, 2]\n").encode(),
     ValueError, ["line 2 is [1, 2] (list), not a JSON object"]),
    ("only-blank-lines", "train.jsonl", b"\n \n\n", ValueError, ["holds only blank lines", "Write one pair per line"]),
    ("empty-file", "train.jsonl", b"", ValueError, ["The train split is empty", "is an empty file"]),
    ("csv-read-as-json", "train.jsonl", b"en,de\na,b\n", ValueError, ["cannot be read as json", "line 1 is not valid"]),
    ("gz-that-is-not-gzipped", "train.jsonl.gz", GOOD_LINE.encode(),
     ValueError, ["its name ends in .gz but it is not gzip-compressed"]),
    ("gzip-cut-short", "train.jsonl.gz", gzip.compress(jsonl(*[PAIR] * 500))[:-20],
     ValueError, ["it cannot be decompressed", "Compress it again"]),
    ("csv-empty-cell", "train.csv", b"en,de\na,b\nc,\n",
     ValueError, ["data row 2 (line 3)", "the 'de' column has no text"]),
    ("csv-short-row", "train.csv", b"en,de\na\nb,c\n",
     ValueError, ["data row 1 (line 2)", "the 'de' column has no text"]),
    ("csv-multiline-cell-white-space-line-then-empty-cell", "train.csv", b'en,de\n"two\nlines",b\n  \nc,\n',
     ValueError, ["data row 2 (line 5)", "the 'de' column"]),
    ("csv-first-row-has-too-many-cells", "train.csv", b"en,de\nHello, world,Hallo Welt\nb,c\n",
     ValueError, ["data row 1 (line 2)", "more cells than the header", "Quote the cells"]),
    ("csv-later-row-has-too-many-cells", "train.csv", b"en,de\nb,c\nHello, world,Hallo Welt\n",
     ValueError, ["cannot be read as csv", "line 3", "Quote the cells"]),
    ("csv-not-utf-8", "train.csv", b"en,de\na,b\ncaf\xe9,x\n",
     ValueError, ["line 3 is not UTF-8", "Save the file as UTF-8"]),
    ("csv-header-only", "train.csv", b"en,de\n", ValueError, ["holds a header but no data row"]),
    ("gzipped-csv-empty-cell", "train.csv.gz", gzip.compress(b"en,de\na,\n"),
     ValueError, ["data row 1 (line 2)", "'de'"]),
    ("parquet-null-text", "train.parquet",
     lambda path: parquet_bytes(pa.table({"en": ["a", "b", "c"], "de": ["x", "y", None]}), path),
     ValueError, ["row index 2", "the 'de' column has no text"]),
    ("not-parquet", "train.parquet", GOOD_LINE.encode(), ValueError, ["cannot be read as parquet"]),
    ("unknown-format", "train.tsv", b"a\tb\n", ValueError, ["unknown data format", "*.jsonl.gz"]),
    ("gzipped-parquet", "train.parquet.gz", gzip.compress(b"x"), ValueError, ["unknown data format"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "error", "says"), [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES]
)
def test_a_bad_file_or_row_is_an_error_naming_the_file_row_and_field(tmp_path, name, content, error, says):
    path = tmp_path / name
    path.write_bytes(content(path) if callable(content) else content)
    with pytest.raises(error) as raised:
        load_train_file(path)
    message = str(raised.value)
    assert f"--train_file {path}" in message, message
    for expected in says:
        assert expected in message, f"{expected!r} not in {message!r}"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp_path: tmp_path / "nowhere.jsonl", "no such file"),
        (lambda tmp_path: (tmp_path / "folder.jsonl").mkdir() or tmp_path / "folder.jsonl", "a folder, not a file"),
    ],
    ids=["missing", "a-folder"],
)
def test_a_path_that_is_no_file_is_a_file_not_found_error_naming_it(tmp_path, make, says):
    path = make(tmp_path)
    with pytest.raises(FileNotFoundError, match=re.escape(f"--train_file {path}: {says}")):
        load_train_file(path)


def test_the_validation_and_test_files_are_named_by_their_own_argument(tmp_path):
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_bytes(jsonl(PAIR))
    validation.write_bytes(jsonl(PAIR, PAIR, {"translation": {"en": "a"}}))
    with pytest.raises(ValueError, match=re.escape(f"--validation_file {validation}, line 3: ")):
        load_parallel_data(DataSourceArguments(train_file=str(train), validation_file=str(validation)))


def test_a_hub_dataset_is_named_by_its_name_configuration_and_split(monkeypatch):
    rows = {"translation": [{"de": "a", "en": "b"}, {"de": "c", "en": "d"}, {"de": None, "en": "e"}]}
    splits = DatasetDict(train=Dataset.from_dict(rows), validation=Dataset.from_dict(rows))
    monkeypatch.setattr(parallel_data, "load_dataset", lambda name, config: splits)
    arguments = DataSourceArguments(dataset_name="wmt14", dataset_config_name="de-en")
    with pytest.raises(
        ValueError, match=re.escape("dataset 'wmt14' (de-en), split 'train', row index 2: `translation['de']`")
    ):
        load_parallel_data(arguments)


def test_an_empty_split_is_an_error_naming_it(monkeypatch):
    empty = Dataset.from_dict({"translation": []})
    monkeypatch.setattr(parallel_data, "load_dataset", lambda name, config: DatasetDict(train=empty))
    with pytest.raises(
        ValueError, match=re.escape("The train split is empty: dataset 'wmt14', split 'train' holds no")
    ):
        load_parallel_data(DataSourceArguments(dataset_name="wmt14"))


GOOD_FILES = [
    ("jsonl", "train.jsonl", jsonl(PAIR, PAIR)),
    ("jsonl-with-blank-lines", "train.jsonl", b"\n" + jsonl(PAIR) + b"\n\n" + jsonl(PAIR)),
    ("json-list", "train.json", json.dumps([PAIR, PAIR]).encode()),
    ("gzipped-jsonl", "train.jsonl.gz", gzip.compress(jsonl(PAIR, PAIR))),
    ("gzipped-json", "train.json.gz", gzip.compress(jsonl(PAIR, PAIR))),
    ("csv", "train.csv", "en,de\nopen file,Datei öffnen\nopen file,Datei öffnen\n".encode()),
    ("gzipped-csv", "train.csv.gz", gzip.compress("en,de\nopen file,Datei öffnen\nopen file,Datei öffnen\n".encode())),
    ("parquet", "train.parquet",
     lambda path: parquet_bytes(pa.table({"en": ["open file"] * 2, "de": ["Datei öffnen"] * 2}), path)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "content"), [case[1:] for case in GOOD_FILES], ids=[case[0] for case in GOOD_FILES])
def test_every_format_loads_the_same_pairs(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content(path) if callable(content) else content)
    arguments = DataArguments(train_file=str(path), validation_file=str(path))
    pairs = prepare_splits(load_parallel_data(arguments), arguments)
    assert pairs["train"].to_dict() == {"source": ["open file"] * 2, "target": ["Datei öffnen"] * 2}


def test_splits_may_differ_in_format_and_texts_may_be_empty_or_read_like_missing_values(tmp_path):
    """A CSV cell that reads NA or null is that text (pandas would make it a missing value), an empty string in
    JSON is allowed (the length filter drops such a training pair), and each split has its own format."""
    files = {"train": tmp_path / "train.jsonl", "validation": tmp_path / "validation.csv"}
    files["train"].write_bytes(jsonl(PAIR, {"translation": {"en": "", "de": "leer"}}))
    files["validation"].write_bytes(b"de,en,note\nNA,null,x\n")
    arguments = DataArguments(train_file=str(files["train"]), validation_file=str(files["validation"]))
    pairs = prepare_splits(load_parallel_data(arguments), arguments)
    assert pairs["train"]["source"] == ["open file", ""]
    assert pairs["validation"].to_dict() == {"source": ["null"], "target": ["NA"]}


def test_arrow_strings_are_checked_without_a_python_loop(monkeypatch):
    """The built-in corpus (and WMT14: a `translation` struct of strings) takes the vectorised path."""

    def refuse(*args):
        raise AssertionError("the rows were checked in Python")

    monkeypatch.setattr(parallel_data, "_check_rows_in_python", refuse)
    raw = load_parallel_data(DataSourceArguments())
    assert set(raw) == {"train", "validation", "test"}
