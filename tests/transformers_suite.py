"""transformers' own model test suite, from the source distribution of the installed release, as an importable
package: `import_model_tester_mixin()` returns its `test_modeling_common` module (`ModelTesterMixin`, `ids_tensor`).

transformers' wheels carry no tests. Its source distributions carry the top-level `tests/*.py` (the common mixins)
but not `tests/generation/` or `tests/exporters/`, which `test_modeling_common` imports. Those two are supplied here:
`GenerationTesterMixin` is posformer's (`tests/generation_tester.py`, the generation contract written against the
same tester), and `ExportTesterMixin` is empty (posformer's own `torch.export` tests cover every encoding:
`test_modeling_common.py::test_torch_export_matches_eager`).

The sdist is fetched once per release with `pip download` (from whatever index pip is configured with) into
`$POSFORMER_TRANSFORMERS_TESTS` (default `~/.cache/posformer/transformers-tests`); `POSFORMER_TRANSFORMERS_SOURCE`
may name an sdist (`.tar.gz`) or an unpacked source tree of the installed release instead, for machines that reach no
index. pytest-xdist's workers collect at the same time: one fetches under a lock (`$CACHE/<version>/.fetch.lock`)
while the others wait for it, then import what it left.
"""

import contextlib
import fcntl
import importlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

CACHE = Path(
    os.environ.get("POSFORMER_TRANSFORMERS_TESTS", Path.home() / ".cache" / "posformer" / "transformers-tests")
)

SUPPLIED_MODULES = {
    "generation/test_utils.py": (
        '"""Supplied by posformer: the sdist carries no tests/generation."""\n'
        "from generation_tester import GenerationTesterMixin  # noqa: F401\n"
    ),
    "exporters/test_export.py": (
        '"""Supplied by posformer: the sdist carries no tests/exporters; posformer tests torch.export itself."""\n\n\n'
        "class ExportTesterMixin:\n    pass\n"
    ),
}


def package_name(version: str) -> str:
    return "transformers_tests_" + "".join(c if c.isalnum() else "_" for c in version)


def fetch_sdist(version: str, folder: Path) -> Path:
    """The release's source distribution: `POSFORMER_TRANSFORMERS_SOURCE`, or downloaded into `folder`."""
    if source := os.environ.get("POSFORMER_TRANSFORMERS_SOURCE"):
        return Path(source)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
    done = subprocess.run([*command, f"transformers=={version}", "-d", str(folder)], capture_output=True, text=True)
    archives = sorted(folder.glob("transformers-*.tar.gz"))
    if done.returncode or not archives:
        raise RuntimeError(
            f"Cannot download the source distribution of transformers {version}, whose tests/ this suite runs "
            f"(pip said: {done.stderr.strip()[-800:]}). Let pip reach an index that has it, or set "
            "POSFORMER_TRANSFORMERS_SOURCE to its .tar.gz or to an unpacked source tree of that release."
        )
    return archives[0]


def extract_tests(source: Path, destination: Path) -> None:
    """The top-level `tests/*.py` of `source` (an sdist or a source tree) into the package folder `destination`."""
    destination.mkdir(parents=True)
    if source.is_dir():
        for file in (source / "tests").glob("*.py"):
            shutil.copy(file, destination / file.name)
    else:
        with tarfile.open(source) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (destination / parts[2]).write_bytes(archive.extractfile(member).read())
    if not (destination / "test_modeling_common.py").is_file():
        raise RuntimeError(f"{source} holds no tests/test_modeling_common.py: not a transformers source distribution.")
    (destination / "__init__.py").touch()
    for name, text in SUPPLIED_MODULES.items():
        path = destination / name
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(text)


@contextlib.contextmanager
def exclusive(lock_file: Path):
    """Hold an exclusive lock on `lock_file` (created if missing) for the body; other processes wait."""
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def import_model_tester_mixin(version: str = transformers.__version__):
    """The installed release's `tests/test_modeling_common.py`, imported as `transformers_tests_<version>`."""
    root = CACHE / version
    package = root / package_name(version)
    if not (package / "test_modeling_common.py").is_file():
        root.mkdir(parents=True, exist_ok=True)
        with exclusive(root / ".fetch.lock"):
            if not (package / "test_modeling_common.py").is_file():  # another process may have fetched meanwhile
                with tempfile.TemporaryDirectory(dir=root) as scratch:
                    staged = Path(scratch) / package.name
                    extract_tests(fetch_sdist(version, Path(scratch)), staged)
                    staged.rename(package)  # complete or absent: an interrupted fetch leaves nothing half-written
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"{package.name}.test_modeling_common")
