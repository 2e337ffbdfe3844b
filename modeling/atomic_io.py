"""Atomic writes of files and folders: a reader, or a crash, sees either the old content or the complete new one,
never a half-written file.

Used by every writer in posformer: `save_pretrained`'s copy of the model's code (`remote_code.py`), the training
run's checkpoints, logs, plots and exports (`posformer.training`), the benchmarks' tables. Each write goes to a
hidden sibling on the same file system, is flushed to disk (`fsync`), then renamed into place (`os.replace`), and
the folder entry is flushed too.
"""

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _sibling(path: Path, kind: str) -> Path:
    """A fresh hidden name next to `path`, on the same file system, so that a rename onto `path` is atomic."""
    return path.with_name(f".{path.name}.{kind}-{uuid.uuid4().hex[:12]}")


def _fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root` to disk, so that renaming `root` publishes complete files."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(Path(folder) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_directory(Path(folder))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a flushed temporary file in the same folder and `os.replace`.

    Guarantees: `path` holds either its old content or all of `data`; the temporary file never outlives the call.
    Missing parent folders are created; the new file gets the usual permissions (0o666 minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _sibling(path, "tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _swap_in(staging: Path, final: Path) -> Path | None:
    """Rename `staging` to `final`; an existing `final` is first moved aside, and moved back if the rename fails.

    Returns the moved-aside folder (for the caller to delete) or None when there was no `final`.
    """
    if not final.exists():
        os.rename(staging, final)
        _fsync_directory(final.parent)
        return None
    aside = _sibling(final, "old")
    os.rename(final, aside)
    try:
        os.rename(staging, final)
    except BaseException:
        os.rename(aside, final)
        raise
    _fsync_directory(final.parent)
    return aside


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to `final`; when the body succeeds, it becomes `final`.

    On success the files are flushed to disk and the folder is renamed to `final`; a previous `final` is moved
    aside first and deleted only after the rename succeeded (between the two renames, `final` is briefly absent,
    but never half-written). If the body (or the rename) raises, the temporary folder is deleted and `final` is
    left as it was. Raises `NotADirectoryError` when `final` exists and is not a folder.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final} exists and is not a folder; refusing to replace it with one.")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(final, "tmp")
    staging.mkdir()
    try:
        yield staging
        replace_directory(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(staging: Path, final: Path) -> None:
    """Flush the complete folder `staging` to disk and rename it to `final`, replacing a previous `final` (moved
    aside, deleted only after the rename succeeded)."""
    _fsync_tree(staging)
    aside = _swap_in(staging, final)
    if aside is not None:
        shutil.rmtree(aside)


__all__ = ["atomic_directory", "atomic_write_bytes", "atomic_write_text", "replace_directory"]
