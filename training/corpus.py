"""The built-in English→German corpus that ships inside the package, and its loader.

The data are the German translations that free-software translators wrote in the gettext catalogs of a
Debian system, cleaned and split by `posformer.training.build_corpus`; `corpus/en-de/README.md` gives
the provenance, the licences and the statistics.
"""

from pathlib import Path

import datasets

BUILTIN_CORPUS_DIR = Path(__file__).resolve().parent / "corpus" / "en-de"
SOURCE_LANG = "en"
TARGET_LANG = "de"
SPLITS = ("train", "validation", "test")
# Sentence pairs held out for evaluation; every other pair goes to train.
TEST_SIZE = 1500
VALIDATION_SIZE = 1500
FEATURES = datasets.Features(
    {
        "translation": datasets.Translation(languages=(SOURCE_LANG, TARGET_LANG)),
        "domain": datasets.Value("string"),
    }
)


def split_file(corpus_dir: Path, split: str) -> Path:
    """The gzipped JSON-lines file that holds `split` (one of `SPLITS`) in `corpus_dir`."""
    return corpus_dir / f"{split}.jsonl.gz"


def load_builtin_corpus(corpus_dir: Path = BUILTIN_CORPUS_DIR) -> datasets.DatasetDict:
    """Load the train/validation/test splits; each row is `{"translation": {"en", "de"}, "domain"}`.

    Reads local files only, so it works with `HF_DATASETS_OFFLINE=1`. `corpus_dir` defaults to the
    copy inside the installed package; pass another folder written by `build_corpus` to load that one.
    """
    files = {split: split_file(corpus_dir, split) for split in SPLITS}
    missing = [path.name for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"The corpus folder {corpus_dir} lacks {', '.join(missing)}. Rebuild it with "
            f"`python -m posformer.training.build_corpus --out {corpus_dir}`, or reinstall posformer."
        )
    return datasets.load_dataset(
        "json", data_files={split: str(path) for split, path in files.items()}, features=FEATURES
    )
