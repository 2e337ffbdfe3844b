"""Command-line arguments of `posformer-train`, as dataclasses parsed by transformers' `HfArgumentParser`.

Names follow transformers' translation examples (`--dataset_name`, `--source_lang`, `--output_dir`,
`--max_steps`, ...). Model sizes come from a named preset (`--model_size`) and every `PosformerConfig`
field can be overridden on its own (`--d_model 384`); `--config run.yaml` reads any of these from a
YAML or JSON file (the command line wins over the file). The checks of the paths that posformer's command-line
tools write to or read a tokenizer from are here too, shared by all of them.
"""

import dataclasses
import difflib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from ..configuration.configuration_posformer import PosformerConfig
from ..modeling.position_encodings import POSITION_ENCODINGS

MODEL_SIZES: dict[str, dict[str, int | float]] = {
    # the default: the built-in corpus on 2 CPU cores in the README's time budget
    "tiny": dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512),
    # a GPU hour, or a CPU afternoon
    "small": dict(d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024),
    # Vaswani et al. (2017), Table 3 "base"
    "base": dict(d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                 decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, dropout=0.1),
    # Vaswani et al. (2017), Table 3 "big"
    "big": dict(d_model=1024, encoder_layers=6, decoder_layers=6, encoder_attention_heads=16,
                decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, dropout=0.3),
}  # fmt: skip

# Config fields that the data or the training recipe decide, not the user's model choice.
NOT_MODEL_OPTIONS = {
    "vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
    "use_cache", "is_encoder_decoder", "is_decoder", "position_encoding",
}  # fmt: skip


def _cli_type(annotation) -> type:
    """The one type argparse should parse a config field's annotation (`float | int` -> float) as."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        return float if float in members else members[0]
    return annotation


def _model_override_fields() -> list[tuple[str, type, dataclasses.Field]]:
    hints = PosformerConfig.__annotations__  # the config's own fields, as real types
    fields = []
    for config_field in dataclasses.fields(PosformerConfig):
        name = config_field.name
        if name not in hints or name in NOT_MODEL_OPTIONS:
            continue
        cli_type = _cli_type(hints[name])
        if cli_type not in (int, float, str, bool):
            continue
        metadata = {
            "help": f"Override PosformerConfig.{name} (else the --model_size preset, else {config_field.default!r})."
        }
        if cli_type is bool:  # `--normalize_before` alone means true, as for transformers' own flags
            metadata |= {"nargs": "?", "const": True}
        fields.append((name, cli_type | None, field(default=None, metadata=metadata)))
    return fields


@dataclass
class ModelChoice:
    model_size: str = field(
        default="tiny", metadata={"help": f"Named size preset: {', '.join(MODEL_SIZES)} (base/big: the paper's)."}
    )
    position_encoding: str = field(
        default="sinusoidal",
        metadata={
            "help": "Position encoding (README: Position encodings). "
            + "; ".join(f"{name}: {encoding.summary}" for name, encoding in POSITION_ENCODINGS.items()),
            "choices": list(POSITION_ENCODINGS),
        },
    )

    def __post_init__(self) -> None:
        if self.model_size not in MODEL_SIZES:
            raise ValueError(f"Unknown --model_size {self.model_size!r}. Choose one of: {', '.join(MODEL_SIZES)}.")


# Every PosformerConfig field a user may set, generated from the config so that none is forgotten.
ModelArguments = dataclasses.make_dataclass("ModelArguments", _model_override_fields(), bases=(ModelChoice,))
ModelArguments.__doc__ = "Model size preset, position encoding, and any PosformerConfig field override."


@dataclass
class DataSourceArguments:
    """Where the parallel data come from (shared by `posformer-train` and `posformer-finetune`)."""

    dataset_name: str | None = field(
        default=None, metadata={"help": "A datasets Hub name (e.g. wmt14). Default: the built-in en-de corpus."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration (e.g. de-en)."})
    train_file: str | None = field(default=None, metadata={"help": "Local json/jsonl/csv/parquet training file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file."})
    source_lang: str = field(default="en", metadata={"help": "Source language code (key or column name)."})
    target_lang: str = field(default="de", metadata={"help": "Target language code (key or column name)."})


@dataclass
class DataArguments(DataSourceArguments):
    """Where the parallel data come from and how they are tokenised."""

    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Load this tokenizer instead of training a shared BPE on the training data."}
    )
    tokenizer_vocab_size: int = field(default=8000, metadata={"help": "Vocabulary size of the trained BPE."})
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={"help": "Processes that prepare, tokenize and length-filter the data (datasets' num_proc)."},
    )
    max_source_length: int = field(default=128, metadata={"help": "Drop training pairs with longer sources."})
    max_target_length: int = field(default=128, metadata={"help": "Drop training pairs with longer targets."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training pairs."})
    max_eval_samples: int | None = field(
        default=200,
        metadata={
            "help": "Validation pairs translated for BLEU/chrF at each evaluation (the loss covers every pair within "
            "--max_source_length/--max_target_length)."
        },
    )
    max_test_samples: int | None = field(
        default=None,
        metadata={"help": "Test pairs translated for BLEU/chrF at the end (the loss: every pair within the limits)."},
    )

    def __post_init__(self) -> None:
        _check_at_least(
            self,
            tokenizer_vocab_size=5,  # the four special tokens and one more
            preprocessing_num_workers=1,
            max_source_length=2,  # one token and </s>
            max_target_length=2,
            max_train_samples=1,
            max_eval_samples=1,
            max_test_samples=1,
        )


@dataclass
class TrainingArguments:
    """The training recipe of Vaswani et al. (2017) and how the run is logged, saved and resumed."""

    output_dir: str = field(default="runs/posformer", metadata={"help": "Checkpoints, logs and the final model."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps."})
    max_tokens: int = field(default=4096, metadata={"help": "Tokens per batch and process (padded, larger side)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    learning_rate: float = field(
        default=2e-3, metadata={"help": "Peak learning rate, reached after warmup (paper's base: 7e-4)."}
    )
    warmup_steps: int = field(
        default=250, metadata={"help": "Linear warmup, then inverse square root decay (paper: 4000)."}
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2 (the paper's 0.98)."})
    adam_epsilon: float = field(default=1e-9, metadata={"help": "AdamW epsilon (the paper's 1e-9)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing of the loss."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0 disables)."})
    seed: int = field(default=42, metadata={"help": "Seed for initialisation, data order and dropout."})
    logging_steps: int = field(default=25, metadata={"help": "Log training loss every N steps."})
    eval_steps: int = field(default=500, metadata={"help": "Validation loss and BLEU/chrF every N steps."})
    save_steps: int = field(default=500, metadata={"help": "Save a resumable checkpoint every N steps."})
    save_total_limit: int = field(default=3, metadata={"help": "Keep the last K checkpoints."})
    average_last_checkpoints: int = field(
        default=1, metadata={"help": "Export the average of the last N checkpoints (the paper averages 5)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Continue a run exactly: a checkpoint folder, or 'latest' (also when given no value)."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete the run already in --output_dir (finished or not) and start a new one there."},
    )
    num_beams: int = field(default=4, metadata={"help": "Beam size for evaluation and export."})
    length_penalty: float = field(default=0.6, metadata={"help": "Length penalty (the paper's 0.6)."})
    eval_batch_size: int = field(default=64, metadata={"help": "Sentences per generation batch."})
    num_samples_to_show: int = field(default=5, metadata={"help": "Test translations printed at the end."})
    report_to: str = field(
        default="auto", metadata={"help": "Accelerate tracker: auto (tensorboard if installed), all, none."}
    )

    def __post_init__(self) -> None:
        _check_at_least(
            self,
            max_steps=1, max_tokens=1, gradient_accumulation_steps=1, warmup_steps=0, logging_steps=1, eval_steps=1,
            save_steps=1, save_total_limit=1, average_last_checkpoints=1, num_beams=1, eval_batch_size=1,
            num_samples_to_show=0, weight_decay=0, max_grad_norm=0,
        )  # fmt: skip
        for name in ("learning_rate", "adam_epsilon"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name} must be a positive number, got {value}.")
        _check_within(self, adam_beta1=(0, 1), adam_beta2=(0, 1), label_smoothing=(0, 1))
        if self.average_last_checkpoints > self.save_total_limit:
            raise ValueError(
                f"--average_last_checkpoints {self.average_last_checkpoints} needs that many checkpoints, but "
                f"--save_total_limit {self.save_total_limit} keeps fewer. Raise --save_total_limit."
            )
        saves = -(-self.max_steps // self.save_steps)  # at every --save_steps and at the last step
        if self.average_last_checkpoints > saves:
            raise ValueError(
                f"--average_last_checkpoints {self.average_last_checkpoints} needs that many checkpoints, but "
                f"--max_steps {self.max_steps} with --save_steps {self.save_steps} saves {saves}. Lower "
                f"--save_steps or --average_last_checkpoints."
            )


def _check_at_least(arguments, **minimums: float) -> None:
    """`ValueError` naming the first argument below its minimum (NaN too; an unset `None` passes)."""
    for name, minimum in minimums.items():
        value = getattr(arguments, name)
        if value is not None and not value >= minimum:
            raise ValueError(f"--{name} must be at least {minimum}, got {value}.")


def _check_within(arguments, **intervals: tuple[float, float]) -> None:
    """`ValueError` naming the first argument outside its interval `[low, high)` (NaN and infinity are)."""
    for name, (low, high) in intervals.items():
        value = getattr(arguments, name)
        if not (math.isfinite(value) and low <= value < high):
            raise ValueError(f"--{name} must be in [{low}, {high}), got {value}.")


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)  # posformer-train's, in --help order


def parse_args(argv: list[str] | None = None) -> tuple:
    """Parse `argv` (default `sys.argv[1:]`), with `--config FILE` (YAML or JSON) read first."""
    argv = _resume_defaults_to_latest(list(sys.argv[1:] if argv is None else argv))
    parser = HfArgumentParser(ARGUMENT_CLASSES, prog="posformer-train")
    parser.add_argument("--config", default=None, help="YAML or JSON file of any of these arguments.")
    namespace, _ = parser.parse_known_args(argv)
    if namespace.config is not None:
        argv = _arguments_from_file(Path(namespace.config)) + argv
    return parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)[:3]


def _resume_defaults_to_latest(argv: list[str]) -> list[str]:
    """`--resume_from_checkpoint` with no value means the latest checkpoint of `--output_dir`."""
    for position, argument in enumerate(argv):
        if argument in ("--resume_from_checkpoint", "--resume-from-checkpoint"):
            following = argv[position + 1] if position + 1 < len(argv) else "--"
            if following.startswith("--"):
                return argv[: position + 1] + ["latest"] + argv[position + 1 :]
    return argv


# ---------------------------------------------------------------------------------------------------------------
# --config FILE
# ---------------------------------------------------------------------------------------------------------------

CONFIG_FORMATS = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}


def _arguments_from_file(path: Path) -> list[str]:
    """Turn a YAML/JSON mapping into `--key=value` arguments that the command line, read after them, overrides.

    `ValueError` naming the file (and the key, or the line and column of a syntax error) for anything that is not
    a flat mapping of posformer-train's argument names to single values. A null leaves an argument whose default
    is None unset and is an error for any other."""
    arguments = {
        argument.name: argument for arguments in ARGUMENT_CLASSES for argument in dataclasses.fields(arguments)
    }
    command_line = []
    for key, value in _read_config_file(path).items():
        _check_one_value(path, key, value)
        argument = _known_argument(path, key, arguments)
        if value is None and argument.default is None:
            continue  # the argument stays unset, as without the line
        command_line.append(f"--{key}={_command_line_value(path, argument, value)}")
    return command_line


def _read_config_file(path: Path) -> dict:
    """The mapping a `--config` file holds; `FileNotFoundError`/`ValueError` naming the file and what is wrong."""
    if not path.is_file():
        state = "is a folder" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"--config {path}: {state}; pass a YAML (.yaml, .yml) or JSON (.json) file.")
    if path.suffix not in CONFIG_FORMATS:
        raise ValueError(f"--config {path}: unknown format {path.suffix!r}; name the file .yaml, .yml or .json.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"--config {path} is not UTF-8 text (byte {error.start}); save it as UTF-8.") from error
    values = _parse_config_text(path, text)
    if not isinstance(values, dict):
        raise ValueError(
            f"--config {path} must hold a mapping of argument names to values (such as `max_steps: 1000`), "
            f"not {'an empty file' if values is None else 'a ' + type(values).__name__}."
        )
    return values


def _parse_config_text(path: Path, text: str) -> object:
    """`text` parsed as YAML or JSON (by the file's suffix); a syntax error names the file, line and column."""
    kind = CONFIG_FORMATS[path.suffix]
    try:
        return yaml.safe_load(text) if kind == "YAML" else json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"--config {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}."
        ) from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or error
        raise ValueError(f"--config {path} is not valid YAML: {problem}{where}.") from error


def _known_argument(path: Path, key: object, arguments: dict[str, dataclasses.Field]) -> dataclasses.Field:
    """The argument `key` names; `ValueError` naming the key and the closest argument when there is none."""
    if key in arguments:
        return arguments[key]
    close = difflib.get_close_matches(str(key), arguments, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "posformer-train --help lists them."
    raise ValueError(f"--config {path}: {key!r} is not an argument of posformer-train; {hint}")


def _check_one_value(path: Path, key: object, value: object) -> None:
    """`ValueError` when `value` is a list or a mapping: every argument of posformer-train takes one value."""
    if isinstance(value, dict):
        raise ValueError(
            f"--config {path}: {key} is a mapping, but each argument takes one value; write the keys under {key}: "
            "at the top level of the file."
        )
    if isinstance(value, list):
        raise ValueError(
            f"--config {path}: {key} is a list, but each argument takes one value (a number, a string or true/false)."
        )


def _command_line_value(path: Path, argument: dataclasses.Field, value: object) -> str:
    """`value` as the command line spells it; `ValueError` for a null or for true/false given to a non-flag."""
    if value is None:
        raise ValueError(
            f"--config {path}: {argument.name} is null; give it a value or delete the line to keep the default "
            f"({argument.default})."
        )
    if isinstance(value, bool):
        expected = _cli_type(argument.type)
        if expected is not bool:
            raise ValueError(
                f"--config {path}: {argument.name} is {str(value).lower()}, but it takes a value of type "
                f"{expected.__name__}, not true/false."
            )
        return str(value).lower()
    return str(value)


def build_config(model_args, vocab_size: int, special_ids: dict[str, int]) -> PosformerConfig:
    """The PosformerConfig of a run: preset, then the user's overrides, then the tokenizer's ids."""
    values = dict(MODEL_SIZES[model_args.model_size])
    for name, _, _ in _model_override_fields():
        if getattr(model_args, name) is not None:
            values[name] = getattr(model_args, name)
    return PosformerConfig(
        **values,
        position_encoding=model_args.position_encoding,
        vocab_size=vocab_size,
        **special_ids,
    )


# ---------------------------------------------------------------------------------------------------------------
# Paths given to posformer's command-line tools
# ---------------------------------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")  # either tells AutoTokenizer what to load


def check_output_folder(path: Path, option: str) -> None:
    """`ValueError` naming `option` when `path` cannot become a folder: it is a file, or lies under one."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a folder; pass a folder (it is created if missing).")
    _check_no_file_above(path, option)


def check_output_file(path: Path, option: str, example_name: str) -> None:
    """`ValueError` naming `option` when `path` cannot be written as a file: it is a folder, or lies under a file."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; name the file to write, e.g. {path / example_name}.")
    _check_no_file_above(path, option)


def _check_no_file_above(path: Path, option: str) -> None:
    """`ValueError` when the nearest existing folder above `path` is a file, so that nothing can be written there."""
    existing = next((parent for parent in path.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(f"{option} {path} lies under {existing}, which is a file; choose a path in a folder.")


def check_tokenizer_folder(source: str, option: str) -> None:
    """`FileNotFoundError` naming `option` when the local model folder `source` holds no tokenizer (a Hub name,
    resolved by the Hub, passes)."""
    folder = Path(source)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{option} {source} holds a model but no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the "
            f"tokenizer next to it (tokenizer.save_pretrained('{source}')) or pass the folder that has both."
        )
