"""Export a trained translation model: averaged weights, the paper's decoding settings, a model card, and curves.

Every function that writes, writes atomically: a reader (or a crash) sees either the old file or folder or the
complete new one, never a half-written one. Run the writers on the main process only.

Model card values
-----------------
`model_card.md` (next to this file; at the repository top in a checkout) is a `string.Template`. `export_model`
fills these keys from the model itself, so they cannot drift from the weights (a key given in `card` wins):

    position_encoding, position_encoding_description, layer_norm, d_model, encoder_layers, decoder_layers,
    encoder_attention_heads, decoder_attention_heads, encoder_ffn_dim, decoder_ffn_dim, vocab_size,
    max_position_embeddings, num_parameters, num_beams, length_penalty, max_new_tokens

The caller's `card` gives the run-specific ones:

    model_name            title and model-index name, e.g. "posformer-base-rope-en-de"
    model_id              Hub id or local path used in the card's loading example
    license               Hub licence id of the weights, e.g. "apache-2.0"
    source_language       ISO 639-1 code, e.g. "en"
    target_language       ISO 639-1 code, e.g. "de"
    dataset               dataset id for the Hub metadata, e.g. "posformer-builtin-en-de"
    dataset_name          human-readable name, e.g. "Debian gettext catalogs, English-German"
    dataset_description   a paragraph on the training data: provenance, licences, number of sentence pairs
    tokenizer_description e.g. "byte-level BPE trained on the training split"
    test_split            the split the scores are on, e.g. "test"
    train_steps           optimizer steps (int)
    tokens_per_batch      source + target tokens per step (int)
    optimizer             optimizer and schedule, e.g. "Adam (0.9, 0.98, 1e-9), inverse square root decay"
    learning_rate         peak learning rate (float)
    warmup_steps          (int)
    label_smoothing       (float)
    checkpoint_averaging  e.g. "mean of the last 5 checkpoints" or "none"
    seed                  (int)
    hardware              e.g. "1x NVIDIA H100 80GB"
    training_time         wall-clock time, e.g. "3 h 10 min"
    bleu, chrf            test-split scores (floats, 0-100)
    bleu_signature, chrf_signature   sacrebleu signatures, from `metrics.load_translation_metric`

In the YAML header every value is escaped, so any string keeps the header valid YAML; in the Markdown body floats
are shown with four significant digits.
"""

import contextlib
import inspect
import io
import json
import math
import os
import pickle
import shutil
import string
import uuid
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import yaml
from accelerate.utils.constants import FSDP_MODEL_NAME
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..modeling import POSITION_ENCODINGS

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"
WEIGHTS_NAME = "model.safetensors"
# what reading a damaged checkpoint raises (safetensors, torch.load/pickle, torch.distributed.checkpoint, files)
CHECKPOINT_READ_ERRORS = (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError, CheckpointException)
# what a checkpoint folder may hold, in this order: single process or DDP, FSDP sharded (the default), FSDP full
CHECKPOINT_WEIGHTS_NAMES = (WEIGHTS_NAME, f"{FSDP_MODEL_NAME}_0", f"{FSDP_MODEL_NAME}.bin")

# Vaswani et al. (2017), section 6.1: beam size 4, length penalty alpha = 0.6, stop early when possible. The paper
# caps the output at input length + 50; a fixed budget of new tokens stands in for that. transformers divides a
# beam's log-probability by length ** alpha, not by the GNMT penalty ((5 + length) / 6) ** alpha the paper used.
PAPER_DECODING = {"num_beams": 4, "length_penalty": 0.6, "max_new_tokens": 256, "early_stopping": True}

# metrics.jsonl keys drawn by `plot_training_curves`, with their legend labels.
LOSS_SERIES = {"train_loss": "training", "eval_loss": "validation"}
SCORE_SERIES = {"eval_bleu": "BLEU", "eval_chrf": "chrF"}

# Config fields the model card shows as they are.
ARCHITECTURE_FIELDS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "vocab_size",
    "max_position_embeddings",
)


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint averaging
# ---------------------------------------------------------------------------------------------------------------


def _weights_file(path: Path) -> Path:
    """The weights of a checkpoint: `path` itself when it is a file or a sharded (DCP) folder, else the first of
    what `save_pretrained` or Accelerate's `save_state` writes inside it: `model.safetensors`, FSDP's sharded
    `pytorch_model_fsdp_0/` or its full `pytorch_model_fsdp.bin`. `ValueError` when there is none."""
    path = Path(path)
    if path.is_file() or _is_sharded_checkpoint(path):
        return path
    for name in CHECKPOINT_WEIGHTS_NAMES:
        if (path / name).is_file() or _is_sharded_checkpoint(path / name):
            return path / name
    tried = ", ".join(str(path / name) for name in CHECKPOINT_WEIGHTS_NAMES)
    raise ValueError(
        f"Checkpoint weights do not exist: none of {tried}. Pass `{WEIGHTS_NAME}` files or checkpoint folders."
    )


def _is_sharded_checkpoint(path: Path) -> bool:
    """Whether `path` is a `torch.distributed.checkpoint` folder (its `.metadata` file lists the shards)."""
    return (path / ".metadata").is_file()


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    """Load checkpoint weights on CPU as `{parameter name: tensor}`: a safetensors file, a full FSDP state dict
    (`torch.save`) or a sharded FSDP folder (gathered here, without a process group). A truncated or corrupt
    checkpoint raises `ValueError` naming it."""
    try:
        if _is_sharded_checkpoint(file):
            return _read_sharded_weights(file)
        if file.suffix == ".bin":
            return torch.load(file, map_location="cpu", weights_only=True)
        return load_file(file, device="cpu")
    except CHECKPOINT_READ_ERRORS as error:
        raise ValueError(
            f"Cannot read checkpoint weights {file}: {checkpoint_error_reason(error)}. "
            "The checkpoint is truncated or corrupt."
        ) from error


def checkpoint_error_reason(error: BaseException) -> str:
    """What went wrong, in one line: a `CheckpointException` names the error of each rank, not its traceback."""
    if isinstance(error, CheckpointException):
        return "; ".join(repr(failure) for failure, _ in error.failures.values())
    return str(error)


def _read_sharded_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Join the shards of a model that Accelerate saved under FSDP (`{"model": state_dict}` through
    `torch.distributed.checkpoint`) into full tensors: the metadata gives every tensor's size and dtype."""
    reader = dcp.FileSystemReader(folder)
    metadata = reader.read_metadata()
    state = {
        key: torch.empty(entry.size, dtype=entry.properties.dtype)
        for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }
    with warnings.catch_warnings():  # reading without a process group is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=reader, no_dist=True)
    return {key.removeprefix("model."): tensor for key, tensor in state.items()}


def _check_same_layout(
    reference_file: Path, reference: Mapping[str, torch.Tensor], file: Path, state: Mapping[str, torch.Tensor]
) -> None:
    """`ValueError` naming `file` unless it holds the same tensor names and shapes as `reference_file`."""
    missing, unexpected = sorted(reference.keys() - state.keys()), sorted(state.keys() - reference.keys())
    if missing or unexpected:
        raise ValueError(
            f"{file} holds different tensors from {reference_file}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}. Only checkpoints of one model can be averaged."
        )
    for name, tensor in reference.items():
        if state[name].shape != tensor.shape:
            raise ValueError(
                f"{file}: {name} has shape {tuple(state[name].shape)}, but {tuple(tensor.shape)} in "
                f"{reference_file}. Only checkpoints of one model can be averaged."
            )


def average_checkpoints(state_dicts_paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several `model.safetensors` files, as in Vaswani et al. (2017): `mean_i W_i`.

    Each path is a safetensors file or a checkpoint folder: what `save_pretrained` writes, or what Accelerate's
    `save_state` writes on one process, under DDP, or under FSDP (sharded or full state dict; see
    `_weights_file`). Sums run in float32, one checkpoint in memory at a time besides the sum; each tensor is cast
    back to its dtype in the first. Returns the same tensor names as the checkpoints, ready for
    `model.load_state_dict(..., strict=False)` (safetensors store tied weights once). Raises `ValueError` naming
    the checkpoint when one is missing, truncated or corrupt, or differs from the first in tensor names or shapes.
    """
    if not state_dicts_paths:
        raise ValueError("average_checkpoints needs at least one checkpoint.")
    files = [_weights_file(path) for path in state_dicts_paths]  # every file exists before any is read
    first = _read_weights(files[0])
    dtypes = {name: tensor.dtype for name, tensor in first.items()}
    total = {name: tensor.to(torch.float32, copy=True) for name, tensor in first.items()}
    for file in files[1:]:
        state = _read_weights(file)
        _check_same_layout(files[0], total, file, state)
        for name, tensor in state.items():
            total[name] += tensor.to(torch.float32)
    return {name: (tensor / len(files)).to(dtypes[name]) for name, tensor in total.items()}


# ---------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------


def _placeholders(template: str) -> set[str]:
    """The `$name` / `${name}` identifiers a `string.Template` text uses."""
    matches = string.Template.pattern.finditer(template)
    return {match.group("named") or match.group("braced") for match in matches} - {None}


def _split_front_matter(text: str) -> tuple[str, str]:
    """`---\\n<yaml>---\\n<markdown>` -> (yaml, markdown); `ValueError` when there is no front matter."""
    end = text.find("\n---\n", 4)
    if not text.startswith("---\n") or end < 0:
        raise ValueError(f"{MODEL_CARD_TEMPLATE} must start with a YAML front matter between two `---` lines.")
    return text[4 : end + 1], text[end + 5 :]


def _yaml_value(value: object) -> str:
    """Numbers, booleans and None as YAML scalars; anything else as the escaped inside of a double-quoted string."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")  # YAML's spelling, not JSON's
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return json.dumps(str(value), ensure_ascii=False)[1:-1]


def _markdown_value(value: object) -> str:
    """Floats with four significant digits (27.31, 0.0007); everything else as `str` gives it."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _parse_front_matter(header: str) -> dict:
    """The rendered header as a dict; `ValueError` if it is not a YAML mapping."""
    try:
        metadata = yaml.safe_load(header)
    except yaml.YAMLError as error:
        raise ValueError(f"The rendered model card header is not valid YAML: {error}") from error
    if not isinstance(metadata, dict):
        raise ValueError(f"The rendered model card header is not a YAML mapping: {metadata!r}")
    return metadata


def render_model_card(card: Mapping[str, object]) -> str:
    """Fill `model_card.md` with `card`'s values (see the module docstring for the keys).

    Guarantees: every placeholder is filled, and the YAML header parses (`yaml.safe_load`) to a mapping whatever
    the strings contain. Raises `ValueError` listing every key the template needs and `card` lacks. Keys the
    template does not use are ignored.
    """
    template = MODEL_CARD_TEMPLATE.read_text(encoding="utf-8")
    missing = sorted(_placeholders(template) - card.keys())
    if missing:
        raise ValueError(f"The model card needs values for {missing}; the module docstring of {__name__} lists them.")
    header, body = _split_front_matter(template)
    header = string.Template(header).substitute({key: _yaml_value(value) for key, value in card.items()})
    body = string.Template(body).substitute({key: _markdown_value(value) for key, value in card.items()})
    _parse_front_matter(header)
    return f"---\n{header}---\n{body}"


def describe_position_encoding(name: str) -> str:
    """One paragraph on what encoding `name` does: the first paragraph of its class docstring in the registry."""
    summary = inspect.getdoc(POSITION_ENCODINGS[name]).split("\n\n")[0].replace("\n", " ")
    summary = summary.removeprefix(f"`{name}`: ")
    return summary[:1].upper() + summary[1:]


def model_card_values(model: PreTrainedModel, generation_config: GenerationConfig) -> dict[str, object]:
    """The card values that the model and its decoding settings determine (architecture, encoding, decoding)."""
    config = model.config
    return {
        "position_encoding": config.position_encoding,
        "position_encoding_description": describe_position_encoding(config.position_encoding),
        "layer_norm": "pre-norm with a final LayerNorm" if config.normalize_before else "post-norm as in the paper",
        **{field: getattr(config, field) for field in ARCHITECTURE_FIELDS},
        "num_parameters": f"{model.num_parameters():,}",
        "num_beams": generation_config.num_beams,
        "length_penalty": generation_config.length_penalty,
        "max_new_tokens": generation_config.max_new_tokens,
    }


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------


def paper_generation_config(config: PretrainedConfig) -> GenerationConfig:
    """The paper's beam search (`PAPER_DECODING`) with the model's bos/eos/pad/decoder-start token ids."""
    return GenerationConfig(
        **PAPER_DECODING,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )


def export_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, card: Mapping[str, object]
) -> Path:
    """Write a loadable, documented model folder to `out_dir` atomically and return `out_dir`.

    The folder holds `model.safetensors` + `config.json` (`save_pretrained`), the tokenizer files,
    `generation_config.json` with the paper's decoding (`paper_generation_config`), and `README.md` rendered from
    `model_card.md` with `model_card_values(model, ...)` overlaid by `card`. The card is rendered before anything
    is written, so a missing key raises `ValueError` and leaves `out_dir` untouched; so does any failure while
    saving. `model` must be unwrapped (`accelerator.unwrap_model`); the model itself is not modified.
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"export_model needs a PreTrainedModel, got {type(model).__name__}; unwrap it first.")
    out_dir = Path(out_dir)
    generation_config = paper_generation_config(model.config)
    readme = render_model_card({**model_card_values(model, generation_config), **card})
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging)
        generation_config.save_pretrained(staging)  # replaces the one save_pretrained derived from the config
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(readme, encoding="utf-8")
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------------------------


def read_metrics_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a metrics log, one per non-empty line, each with a `step`.

    Raises `ValueError` naming the file and line of a line that is not a JSON object with a `step`, and when
    there are no records at all.
    """
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not valid JSON: {error}") from error
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}:{number} must be a JSON object with a 'step', got {line[:80]!r}")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no metric records.")
    return records


def _plot_series(axes: Axes, records: list[dict], labels: Mapping[str, str], ylabel: str, title: str) -> None:
    """One line per key of `labels` that the records contain, against `step`; dots where points are sparse."""
    for key, label in labels.items():
        points = [(record["step"], record[key]) for record in records if record.get(key) is not None]
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, label=label, marker="o" if len(points) <= 30 else None, markersize=4)
    axes.set(xlabel="step", ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axes.transAxes, color="gray")


def training_curves_figure(records: list[dict], title: str) -> Figure:
    """Two panels: training and validation loss vs step; validation BLEU and chrF vs step."""
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, score_axes = figure.subplots(1, 2)
    _plot_series(loss_axes, records, LOSS_SERIES, "loss", "Loss")
    _plot_series(score_axes, records, SCORE_SERIES, "score (0-100)", "Validation scores")
    figure.suptitle(title)
    return figure


def plot_training_curves(metrics_jsonl: Path, out_png: Path, *, title: str | None = None) -> Path:
    """Draw the curves of a metrics log (`read_metrics_jsonl`) to a PNG, written atomically; return `out_png`.

    Training records look like `{"step": 10, "train_loss": 3.2, "learning_rate": 1e-4}`, evaluation records like
    `{"step": 50, "eval_loss": 3.0, "eval_bleu": 1.2, "eval_chrf": 20.1}`; other keys are ignored. The title defaults to
    "Training curves: <the folder holding the log>" (the run).
    """
    metrics_jsonl = Path(metrics_jsonl)
    title = title or f"Training curves: {metrics_jsonl.resolve().parent.name}"
    figure = training_curves_figure(read_metrics_jsonl(metrics_jsonl), title)
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return atomic_write_bytes(out_png, buffer.getvalue())
