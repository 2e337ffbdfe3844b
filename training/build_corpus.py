"""Build the built-in English→German corpus from the German gettext catalogs of a Debian system.

    python -m posformer.training.build_corpus [--locale-dir DIR] [--out DIR]

Every `*.mo` file in DIR is a catalog of one program (its gettext domain, e.g. "coreutils"): msgid is the
English source and msgstr the German translation. The pipeline, one small function per step:

1. read: each catalog's (msgid, msgstr) pairs; plural entries give their singular pair, the header is skipped;
2. raw filters, on the text as written: control characters, help-text tables (option rows, aligned columns);
3. normalise: drop gnupg's `|FILE|` hints, collapse whitespace, remove keyboard accelerators (`_File`, `&File`);
4. clean filters: empty, untranslated, mostly code (format specifiers, markup, paths, options), too long,
   implausible length ratio;
5. deduplicate: merge identical pairs and keep one German target per English source;
6. split by a hash of the source's words, so near-duplicates share a split (`TEST_SIZE`, `VALIDATION_SIZE`);
7. write `{train,validation,test}.jsonl.gz` in the datasets translation format, gzip mtime 0, so the same
   catalogs give byte-identical files.
"""

import gzip
import hashlib
import json
import re
import struct
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm
from transformers import HfArgumentParser

from posformer.training.corpus import (
    BUILTIN_CORPUS_DIR,
    SOURCE_LANG,
    SPLITS,
    TARGET_LANG,
    TEST_SIZE,
    VALIDATION_SIZE,
    split_file,
)

DEFAULT_LOCALE_DIR = Path("/usr/share/locale/de/LC_MESSAGES")
MAX_WORDS = 60  # whitespace-separated words per side
MAX_LENGTH_RATIO = 3.0  # longer / shorter side, in characters...
MIN_RATIO_CHARS = 20  # ...checked once the longer side has this many characters ("Dir" → "Verzeichnis" is fine)
MIN_PROSE_FRACTION = 0.5  # of a side's words that must be prose rather than placeholders, options, paths, markup

MO_MAGIC = 0x950412DE


@dataclass(frozen=True)
class Pair:
    """One English→German segment and the catalog (gettext domain) it came from."""

    source: str
    target: str
    domain: str

    def to_record(self) -> dict:
        """The datasets translation-format row."""
        return {"translation": {SOURCE_LANG: self.source, TARGET_LANG: self.target}, "domain": self.domain}


# ---------------------------------------------------------------- reading .mo catalogs


def read_mo(path: Path) -> list[tuple[str, str]]:
    """The (msgid, msgstr) pairs of a compiled gettext catalog, in file order, header skipped.

    Layout (GNU gettext manual, "The Format of GNU MO Files"): magic, revision, N, offset of the
    originals table, offset of the translations table; each table holds N (length, offset) pairs.
    A plural entry stores "singular\\0plural" and its forms "\\0"-separated: we keep the singular and
    the first form. A context ("msgctxt\\x04msgid") is dropped. Strings are decoded with the charset
    the header names (not all catalogs are UTF-8: net-tools' is ISO-8859-1).
    """
    data = path.read_bytes()
    byte_order = mo_byte_order(data, path)
    count, originals_at, translations_at = struct.unpack_from(f"{byte_order}3I", data, 8)
    originals = [mo_string(data, originals_at + 8 * index, byte_order) for index in range(count)]
    translations = [mo_string(data, translations_at + 8 * index, byte_order) for index in range(count)]
    header = dict(zip(originals, translations, strict=True)).get(b"", b"")
    charset = mo_charset(header)
    pairs = []
    for msgid, msgstr in zip(originals, translations, strict=True):
        if not msgid:
            continue
        singular = msgid.split(b"\x00")[0].split(b"\x04")[-1]
        try:
            pairs.append((singular.decode(charset), msgstr.split(b"\x00")[0].decode(charset)))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: a message is not valid {charset}, the charset its header names") from error
    return pairs


def mo_byte_order(data: bytes, path: Path) -> str:
    """The `struct` byte-order prefix of a .mo file, read from its magic number."""
    for byte_order in "<>":
        if len(data) >= 28 and struct.unpack_from(f"{byte_order}I", data)[0] == MO_MAGIC:
            return byte_order
    raise ValueError(f"{path} is not a gettext .mo file (no 0x950412de magic number)")


def mo_string(data: bytes, descriptor_at: int, byte_order: str) -> bytes:
    """The string that the (length, offset) descriptor at `descriptor_at` points to."""
    length, offset = struct.unpack_from(f"{byte_order}2I", data, descriptor_at)
    return data[offset : offset + length]


def mo_charset(header: bytes) -> str:
    """The charset in the header's Content-Type line; UTF-8 if it names none (or gettext's "CHARSET" stub)."""
    match = re.search(rb"charset=([\w.:-]+)", header)
    if match is None or match.group(1) == b"CHARSET":
        return "utf-8"
    return match.group(1).decode("ascii")


def read_catalogs(locale_dir: Path) -> list[Pair]:
    """Every pair of every `*.mo` catalog in `locale_dir`, catalogs in name order, domain = file stem."""
    paths = sorted(locale_dir.glob("*.mo"))
    if not paths:
        raise FileNotFoundError(f"No gettext catalogs (*.mo) in {locale_dir}; pass --locale-dir")
    return [
        Pair(source, target, path.stem)
        for path in tqdm(paths, desc="catalogs", unit="catalog")
        for source, target in read_mo(path)
    ]


# ---------------------------------------------------------------- normalisation

GNUPG_HINT = re.compile(r"^\|[^|]*\|")  # gnupg's "|FILE|read options from FILE": the metavariable for --help
ACCELERATOR_MARKERS = ("_", "&")  # GTK's mnemonic underscore, Qt's/Windows' ampersand
WORD_START_AFTER = "([{\"'„“‚‘»«-"  # `(_Open)`, `»_Größe«`, `Von-links-nach-rechts-_Einbettung`


def strip_gnupg_hint(text: str) -> str:
    """Drop a leading `|METAVAR|` hint, which gnupg strips before it shows the message."""
    return GNUPG_HINT.sub("", text)


def normalise_whitespace(text: str) -> str:
    """Collapse every run of whitespace (newlines, tabs, no-break spaces) into one space; trim both ends."""
    return " ".join(text.split())


def accelerator_at(text: str, marker: str) -> int | None:
    """Where `text`'s one `marker` stands before a letter or digit (not an `&lt;` entity); None if it has no such."""
    if text.count(marker) != 1:
        return None
    at = text.index(marker)
    if not text[at + 1 : at + 2].isalnum() or re.match(r"&\w+;", text[at:]):
        return None
    return at


def starts_word(text: str, at: int | None) -> bool:
    """Whether `text[at]` begins a word: it opens the text or follows a space, a bracket, a quote or a hyphen."""
    return at is not None and (at == 0 or text[at - 1].isspace() or text[at - 1] in WORD_START_AFTER)


def remove_at(text: str, at: int | None) -> str:
    """`text` without its character at `at`; all of it if `at` is None."""
    return text if at is None else text[:at] + text[at + 1 :]


def strip_accelerators(source: str, target: str) -> tuple[str, str]:
    """Remove keyboard-accelerator markers: `_File` → `File`, `Ö_ffnen` → `Öffnen`, `&File` → `File`.

    GTK marks a mnemonic with one `_`, Qt with one `&`. A marker that starts a word on either side
    (`_Open` → `Ö_ffnen`, `Save _As` → `Speichern _unter`) shows that the pair has accelerators; then the
    one marker before a letter or digit on each side goes, inside a word too. Pairs whose markers all sit
    inside words stay as they are: there `_` joins identifiers (`new_name` → `neuer_Name`, `krb5_context`)
    and `&` names such as `AT&T`.
    """
    for marker in ACCELERATOR_MARKERS:
        source_at, target_at = accelerator_at(source, marker), accelerator_at(target, marker)
        if starts_word(source, source_at) or starts_word(target, target_at):
            source, target = remove_at(source, source_at), remove_at(target, target_at)
    return source, target


def normalise(pair: Pair) -> Pair:
    """Hints dropped, whitespace collapsed, accelerators removed, on both sides."""
    source, target = (normalise_whitespace(strip_gnupg_hint(text)) for text in (pair.source, pair.target))
    source, target = strip_accelerators(source, target)
    return Pair(source, target, pair.domain)


# ---------------------------------------------------------------- filters (True = drop)

OPTION_ROW = re.compile(r"^[ \t]*-{1,2}[^\W_][^\s,]*(?:,[ \t]*-{1,2}[^\W_][^\s,]*)*(?:[ \t]{2,}|$)", re.MULTILINE)
COLUMN_GAP = re.compile(r"\S[ \t]{3,}\S")
EDGE_PUNCTUATION = "\"'.,;:!?()[]{}«»„“”‘’‚…*"
PROSE_WORD = re.compile(r"[^\W_]+(?:['’.-][^\W_]+)*")


def has_control_characters(pair: Pair) -> bool:
    """A control character other than tab, newline and carriage return: terminal escapes, bells, NULs."""
    return any(unicodedata.category(char) == "Cc" and char not in "\t\n\r" for char in pair.source + pair.target)


def is_help_table(pair: Pair) -> bool:
    """A --help table: a line that starts with options (`  -a, --all    do not…`) or aligns columns."""
    return OPTION_ROW.search(pair.source) is not None or COLUMN_GAP.search(pair.source) is not None


def is_empty(pair: Pair) -> bool:
    """Nothing left on one side."""
    return not pair.source or not pair.target


def is_untranslated(pair: Pair) -> bool:
    """The target repeats the source (up to case): a name, a unit, or a string the translator left alone."""
    return pair.source.casefold() == pair.target.casefold()


def is_prose_word(token: str) -> bool:
    """A word of running text, edge punctuation aside: letters (and digits, `IPv6`), inner `'.-` allowed.

    Placeholders (`%s`, `{name}`), markup (`<b>`), paths (`/etc/passwd`), options (`--all`), identifiers
    (`pg_dump`), URLs and bare numbers or symbols are not.
    """
    word = token.strip(EDGE_PUNCTUATION)
    return PROSE_WORD.fullmatch(word) is not None and any(char.isalpha() for char in word)


def prose_fraction(text: str) -> float:
    """The fraction of whitespace-separated tokens that are prose words."""
    tokens = text.split()
    return sum(map(is_prose_word, tokens)) / len(tokens)


def is_mostly_code(pair: Pair) -> bool:
    """Either side is mostly placeholders, markup, paths, options or identifiers (`%s: %s`, `git log [<options>]`)."""
    return min(prose_fraction(pair.source), prose_fraction(pair.target)) < MIN_PROSE_FRACTION


def is_too_long(pair: Pair) -> bool:
    """More than `MAX_WORDS` words on either side."""
    return max(len(pair.source.split()), len(pair.target.split())) > MAX_WORDS


def has_bad_length_ratio(pair: Pair) -> bool:
    """One side over `MAX_LENGTH_RATIO` times longer than the other (in characters): a likely misalignment."""
    shorter, longer = sorted((len(pair.source), len(pair.target)))
    return longer >= MIN_RATIO_CHARS and longer > MAX_LENGTH_RATIO * shorter


Filter = Callable[[Pair], bool]
# Filters on the text as written (they need its newlines and spacing), then on the normalised text;
# each pair is counted under the first filter that drops it.
RAW_FILTERS: dict[str, Filter] = {"control_characters": has_control_characters, "help_table": is_help_table}
CLEAN_FILTERS: dict[str, Filter] = {
    "empty": is_empty,
    "untranslated": is_untranslated,
    "mostly_code": is_mostly_code,
    "too_long": is_too_long,
    "length_ratio": has_bad_length_ratio,
}


def first_failed(pair: Pair, filters: dict[str, Filter]) -> str | None:
    """The name of the first filter that drops `pair`, or None if it passes them all."""
    return next((name for name, drops in filters.items() if drops(pair)), None)


def clean(pairs: Iterable[Pair], drops: Counter) -> list[Pair]:
    """Raw filters → normalisation → clean filters; counts every drop in `drops` under its filter's name."""
    kept = []
    for pair in pairs:
        reason = first_failed(pair, RAW_FILTERS)
        if reason is None:
            pair = normalise(pair)
            reason = first_failed(pair, CLEAN_FILTERS)
        if reason is None:
            kept.append(pair)
        else:
            drops[reason] += 1
    return kept


# ---------------------------------------------------------------- deduplication and split


def deduplicate(pairs: Iterable[Pair], drops: Counter) -> list[Pair]:
    """Keep one pair per source: its most frequent target, ties (and the domain) to the first catalog.

    Counts identical copies as `duplicate_pair` and the other targets of a source as `conflicting_target`.
    """
    by_source: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        by_source[pair.source].append(pair)
    kept = []
    for candidates in by_source.values():
        targets = Counter(pair.target for pair in candidates)  # most_common keeps first-seen order on ties
        best = targets.most_common(1)[0][0]
        kept.append(next(pair for pair in candidates if pair.target == best))
        drops["duplicate_pair"] += len(candidates) - len(targets)
        drops["conflicting_target"] += len(targets) - 1
    return kept


def stable_hash(text: str) -> str:
    """SHA-256 of the UTF-8 text: the same on every machine and Python (unlike `hash`)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_key(source: str) -> str:
    """The source's prose words, case-folded: near-duplicates ("could not open file %s",
    "Could not open file \"%s\".") share a key, hence a split."""
    return " ".join(token.strip(EDGE_PUNCTUATION).casefold() for token in source.split() if is_prose_word(token))


def assign_splits(pairs: Iterable[Pair], test_size: int, validation_size: int) -> dict[str, list[Pair]]:
    """Test and validation take whole split-key groups in hash order while they fit; train takes the rest.

    Each split is ordered by the hash of its sources, a fixed shuffle.
    """
    groups: dict[str, list[Pair]] = defaultdict(list)
    for pair in pairs:
        groups[split_key(pair.source)].append(pair)
    splits: dict[str, list[Pair]] = {name: [] for name in SPLITS}
    capacity = {"test": test_size, "validation": validation_size}
    for key in sorted(groups, key=stable_hash):
        group = groups[key]
        name = next((n for n in ("test", "validation") if len(splits[n]) + len(group) <= capacity[n]), "train")
        splits[name].extend(group)
    return {name: sorted(split, key=lambda pair: stable_hash(pair.source)) for name, split in splits.items()}


# ---------------------------------------------------------------- writing and reporting


def write_split(pairs: Iterable[Pair], path: Path) -> None:
    """One JSON object per line, gzip'd with no file name and mtime 0, so rebuilds are byte-identical."""
    lines = "".join(json.dumps(pair.to_record(), ensure_ascii=False) + "\n" for pair in pairs)
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        gz.write(lines.encode("utf-8"))


@dataclass
class BuildReport:
    """What a build read, dropped (count per filter, in pipeline order) and wrote."""

    read: int
    drops: Counter = field(default_factory=Counter)
    splits: dict[str, list[Pair]] = field(default_factory=dict)


def build_corpus(
    locale_dir: Path, out_dir: Path, test_size: int = TEST_SIZE, validation_size: int = VALIDATION_SIZE
) -> BuildReport:
    """Read, clean, deduplicate, split and write the corpus; returns what happened."""
    pairs = read_catalogs(locale_dir)
    report = BuildReport(read=len(pairs))
    pairs = deduplicate(clean(pairs, report.drops), report.drops)
    report.splits = assign_splits(pairs, test_size, validation_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, split in report.splits.items():
        write_split(split, split_file(out_dir, name))
    return report


def count_words(pairs: Iterable[Pair], side: str) -> int:
    """Whitespace-separated words on one side ("source" or "target")."""
    return sum(len(getattr(pair, side).split()) for pair in pairs)


def format_summary(report: BuildReport) -> str:
    """Markdown tables: what each filter dropped, pairs and words per split, pairs per domain."""
    kept = [pair for split in report.splits.values() for pair in split]
    lines = ["| step | pairs |", "|---|---:|", f"| read from the catalogs | {report.read} |"]
    for reason in [*RAW_FILTERS, *CLEAN_FILTERS, "duplicate_pair", "conflicting_target"]:
        lines.append(f"| dropped: `{reason}` | {report.drops[reason]} |")
    lines += [f"| kept | {len(kept)} |", "", f"| split | pairs | {SOURCE_LANG} words | {TARGET_LANG} words |"]
    lines.append("|---|---:|---:|---:|")
    for name, split in [*report.splits.items(), ("total", kept)]:
        lines.append(f"| {name} | {len(split)} | {count_words(split, 'source')} | {count_words(split, 'target')} |")
    lines += ["", "| domain | " + " | ".join(SPLITS) + " | total |", "|---|" + "---:|" * (len(SPLITS) + 1)]
    per_split = {name: Counter(pair.domain for pair in split) for name, split in report.splits.items()}
    totals = Counter(pair.domain for pair in kept)
    for domain, total in sorted(totals.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"| {domain} | " + " | ".join(str(per_split[name][domain]) for name in SPLITS) + f" | {total} |")
    return "\n".join(lines)


@dataclass
class BuildCorpusArguments:
    """Command-line arguments of `python -m posformer.training.build_corpus`."""

    locale_dir: Path = field(
        default=DEFAULT_LOCALE_DIR, metadata={"help": "Folder of German gettext catalogs (*.mo) to read."}
    )
    out: Path = field(
        default=BUILTIN_CORPUS_DIR, metadata={"help": "Folder to write train/validation/test.jsonl.gz into."}
    )


def main(argv: list[str] | None = None) -> BuildReport:
    """Build the corpus from the command line and print the summary."""
    (args,) = HfArgumentParser(BuildCorpusArguments).parse_args_into_dataclasses(argv)
    report = build_corpus(args.locale_dir, args.out)
    print(format_summary(report))
    return report


if __name__ == "__main__":
    main()
