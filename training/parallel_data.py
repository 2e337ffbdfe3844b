"""Parallel data: where the splits come from (the Hub, local files, the built-in corpus), the checks every split
passes before training, and the `source`/`target` pairs made of them.

Data arrive in one of two layouts that the datasets library uses for translation: a `translation`
column of `{lang: text}` dicts (wmt14, the built-in corpus) or one text column per language. Both
become `source` / `target` strings; anything else is a clear error naming the columns that are there. A bad
file or row is an error naming the file (or the Hub dataset and split), the row and the fix, before any
tokenizer is trained (`check_pairs`).
"""

import csv
import gzip
import io
import itertools
import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, load_dataset
from datasets.exceptions import DatasetGenerationError

from .corpus import BUILTIN_CORPUS_DIR, load_builtin_corpus, split_file

SPLITS = ("train", "validation", "test")
# a data file's format by its suffix (before a `.gz`): the datasets loader that reads it
FILE_LOADERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
# a CSV cell that reads "NA" or "null" is text; an empty or missing cell is null, so the row checks report it
LOADER_OPTIONS = {"csv": {"keep_default_na": False, "na_values": [""]}}
# what `load_dataset` raises for a local file it cannot read (`UnicodeDecodeError` and Arrow's errors are
# ValueErrors, `gzip.BadGzipFile` an OSError, a gzip file cut short an EOFError)
UNREADABLE_FILE_ERRORS = (DatasetGenerationError, ValueError, OSError, EOFError, pa.ArrowException)
# the column pandas makes of a CSV's first data row when that row has more fields than the header
CSV_INDEX_COLUMN = "__index_level_0__"
FIX_THE_ROW = "Fix that row or delete it."


@dataclass(frozen=True)
class DataSource:
    """Where a split's rows come from, to name them in errors: `name` as the user gave it (a file argument, a
    Hub dataset) and, for a local file, its `path`, to turn a row index into the line a text editor shows."""

    split: str
    name: str
    path: str | None = None

    def row(self, index: int) -> str:
        """Row `index` (0-based, as in the dataset) as the user finds it in the source."""
        if self.path is None or _file_loader(self.path) == "parquet":
            return f"row index {index}"
        # replacing bad bytes, so that a row whose text is not UTF-8 can be found too
        text = _read_bytes(self.path).decode("utf-8", errors="replace")
        if text.lstrip().startswith("[") and _file_loader(self.path) == "json":
            return f"record {index + 1} of its JSON list"
        if _file_loader(self.path) == "csv":
            line = _csv_record_line(text, index + 1)
            return f"data row {index + 1}" + (f" (line {line})" if line is not None else "")
        lines = (number for number, line in enumerate(text.splitlines(), 1) if line.strip())
        line = next(itertools.islice(lines, index, None), None)
        return f"line {line}" if line is not None else f"record {index + 1}"


def load_parallel_data(data_args) -> DatasetDict:
    """Raw splits from the Hub (`--dataset_name`), local files (`--train_file` ...) or the built-in corpus,
    each checked by `check_pairs` for `data_args.source_lang`/`target_lang`: a bad file or row is an error here,
    naming the file (or dataset) and the row, before anything is trained."""
    raw, sources = _load_splits(data_args)
    for split, dataset in raw.items():
        check_pairs(dataset, sources[split], data_args.source_lang, data_args.target_lang)
    return raw


def _load_splits(data_args) -> tuple[DatasetDict, dict[str, DataSource]]:
    """The raw splits `load_parallel_data` checks, and where each came from."""
    if data_args.dataset_name is not None:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        config = f" ({data_args.dataset_config_name})" if data_args.dataset_config_name else ""
        return raw, {
            split: DataSource(split, f"dataset {data_args.dataset_name!r}{config}, split {split!r}") for split in raw
        }
    files = {
        split: path
        for split, path in zip(
            SPLITS, (data_args.train_file, data_args.validation_file, data_args.test_file), strict=True
        )
        if path is not None
    }
    if not files:
        return load_builtin_corpus(), {
            split: DataSource(split, f"the built-in corpus's {split} split", str(split_file(BUILTIN_CORPUS_DIR, split)))
            for split in SPLITS
        }
    # one split at a time: the files need not share a format or a schema, and errors name the file
    sources = {split: DataSource(split, f"--{split}_file {path}", path) for split, path in files.items()}
    raw = DatasetDict(
        {
            split: load_data_file(source, data_args.source_lang, data_args.target_lang)
            for split, source in sources.items()
        }
    )
    return raw, sources


def _file_loader(path: str) -> str | None:
    """The datasets loader for `path` by its suffix, looking before a `.gz` (`train.csv.gz` is a gzipped CSV)."""
    name = path.lower().removesuffix(".gz")
    return FILE_LOADERS.get(os.path.splitext(name)[1])


def load_data_file(source: DataSource, source_lang: str, target_lang: str) -> Dataset:
    """The local file `source.path` as a dataset; a ValueError/FileNotFoundError that names the file and, where
    one is to blame, its line, when it is missing, empty, of an unknown format or unreadable."""
    path, loader = source.path, _file_loader(source.path)
    if loader is None or (loader == "parquet" and path.lower().endswith(".gz")):
        raise ValueError(
            f"{source.name}: unknown data format. Name the file *.json, *.jsonl or *.csv (each may be gzipped: "
            "*.jsonl.gz) or *.parquet."
        )
    if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (looked for from {os.getcwd()})"
        what = "a folder, not a file" if os.path.isdir(path) else f"no such file{where}"
        raise FileNotFoundError(f"{source.name}: {what}. Pass the path of a data file.")
    if os.path.getsize(path) == 0:
        raise ValueError(
            f"The {source.split} split is empty: {source.name} is an empty file, so it holds no sentence pair."
        )
    try:
        dataset = load_dataset(
            loader, data_files={source.split: path}, split=source.split, **LOADER_OPTIONS.get(loader, {})
        )
    except UNREADABLE_FILE_ERRORS as error:
        why = _why_unreadable(path, loader, error, source_lang, target_lang)
        raise ValueError(f"{source.name} cannot be read as {loader}: {why}") from error
    if CSV_INDEX_COLUMN in dataset.column_names:
        raise ValueError(
            f"{source.name}, {source.row(0)}: it has more cells than the header names. Quote the cells that hold a "
            "comma, or name every column in the header."
        )
    return dataset


def _read_bytes(path: str) -> bytes:
    """The bytes of a file, decompressed if its name ends in `.gz`."""
    with (gzip.open if path.lower().endswith(".gz") else open)(path, "rb") as file:
        return file.read()


def _read_text(path: str) -> str:
    """The text of a (maybe gzipped) UTF-8 file."""
    return _read_bytes(path).decode("utf-8")


def _csv_record_line(text: str, number: int) -> int | None:
    """The line on which the `number`-th data row (1-based, after the header; blank lines skipped as pandas does)
    of a CSV text starts, or None if the text has fewer rows."""
    reader, found, start = csv.reader(io.StringIO(text)), -1, 1
    for record in reader:
        found += not _blank_csv_record(record)
        if found == number:
            return start
        start = reader.line_num + 1
    return None


def _blank_csv_record(record: list[str]) -> bool:
    """A CSV line that pandas skips: empty, or white space only."""
    return len(record) <= 1 and not "".join(record).strip()


def _why_unreadable(path: str, loader: str, error: Exception, source_lang: str, target_lang: str) -> str:
    """What is wrong with a file `load_dataset` could not read, found by reading it ourselves (only on this error
    path, so a good file costs nothing), with the line to blame where there is one."""
    cause = error.__cause__ or error
    if path.lower().endswith(".gz"):
        with open(path, "rb") as file:
            if file.read(2) != b"\x1f\x8b":
                return "its name ends in .gz but it is not gzip-compressed. Compress it with gzip, or drop the .gz."
    if loader == "parquet":
        return f"{cause} Write it with pyarrow.parquet or Dataset.to_parquet, or name it by its format."
    try:
        data = _read_bytes(path)
    except (OSError, EOFError) as bad:
        return f"it cannot be decompressed ({bad}). Compress it again with gzip."
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as bad:
        line = data.count(b"\n", 0, bad.start) + 1
        return (
            f"line {line} is not UTF-8 (byte {data[bad.start : bad.start + 1]!r}). "
            "Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        )
    if not text.strip():
        return "it holds only blank lines, so no sentence pair. Write one pair per line."
    if loader == "json":
        return _json_problem(text, source_lang, target_lang) or str(cause)
    if len([line for line in text.splitlines() if line.strip()]) == 1:
        return "it holds a header but no data row. Add one row per sentence pair."
    return f"{str(cause).strip().rstrip('.')}. Quote the cells that hold a comma, a quote or a line break."


def _json_problem(text: str, source_lang: str, target_lang: str) -> str | None:
    """The first JSON syntax error or bad record of a JSON list or JSON-lines text, with its line."""
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as bad:
            return f"it is not valid JSON: {bad.msg} at line {bad.lineno}, column {bad.colno}."
        places = [f"record {number} of its JSON list" for number in range(1, len(records) + 1)]
    else:
        lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
        records, places = [], []
        for number, line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as bad:
                truncated = " It is the last line: was the file cut short?" if number == lines[-1][0] else ""
                return f"line {number} is not valid JSON ({bad.msg}, column {bad.colno}).{truncated} {FIX_THE_ROW}"
            places.append(f"line {number}")
    for place, record in zip(places, records, strict=True):
        if not isinstance(record, dict):
            return f"{place} is {_shown(record)}, not a JSON object (one sentence pair). {FIX_THE_ROW}"
    if not records:
        return "it holds an empty JSON list, so no sentence pair."
    layout = "translation" if "translation" in records[0] else "columns"
    for place, record in zip(places, records, strict=True):
        problem = _row_problem(record, layout, source_lang, target_lang)
        if problem is not None:
            return f"{place}: {problem} {FIX_THE_ROW}"
    return None


def check_pairs(dataset: Dataset, source: DataSource, source_lang: str, target_lang: str) -> None:
    """Every row of `dataset` holds a `source_lang` and a `target_lang` text, and one pair at least has both texts
    non-empty; otherwise a ValueError naming `source`, the row and the field.

    A null or missing text, a `translation` that is not a dict, a text that is not a string or not UTF-8 is an
    error; an empty string is allowed (the length filter drops such a training pair). Vectorised in Arrow where
    the texts are Arrow strings (about 0.2 s a million rows, so a second for WMT14's 4.5M); a row is decoded in
    Python only to describe it, or, where a column mixes types (datasets' `Json`), to check them all.
    """
    if len(dataset) == 0:
        raise ValueError(f"The {source.split} split is empty: {source.name} holds no sentence pair.")
    layout = _pair_layout(dataset, source.name, source_lang, target_lang)
    texts = _arrow_texts(dataset, layout, source_lang, target_lang)
    if texts is None:
        _check_rows_in_python(dataset, source, layout, source_lang, target_lang)
        return
    for lang, side in zip((source_lang, target_lang), texts, strict=True):
        bad = _first_non_utf8_row(side)
        if bad is not None:
            raise ValueError(
                f"{source.name}, {source.row(bad)}: {_field_name(layout, lang)} is not UTF-8. Save the file as "
                "UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
            )
    missing = pc.index(pc.or_(pc.is_null(texts[0]), pc.is_null(texts[1])), True).as_py()
    if missing >= 0:
        row = dataset.select_columns(_layout_columns(layout, source_lang, target_lang))[missing]
        problem = _row_problem(row, layout, source_lang, target_lang)
        raise ValueError(f"{source.name}, {source.row(missing)}: {problem} {FIX_THE_ROW}")
    if not pc.any(pc.and_(*(pc.greater(pc.binary_length(side), 0) for side in texts))).as_py():
        raise _no_pair_with_two_texts(source)


def _no_pair_with_two_texts(source: DataSource) -> ValueError:
    return ValueError(
        f"{source.name}: every pair has an empty source or target text, so there is nothing to train on or score. "
        "Check --source_lang/--target_lang and the file's fields."
    )


def _pair_layout(dataset: Dataset, name: str, source_lang: str, target_lang: str) -> str:
    """The layout of `dataset` (`name` in errors): "translation" (a column of {language: text} dicts) or "columns"
    (a text column per language); a ValueError naming the columns or languages there when neither fits."""
    columns = dataset.column_names
    if "translation" in columns:
        struct = dataset.data.schema.field("translation").type
        if pa.types.is_struct(struct):
            languages = sorted(struct.field(i).name for i in range(struct.num_fields))
            missing = [lang for lang in (source_lang, target_lang) if lang not in languages]
            if missing:
                raise ValueError(
                    f"{name}: the `translation` column has languages {languages}, not {missing}. "
                    f"Set --source_lang/--target_lang to two of {languages}."
                )
        return "translation"
    if source_lang in columns and target_lang in columns:
        return "columns"
    raise ValueError(
        f"{name} has columns {sorted(columns)}: it needs either a `translation` column of "
        f"{{language: text}} dicts or two text columns named {source_lang!r} and {target_lang!r} "
        f"(set --source_lang/--target_lang to the column names)."
    )


def _layout_columns(layout: str, source_lang: str, target_lang: str) -> list[str]:
    return ["translation"] if layout == "translation" else [source_lang, target_lang]


def _arrow_texts(
    dataset: Dataset, layout: str, source_lang: str, target_lang: str
) -> tuple[pa.ChunkedArray, pa.ChunkedArray] | None:
    """The source and target texts as Arrow string arrays (null where a row lacks one), or None when the
    column's Arrow type holds something else than strings in some row."""
    table = dataset.select_columns(_layout_columns(layout, source_lang, target_lang)).with_format("arrow")[:]
    if layout == "translation":
        if not pa.types.is_struct(table["translation"].type):
            return None
        texts = tuple(pc.struct_field(table["translation"], lang) for lang in (source_lang, target_lang))
    else:
        texts = (table[source_lang], table[target_lang])
    if not all(pa.types.is_string(side.type) or pa.types.is_large_string(side.type) for side in texts):
        return None
    return texts


def _first_non_utf8_row(texts: pa.ChunkedArray) -> int | None:
    """The first row of an Arrow string array whose bytes are not UTF-8 (Arrow's JSON reader does not check),
    or None. Arrow's validation is vectorised; rows are decoded in Python only once it has failed."""
    try:
        texts.validate(full=True)
        return None
    except pa.ArrowInvalid:
        pass
    offset = 0
    for chunk in texts.chunks:
        for index, value in enumerate(chunk.cast(pa.binary()).to_pylist()):
            try:
                value is None or value.decode("utf-8")
            except UnicodeDecodeError:
                return offset + index
        offset += len(chunk)
    return None


def _check_rows_in_python(
    dataset: Dataset, source: DataSource, layout: str, source_lang: str, target_lang: str
) -> None:
    """`check_pairs` for a column whose Arrow type is not strings: each decoded row through `_row_problem`."""
    columns, index, usable = _layout_columns(layout, source_lang, target_lang), 0, False
    for batch in dataset.select_columns(columns).iter(batch_size=10_000):
        for values in zip(*(batch[column] for column in columns), strict=True):
            row = dict(zip(columns, values, strict=True))
            problem = _row_problem(row, layout, source_lang, target_lang)
            if problem is not None:
                raise ValueError(f"{source.name}, {source.row(index)}: {problem} {FIX_THE_ROW}")
            usable = usable or all(_texts(row, layout, source_lang, target_lang))
            index += 1
    if not usable:
        raise _no_pair_with_two_texts(source)


def _texts(row: dict, layout: str, source_lang: str, target_lang: str) -> list:
    pair = row["translation"] if layout == "translation" else row
    return [pair[lang] for lang in (source_lang, target_lang)]


def _row_problem(row: dict, layout: str, source_lang: str, target_lang: str) -> str | None:
    """What keeps one row (a dict of its decoded fields) from being a sentence pair, or None."""
    if layout == "translation":
        pair = row.get("translation")
        if pair is None:
            return "`translation` is null or missing."
        if not isinstance(pair, dict):
            example = f"{{{source_lang!r}: ..., {target_lang!r}: ...}}"
            return f"`translation` is {_shown(pair)}, not a {{language: text}} dict such as {example}."
        for lang in (source_lang, target_lang):
            if lang not in pair:
                return f"`translation` has no {lang!r} key (it has {sorted(pair)})."
    texts = row["translation"] if layout == "translation" else row
    for lang in (source_lang, target_lang):
        value = texts.get(lang)
        if value is None:
            absent = "null or missing" if layout == "translation" else "null, missing or an empty CSV cell"
            return f"{_field_name(layout, lang)} has no text (it is {absent})."
        if not isinstance(value, str):
            return f"{_field_name(layout, lang)} is {_shown(value)}, not a text."
    return None


def _field_name(layout: str, lang: str) -> str:
    return f"`translation[{lang!r}]`" if layout == "translation" else f"the {lang!r} column"


def _shown(value) -> str:
    """A short picture of a bad value for a message: its repr, cut, and its type."""
    shown = repr(value)
    return f"{shown[:60]}{'...' if len(shown) > 60 else ''} ({type(value).__name__})"


def source_target_pairs(
    dataset: Dataset, split: str, source_lang: str, target_lang: str, num_proc: int | None = None
) -> Dataset:
    """`dataset` with exactly the columns `source` and `target` (strings), whatever its layout (`num_proc`:
    worker processes, as in `Dataset.map`). Its rows are those `load_parallel_data` checked."""
    if len(dataset) == 0:
        raise ValueError(f"The {split} split is empty: it needs at least one sentence pair.")
    columns = dataset.column_names
    if _pair_layout(dataset, f"The {split} split", source_lang, target_lang) == "translation":

        def pick(batch):
            return {
                "source": [pair[source_lang] for pair in batch["translation"]],
                "target": [pair[target_lang] for pair in batch["translation"]],
            }

    else:

        def pick(batch):
            return {"source": batch[source_lang], "target": batch[target_lang]}

    return dataset.map(pick, batched=True, remove_columns=columns, num_proc=num_proc, desc=f"{split}: source/target")


def prepare_splits(raw: DatasetDict, data_args) -> DatasetDict:
    """Train/validation(/test) as `source`/`target` pairs; train and validation are required."""
    for required in ("train", "validation"):
        if required not in raw:
            raise ValueError(
                f"The data have splits {sorted(raw)}, but a {required!r} split is required "
                f"(pass --{required}_file, or a dataset that has one)."
            )
    pairs = DatasetDict(
        {
            split: source_target_pairs(
                raw[split], split, data_args.source_lang, data_args.target_lang, data_args.preprocessing_num_workers
            )
            for split in SPLITS
            if split in raw
        }
    )
    if data_args.max_train_samples is not None:
        pairs["train"] = pairs["train"].select(range(min(data_args.max_train_samples, len(pairs["train"]))))
    return pairs
