"""The built-in en-de corpus: the loader, the splits as the README documents them, and the build script
run on a small catalog written here."""

import gzip
import json
import re
import struct
from pathlib import Path

import datasets
import pytest

from posformer.training.build_corpus import build_corpus, main
from posformer.training.corpus import (
    BUILTIN_CORPUS_DIR,
    SPLITS,
    TEST_SIZE,
    VALIDATION_SIZE,
    load_builtin_corpus,
    split_file,
)


@pytest.fixture(scope="module")
def corpus() -> datasets.DatasetDict:
    with pytest.MonkeyPatch.context() as patch:  # as under HF_DATASETS_OFFLINE=1: no Hub, local files only
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        return load_builtin_corpus()


def test_loader_gives_train_validation_test_of_en_de_pairs(corpus):
    assert list(corpus) == list(SPLITS)
    for split in SPLITS:
        assert corpus[split].column_names == ["translation", "domain"]
        assert all(set(pair) == {"en", "de"} for pair in corpus[split]["translation"])


def test_no_empty_strings(corpus):
    for split in SPLITS:
        pairs = corpus[split]["translation"]
        assert all(pair["en"].strip() and pair["de"].strip() for pair in pairs)
        assert all(domain for domain in corpus[split]["domain"])


def test_every_source_occurs_once_so_none_is_in_two_splits(corpus):
    sources = {split: [pair["en"] for pair in corpus[split]["translation"]] for split in SPLITS}
    assert all(len(set(texts)) == len(texts) for texts in sources.values())
    assert not set(sources["train"]) & set(sources["validation"])
    assert not set(sources["train"]) & set(sources["test"])
    assert not set(sources["validation"]) & set(sources["test"])


def test_split_sizes_are_the_documented_ones(corpus):
    readme = (BUILTIN_CORPUS_DIR / "README.md").read_text()
    documented = {
        split: int(size) for split, size in re.findall(r"^\| (train|validation|test) \| (\d+) \|", readme, re.M)
    }
    assert documented == {split: len(corpus[split]) for split in SPLITS}
    assert (len(corpus["validation"]), len(corpus["test"])) == (VALIDATION_SIZE, TEST_SIZE)


def test_loader_names_the_folder_when_files_are_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        load_builtin_corpus(tmp_path)


# ---------------------------------------------------------------- the build script on a catalog written here


def write_mo(path: Path, messages: dict[str, str]) -> None:
    """A GNU .mo catalog (little-endian, no hash table) of `messages` plus a UTF-8 header.

    Layout: 7 header words (magic, revision, count, originals table, translations table, hash size,
    hash offset), then (length, offset) pairs for the sorted msgids and their msgstrs, then the strings.
    """
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **messages}.items())
    strings = [msgid.encode() for msgid, _ in entries] + [msgstr.encode() for _, msgstr in entries]
    count = len(entries)
    originals_at, translations_at, strings_at = 28, 28 + 8 * count, 28 + 16 * count
    descriptors, blob = [], b""
    for string in strings:
        descriptors.append(struct.pack("<2I", len(string), strings_at + len(blob)))
        blob += string + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, count, originals_at, translations_at, 0, strings_at)
    path.write_bytes(header + b"".join(descriptors) + blob)


ALPHA = {
    "_Open": "Ö_ffnen",  # accelerators go
    "Cannot open file": "Datei kann nicht geöffnet werden",
    "Close": "Zumachen",  # beta says "Schließen": a tie, so the first catalog wins
    "Line one\nline two": "Zeile eins\nZeile zwei",  # whitespace collapses
    "one file was removed\0%d files were removed": "eine Datei wurde entfernt\0%d Dateien wurden entfernt",
    "menu\x04Quit": "Beenden",  # the context goes
    "%s of %s": "%s von %s",  # mostly_code
    "[-a | --all] <file>": "[-a | --all] <Datei>",  # mostly_code
    "  -a, --all     show all\n": "  -a, --all     alle zeigen\n",  # help_table
    "ring\x07": "klingeln\x07",  # control_characters
    "OK": "OK",  # untranslated
}
BETA = {"Cannot open file": "Datei kann nicht geöffnet werden", "Close": "Schließen"}  # a duplicate, a conflict
EXPECTED = {
    ("Open", "Öffnen", "alpha"),
    ("Cannot open file", "Datei kann nicht geöffnet werden", "alpha"),
    ("Close", "Zumachen", "alpha"),
    ("Line one line two", "Zeile eins Zeile zwei", "alpha"),
    ("one file was removed", "eine Datei wurde entfernt", "alpha"),
    ("Quit", "Beenden", "alpha"),
}


@pytest.fixture
def locale_dir(tmp_path) -> Path:
    folder = tmp_path / "LC_MESSAGES"
    folder.mkdir()
    write_mo(folder / "alpha.mo", ALPHA)
    write_mo(folder / "beta.mo", BETA)
    return folder


def read_rows(folder: Path) -> list[tuple[str, str, str]]:
    """(en, de, domain) of every line of every split file in `folder`."""
    rows = []
    for split in SPLITS:
        with gzip.open(split_file(folder, split), "rt", encoding="utf-8") as lines:
            records = [json.loads(line) for line in lines]
        rows += [(r["translation"]["en"], r["translation"]["de"], r["domain"]) for r in records]
    return rows


def test_build_cleans_merges_and_rebuilds_byte_identically(locale_dir, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    report = main(["--locale-dir", str(locale_dir), "--out", str(first)])
    main(["--locale-dir", str(locale_dir), "--out", str(second)])

    rows = read_rows(first)
    assert sorted(rows) == sorted(EXPECTED)
    assert report.read == len(ALPHA) + len(BETA)
    expected_drops = {"control_characters": 1, "help_table": 1, "untranslated": 1, "mostly_code": 2}
    assert report.drops == {**expected_drops, "duplicate_pair": 1, "conflicting_target": 1}
    for split in SPLITS:
        assert split_file(first, split).read_bytes() == split_file(second, split).read_bytes()
    assert "| dropped: `mostly_code` | 2 |" in capsys.readouterr().out


def test_build_splits_by_source_into_the_requested_sizes(locale_dir, tmp_path):
    report = build_corpus(locale_dir, tmp_path / "out", test_size=2, validation_size=2)
    assert {split: len(pairs) for split, pairs in report.splits.items()} == {"train": 2, "validation": 2, "test": 2}
    sources = [row[0] for row in read_rows(tmp_path / "out")]
    assert sorted(sources) == sorted(source for source, _, _ in EXPECTED)


def test_build_refuses_a_folder_without_catalogs(tmp_path):
    with pytest.raises(FileNotFoundError, match="No gettext catalogs"):
        build_corpus(tmp_path, tmp_path / "out")
