"""`posformer-translate`: translate a text file or standard input line by line, as `fairseq-interactive`,
`onmt_translate` and `marian-decoder` do.

    posformer-translate MODEL [--engine torch|ctranslate2] [--input FILE] [--output FILE] [--reference FILE]
        [--num_beams N] [--length_penalty X] [--max_new_tokens N] [--max_tokens N] [--device DEVICE]

MODEL is, for `--engine torch` (the default), a model folder (a run's `model/`, an export) or a Hub name, loaded
with `AutoModelForSeq2SeqLM`: any transformers encoder-decoder works, posformer or not. For `--engine ctranslate2`
it is a CTranslate2 model folder (`model.bin`, its `config.json` and vocabulary) that also holds the transformers
tokenizer files and a `generation_config.json`, the folder `posformer-export --format ctranslate2` writes.

The input (`--input FILE`, standard input without it or with `-`) is read whole, as UTF-8 text, one sentence a line;
the output has one translation per input line, in the input's order (standard output, or `--output FILE`). Empty
(or blank) lines give empty lines and are not fed to the model. Sentences are sorted by length and cut into batches
of at most `--max_tokens` padded source tokens (a sentence longer than that makes a batch alone), so that batches
pad little. A sentence longer than the model can take is truncated, with one warning that counts them: the limit is
the model's position table (`learned`, Marian's sinusoids: `translation.position_limit`) and the tokenizer's
`model_max_length`, whichever is smaller, or `DEFAULT_SOURCE_LIMIT` tokens when neither is set (an encoding without
a table takes any length, but attention's memory grows with its square).

Decoding follows the model's generation config (`num_beams`, `length_penalty`, `early_stopping`, ...); the command
line overrides beams and length penalty. A batch may produce `translation.generation_budget` new tokens for its
longest source, at most the generation config's `max_new_tokens` where it sets one; `--max_new_tokens N` replaces
both; with a position table, never past its end.

The two engines give the same text on the same weights: CTranslate2 divides a beam's log-probability by
`length ** length_penalty` over the same length (new tokens with the end token) as transformers, its
`max_decoding_length` counts new tokens as `max_new_tokens` does, it starts from the decoder start token of its
config and may end at once (`min_decoding_length=0`, transformers' default), and its beam search stops once `beams`
hypotheses are finished, which is transformers' `early_stopping=True` (the paper decoding that posformer exports);
with `early_stopping=False` rare long beams can differ.

With `--reference FILE` (one reference per input line), corpus BLEU and chrF (sacrebleu, `training/metrics`) are
reported on standard error at the end. A progress bar (sentences/s) shows on a terminal, none when standard error
is a pipe or a file.
"""

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase
from transformers.tokenization_utils_base import VERY_LARGE_INTEGER

import posformer.modeling  # noqa: F401  (registers posformer with the Auto classes)

from ..modeling.atomic_io import atomic_write_text
from .arguments import check_output_file, check_tokenizer_folder
from .console import log_to_console
from .metrics import load_translation_metric
from .run_folder import model_source
from .translation import generation_budget, position_limit

logger = logging.getLogger(__spec__.name)  # the module's name also when run as `python -m`

ENGINES = ("torch", "ctranslate2")
STDIO = "-"
DEFAULT_MAX_TOKENS = 4096  # padded source tokens per batch
DEFAULT_SOURCE_LIMIT = 1024  # source tokens when neither the model nor its tokenizer sets a limit (CTranslate2's too)
CTRANSLATE2_MODEL_FILE = "model.bin"
INSTALL_CTRANSLATE2 = 'pip install "posformer[ctranslate2]"'
# generation-config settings that CTranslate2's translate_batch cannot follow (each does nothing when unset or false)
CTRANSLATE2_UNSUPPORTED = ("do_sample", "forced_bos_token_id", "forced_eos_token_id", "bad_words_ids", "min_new_tokens")


@dataclass(frozen=True)
class Decoding:
    """How every batch is decoded: beams, length penalty and the most new tokens (None: `batch_budget` decides)."""

    num_beams: int
    length_penalty: float
    max_new_tokens: int | None


class Engine(Protocol):
    """What the command needs from an engine: its tokenizer, generation config, position table and a batch call."""

    tokenizer: PreTrainedTokenizerBase
    generation_config: GenerationConfig
    position_limit: int | None

    def translate_batch(self, batch: list[list[int]], decoding: Decoding, budget: int) -> list[str]:
        """Translations of the token ids in `batch`, in its order, with at most `budget` new tokens each."""


# ---------------------------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------------------------


class TorchEngine:
    """transformers' `generate` on an `AutoModelForSeq2SeqLM`."""

    def __init__(self, model_path: str, device: str) -> None:
        source = model_source(model_path, "MODEL")
        if (Path(source) / CTRANSLATE2_MODEL_FILE).is_file():
            raise ValueError(f"MODEL {model_path} is a CTranslate2 model folder; pass --engine ctranslate2.")
        check_tokenizer_folder(source, "MODEL")
        self.model = AutoModelForSeq2SeqLM.from_pretrained(source).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.generation_config = self.model.generation_config
        self.position_limit = position_limit(self.model.config)

    @torch.no_grad()
    def translate_batch(self, batch: list[list[int]], decoding: Decoding, budget: int) -> list[str]:
        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(self.model.device)
        generated = self.model.generate(
            **padded, num_beams=decoding.num_beams, length_penalty=decoding.length_penalty, max_new_tokens=budget
        )
        return self.tokenizer.batch_decode(generated, skip_special_tokens=True)


class CTranslate2Engine:
    """CTranslate2's `Translator` on a CTranslate2 model folder that also holds the transformers tokenizer files and
    generation config. Its position table, if any, is the tokenizer's `model_max_length` (the export writes it)."""

    def __init__(self, model_path: str, device: str) -> None:
        try:
            import ctranslate2
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"--engine ctranslate2 needs the ctranslate2 package, which is not installed: {INSTALL_CTRANSLATE2}."
            ) from error
        folder = check_ctranslate2_folder(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.generation_config = GenerationConfig.from_pretrained(folder)
        check_ctranslate2_generation_config(self.generation_config, folder)
        self.position_limit = tokenizer_limit(self.tokenizer)
        kind, _, index = device.partition(":")
        self.translator = ctranslate2.Translator(str(folder), device=kind, device_index=int(index or 0))

    def translate_batch(self, batch: list[list[int]], decoding: Decoding, budget: int) -> list[str]:
        config = self.generation_config
        results = self.translator.translate_batch(
            [self.tokenizer.convert_ids_to_tokens(ids) for ids in batch],
            beam_size=decoding.num_beams,
            length_penalty=decoding.length_penalty,
            max_decoding_length=budget,
            min_decoding_length=0,  # transformers may end at the first step; CTranslate2's default forbids it
            max_input_length=0,  # the sources are truncated already, to the model's own limit
            no_repeat_ngram_size=config.no_repeat_ngram_size or 0,
            repetition_penalty=config.repetition_penalty or 1.0,
        )
        return [
            self.tokenizer.decode(self.tokenizer.convert_tokens_to_ids(result.hypotheses[0]), skip_special_tokens=True)
            for result in results
        ]


def check_ctranslate2_folder(model_path: str) -> Path:
    """`model_path` as a folder when it holds a CTranslate2 model, tokenizer files and a generation config;
    otherwise a `FileNotFoundError` or `ValueError` naming MODEL, what is missing and how to make it."""
    folder = Path(model_path)
    export = "posformer-export RUN_DIR OUT_DIR --format ctranslate2"
    if not folder.exists():
        raise FileNotFoundError(f"MODEL {model_path}: no such folder; pass a CTranslate2 model folder ({export}).")
    if not folder.is_dir():
        raise ValueError(f"MODEL {model_path} is a file; pass a CTranslate2 model folder ({export}).")
    if not (folder / CTRANSLATE2_MODEL_FILE).is_file():
        hint = " It looks like a transformers model: pass --engine torch." if (folder / "config.json").is_file() else ""
        raise ValueError(
            f"MODEL {model_path} holds no {CTRANSLATE2_MODEL_FILE}, so it is not a CTranslate2 model folder; "
            f"write one with {export}.{hint}"
        )
    check_tokenizer_folder(model_path, "MODEL")
    if not (folder / "generation_config.json").is_file():
        raise FileNotFoundError(
            f"MODEL {model_path} holds no generation_config.json; save the model's generation config next to the "
            f"CTranslate2 model (model.generation_config.save_pretrained('{model_path}')), as {export} does."
        )
    return folder


def check_ctranslate2_generation_config(config: GenerationConfig, folder: Path) -> None:
    """`ValueError` naming the setting when the generation config asks for what CTranslate2's beam search lacks."""
    for name in CTRANSLATE2_UNSUPPORTED:
        value = getattr(config, name, None)
        if value:
            raise ValueError(
                f"{folder / 'generation_config.json'} sets {name}={value!r}, which the ctranslate2 engine cannot "
                f"follow; remove it from the file, or translate with --engine torch."
            )


ENGINE_CLASSES = {"torch": TorchEngine, "ctranslate2": CTranslate2Engine}


# ---------------------------------------------------------------------------------------------------------------
# Sources, batches and budgets
# ---------------------------------------------------------------------------------------------------------------


def tokenizer_limit(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The tokenizer's `model_max_length`, or None when it was never set (transformers' "very large" value)."""
    length = tokenizer.model_max_length
    return None if length is None or length >= VERY_LARGE_INTEGER else int(length)


def source_limit(engine: Engine) -> int:
    """The most source tokens to feed `engine`: its position table and its tokenizer's limit, whichever is smaller,
    or `DEFAULT_SOURCE_LIMIT` when neither is set."""
    limits = [limit for limit in (engine.position_limit, tokenizer_limit(engine.tokenizer)) if limit is not None]
    return min(limits, default=DEFAULT_SOURCE_LIMIT)


def truncate(ids: list[int], limit: int, special_ids: set[int]) -> list[int]:
    """`ids` cut to `limit` tokens, keeping a final special token (the end token) at the end."""
    if len(ids) <= limit:
        return ids
    if ids[-1] in special_ids:
        return [*ids[: limit - 1], ids[-1]]
    return ids[:limit]


def encode_sources(tokenizer: PreTrainedTokenizerBase, lines: list[str], limit: int) -> list[list[int]]:
    """Token ids of each line, truncated to `limit`; one warning counts the truncated lines."""
    encoded = tokenizer(lines, verbose=False)["input_ids"] if lines else []  # no warning of its own: ours follows
    too_long = [number for number, ids in enumerate(encoded, start=1) if len(ids) > limit]
    if too_long:
        shown = ", ".join(map(str, too_long[:5])) + (", ..." if len(too_long) > 5 else "")
        logger.warning(
            f"{len(too_long)} of {len(lines)} non-empty input lines are longer than the model can take and were "
            f"truncated to {limit} tokens (non-empty lines {shown}); their translations cover only the beginning."
        )
    special_ids = set(tokenizer.all_special_ids)
    return [truncate(ids, limit, special_ids) for ids in encoded]


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of `lengths` sorted by length and cut into batches of at most `max_tokens` padded tokens (a batch's
    size times its longest length); a length above `max_tokens` makes a batch alone."""
    batches: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and (len(batches[-1]) + 1) * lengths[index] <= max_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def batch_budget(engine: Engine, decoding: Decoding, longest_source: int) -> int:
    """New tokens for a batch: `--max_new_tokens`, else `generation_budget` of its longest source capped by the
    generation config's `max_new_tokens`; never past the end of a position table (the start token takes one)."""
    budget = decoding.max_new_tokens
    if budget is None:
        budget = generation_budget(longest_source)
        configured = engine.generation_config.max_new_tokens
        budget = budget if configured is None else min(budget, configured)
    return budget if engine.position_limit is None else min(budget, engine.position_limit - 1)


def translate_lines(engine: Engine, lines: list[str], decoding: Decoding, max_tokens: int) -> list[str]:
    """One translation per line of `lines`, in their order; blank lines give empty translations without the model."""
    filled = [number for number, line in enumerate(lines) if line.strip()]
    sources = encode_sources(engine.tokenizer, [lines[number] for number in filled], source_limit(engine))
    translations = [""] * len(lines)
    with tqdm(total=len(lines), unit=" sentences", disable=not sys.stderr.isatty(), leave=False) as progress:
        progress.update(len(lines) - len(filled))
        for batch in token_batches([len(ids) for ids in sources], max_tokens):
            ids = [sources[index] for index in batch]
            budget = batch_budget(engine, decoding, max(map(len, ids)))
            for index, text in zip(batch, engine.translate_batch(ids, decoding, budget), strict=True):
                translations[filled[index]] = text
            progress.update(len(batch))
    return translations


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------


def read_lines(path: str, option: str) -> list[str]:
    """The lines of the UTF-8 text file `path` (standard input for `-`), without their line ends; only `\\n` (and
    `\\r\\n`) ends a line, so that the line count is the file's. Errors name `option` and the file."""
    if path == STDIO:
        data, name = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read(), "standard input"
    else:
        file = Path(path)
        if not file.is_file():
            problem = "is a folder" if file.is_dir() else "does not exist"
            raise FileNotFoundError(f"{option} {path} {problem}; pass a text file with one sentence a line.")
        data, name = file.read_bytes(), f"{option} {path}"
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{name} is not UTF-8 text (byte {error.start}); convert it, e.g. iconv -t UTF-8."
            ) from error
    lines = data.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final line end
    return [line.removesuffix("\r") for line in lines]


def write_lines(path: str, lines: list[str]) -> None:
    """`lines` one a line to standard output (`-`) or, atomically, to the file `path`."""
    text = "".join(f"{line}\n" for line in lines)
    if path == STDIO:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(Path(path), text)


def score(translations: list[str], references: list[str]) -> dict[str, float | str]:
    """Corpus BLEU and chrF with their sacrebleu signatures."""
    return load_translation_metric().compute(predictions=translations, references=references)


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posformer-translate",
        description="Translate a text file or standard input line by line with a posformer (or any transformers "
        "encoder-decoder) model, on PyTorch or CTranslate2.",
    )
    parser.add_argument("model", help="model folder or Hub name (--engine torch); CTranslate2 folder (ctranslate2)")
    parser.add_argument("--engine", choices=ENGINES, default="torch", help="decoding engine (default: torch)")
    parser.add_argument("--input", default=STDIO, help="text file, one sentence a line (default: standard input)")
    parser.add_argument("--output", default=STDIO, help="file to write (default: standard output)")
    parser.add_argument("--reference", help="reference translations, one a line: report BLEU and chrF")
    parser.add_argument("--num_beams", type=_positive_int, help="beam size (default: the generation config's)")
    parser.add_argument("--length_penalty", type=_finite_float, help="beam score / length ** X (default: config's)")
    parser.add_argument("--max_new_tokens", type=_positive_int, help="new tokens per sentence (default: 1.5 n + 10)")
    parser.add_argument(
        "--max_tokens", type=_positive_int, default=DEFAULT_MAX_TOKENS, help="padded source tokens per batch"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    return parser


def decoding_from(args: argparse.Namespace, config: GenerationConfig) -> Decoding:
    """The generation config's beams and length penalty, overridden by the command line's (transformers' defaults,
    1 beam and length penalty 1, where neither sets them)."""
    return Decoding(
        num_beams=args.num_beams if args.num_beams is not None else config.num_beams or 1,
        length_penalty=next(value for value in (args.length_penalty, config.length_penalty, 1.0) if value is not None),
        max_new_tokens=args.max_new_tokens,
    )


def main(argv: list[str] | None = None) -> dict[str, float | str] | None:
    """Translate as the command line `argv` says; return the scores with `--reference`, else None. A user's
    mistake raises `ValueError`, `FileNotFoundError` or `ModuleNotFoundError` (a missing ctranslate2)."""
    args = _parser().parse_args(argv)
    if args.output != STDIO:
        check_output_file(Path(args.output), "--output", "translations.txt")
    lines = read_lines(args.input, "--input")
    references = read_lines(args.reference, "--reference") if args.reference is not None else None
    if references is not None and len(references) != len(lines):
        raise ValueError(
            f"--reference {args.reference} has {len(references)} lines but the input has {len(lines)}; pass one "
            "reference line per input line (an empty line for an empty one)."
        )
    engine = ENGINE_CLASSES[args.engine](args.model, args.device)
    translations = translate_lines(engine, lines, decoding_from(args, engine.generation_config), args.max_tokens)
    write_lines(args.output, translations)
    if references is None:
        return None
    scores = score(translations, references)
    logger.info(f"BLEU {scores['bleu']:.2f} ({scores['bleu_signature']})")
    logger.info(f"chrF {scores['chrf']:.2f} ({scores['chrf_signature']})")
    return scores


def cli(argv: list[str] | None = None) -> None:
    """Console entry point `posformer-translate`: a user error exits with its message and status 1."""
    log_to_console()
    try:
        main(argv)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        sys.exit(f"posformer-translate: error: {error}")


if __name__ == "__main__":
    cli()
