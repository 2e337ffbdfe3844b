"""A training run's output folder: its layout, its checkpoints (save, find, resume) and its metrics log.

    tokenizer/                 the tokenizer of the run (trained once, reused on resume)
    checkpoints/checkpoint-N/  Accelerate states every --save_steps (the last --save_total_limit kept)
    metrics.jsonl              one JSON object per log/eval event
    training_curves.png        loss and BLEU/chrF against steps
    model/                     the final (optionally averaged) model: safetensors, tokenizer,
                               generation config, model card; loads with AutoModelForSeq2SeqLM
    results.json               test BLEU/chrF and sample translations
    card.json                  the run's model-card values (read by `posformer-export`)

A checkpoint is complete once its `trainer_state.json` exists: it is written last, into a folder saved aside and
renamed into place, so a crash leaves either no checkpoint of that step or a complete one.
"""

import json
import logging
import pickle
import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import load as load_accelerate_file
from accelerate.utils.constants import RNG_STATE_NAME
from safetensors import SafetensorError
from torch.distributed.checkpoint import CheckpointException

from ..modeling.atomic_io import replace_directory

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"
RESULTS_FILE = "results.json"
CARD_FILE = "card.json"  # the run's model-card values, for `posformer-export`

# what reading a damaged checkpoint raises (safetensors, torch.load/pickle, torch.distributed.checkpoint, files)
CHECKPOINT_READ_ERRORS = (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError, CheckpointException)


# ---------------------------------------------------------------------------------------------------------------
# Finding checkpoints
# ---------------------------------------------------------------------------------------------------------------


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a checkpoint is complete once its state file exists)."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    found = [path for path in folder.glob(f"{CHECKPOINT_PREFIX}*") if (path / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The step of `checkpoints/checkpoint-N`: N."""
    return int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX))


def last_checkpoints(run_dir: Path, count: int, option: str = "--average_last") -> list[Path]:
    """The last `count` complete checkpoints of the run, oldest first; `ValueError` naming `option` when there are
    fewer."""
    if count < 1:
        raise ValueError(f"{option} must be at least 1, got {count}.")
    found = checkpoints(run_dir)
    if len(found) < count:
        names = ", ".join(path.name for path in found) or "none"
        raise ValueError(
            f"{option} {count} needs {count} checkpoints, but {Path(run_dir) / CHECKPOINTS_DIR} holds {len(found)} "
            f"complete ones ({names}). Lower {option}."
        )
    return found[-count:]


def is_finished(run_dir: Path) -> bool:
    """Whether the run exported its model and wrote its results."""
    return (Path(run_dir) / RESULTS_FILE).is_file() and (Path(run_dir) / MODEL_DIR).is_dir()


def resolve_resume(run_dir: Path, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint to continue from; refuses to start a fresh run on top of an existing one."""
    existing = checkpoints(run_dir)
    if resume_from_checkpoint is None:
        if existing:
            raise ValueError(
                f"{run_dir} already holds a run ({existing[-1].name}). Continue it with "
                f"--resume_from_checkpoint latest, or choose another --output_dir."
            )
        return None
    if resume_from_checkpoint == "latest":
        if not existing:
            raise ValueError(f"--resume_from_checkpoint latest: {Path(run_dir) / CHECKPOINTS_DIR} holds no checkpoint.")
        return existing[-1]
    path = Path(resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {STATE_FILE}).")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Saving and loading checkpoints
# ---------------------------------------------------------------------------------------------------------------


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, data_order: dict, keep: int) -> Path:
    """An Accelerate state of `step` (model, optimizer, registered schedule, random states), written aside and
    renamed into place with its `trainer_state.json` (`{"step", "data_order"}`); only the last `keep` complete
    checkpoints stay. A collective: every process calls it."""
    final = Path(run_dir) / CHECKPOINTS_DIR / f"{CHECKPOINT_PREFIX}{step}"
    staging = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps({"step": step, "data_order": data_order}))
        replace_directory(staging, final)  # a checkpoint of an abandoned continuation may hold the name
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: Path, run_dir: Path) -> dict:
    """Restore what `save_checkpoint` saved into the prepared objects and return its state (`step`, `data_order`).
    A damaged checkpoint is a `ValueError` that names an intact earlier one."""
    state = json.loads((checkpoint / STATE_FILE).read_text())
    try:
        # Accelerate skips a damaged random-state file (and would resume with other dropout masks): read it first
        load_accelerate_file(checkpoint / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl")
        accelerator.load_state(str(checkpoint))
    except CHECKPOINT_READ_ERRORS as error:
        earlier = [path for path in checkpoints(run_dir) if checkpoint_step(path) < state["step"]]
        hint = f"--resume_from_checkpoint {earlier[-1]}" if earlier else "none is left; start a new run"
        raise ValueError(
            f"Cannot resume from {checkpoint}: {checkpoint_error_reason(error)}. The checkpoint is damaged "
            f"(truncated, corrupt or incomplete). An earlier one: {hint}."
        ) from error
    return state


def checkpoint_error_reason(error: BaseException) -> str:
    """What went wrong, in one line: a `CheckpointException` names the error of each rank, not its traceback."""
    if isinstance(error, CheckpointException):
        return "; ".join(repr(failure) for failure, _ in error.failures.values())
    return str(error)


def log_a_changed_data_order(checkpoint: Path, saved: dict, now: dict, step: int) -> None:
    """Resuming on another number of processes (or batch size, ...) is legitimate, but the batches after the
    checkpoint then differ from those of the uninterrupted run: say so (a warning in the log)."""
    changed = {name: before for name, before in saved.items() if now.get(name) != before}
    if changed:
        differences = ", ".join(f"{name} {before} -> {now.get(name)}" for name, before in changed.items())
        logger.warning(
            f"Resuming {checkpoint} with another data order ({differences}): training continues correctly, but its "
            f"batches after step {step} are not those of the uninterrupted run."
        )


# ---------------------------------------------------------------------------------------------------------------
# The metrics log
# ---------------------------------------------------------------------------------------------------------------


def append_metrics(run_dir: Path, record: dict) -> None:
    """Add one record (`{"step": ..., ...}`) as a line of the run's `metrics.jsonl`."""
    with open(Path(run_dir) / METRICS_FILE, "a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
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
