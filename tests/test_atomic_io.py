"""Atomic writes: a file or folder is replaced whole or left as it was, and no temporary file outlives a write."""

import pytest

from conftest import siblings
from posformer.modeling.atomic_io import atomic_directory, atomic_write_text


def test_atomic_directory_replaces_the_previous_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_directory(final) as staging:
        assert staging.parent == final.parent and staging != final
        (staging / "new.txt").write_text("new")
        assert (final / "old.txt").read_text() == "old"  # untouched until the body has finished
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert siblings(final) == []


def test_atomic_directory_keeps_the_previous_folder_when_the_body_raises(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(final) as staging:
            (staging / "half-written.bin").write_bytes(b"\0" * 10)
            raise RuntimeError("boom")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"] and (final / "old.txt").read_text() == "old"
    assert siblings(final) == []


def test_atomic_directory_creates_a_new_folder_and_refuses_a_file(tmp_path):
    with atomic_directory(tmp_path / "a" / "b") as staging:
        (staging / "x").write_text("x")
    assert (tmp_path / "a" / "b" / "x").read_text() == "x"
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="file"):
        with atomic_directory(tmp_path / "file"):
            pass


def test_atomic_write_text_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "notes.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "zweite Fassung")
    assert path.read_text(encoding="utf-8") == "zweite Fassung"
    assert siblings(path) == []
