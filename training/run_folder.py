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
renamed into place, so a crash leaves either no checkpoint of that step or a complete one. The state file is JSON:
the step, the data order, the learning-rate schedule and the run's arguments (a resume that would change the model,
the data or the recipe is refused). Nothing read from a checkpoint can run code (`checkpoint_safety.py`).
"""

import json
import logging
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import load as load_accelerate_file
from accelerate.utils.constants import RNG_STATE_NAME
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError
from torch.distributed.checkpoint import CheckpointException
from torch.optim.lr_scheduler import LRScheduler

from ..modeling.atomic_io import atomic_write_text, replace_directory
from .arguments import check_output_folder
from .checkpoint_safety import UnsafeCheckpointError, refuse_unsafe_pickles

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
RUN_FILES = (MODEL_DIR, TOKENIZER_DIR, CHECKPOINTS_DIR, METRICS_FILE, CURVES_FILE, RESULTS_FILE, CARD_FILE)
LEGACY_SCHEDULER_FILE = "custom_checkpoint_0.pkl"  # where checkpoints before the JSON state kept the schedule
CHECKPOINT_NAME = re.compile(rf"{re.escape(CHECKPOINT_PREFIX)}(\d+)")

# Arguments a resume may change: when the run logs, evaluates, saves and ends, and how it reports. Changing any other
# would continue the checkpoint as a different model, on other data or with another recipe (which a resume also
# silently ignores where the optimizer and schedule states hold it: learning rate, betas, warmup).
RESUMABLE_CHANGES = {
    "max_steps", "logging_steps", "eval_steps", "save_steps", "save_total_limit", "average_last_checkpoints",
    "num_beams", "length_penalty", "eval_batch_size", "num_samples_to_show", "report_to", "output_dir",
    "resume_from_checkpoint", "overwrite_output_dir", "preprocessing_num_workers", "max_eval_samples",
    "max_test_samples",
}  # fmt: skip
# ... and these too, with a warning: they change the data order only (see `log_a_changed_data_order`).
DATA_ORDER_CHANGES = {"seed", "max_tokens", "gradient_accumulation_steps"}

# what reading a damaged checkpoint raises (safetensors, torch.load/pickle, torch.distributed.checkpoint, files)
CHECKPOINT_READ_ERRORS = (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError, CheckpointException)


# ---------------------------------------------------------------------------------------------------------------
# Finding checkpoints
# ---------------------------------------------------------------------------------------------------------------


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a checkpoint is complete once its state file exists)."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    found = [
        path
        for path in folder.glob(f"{CHECKPOINT_PREFIX}*")
        if CHECKPOINT_NAME.fullmatch(path.name) and (path / STATE_FILE).is_file()
    ]  # a copy such as `checkpoint-3-backup` is not one of the run's checkpoints
    return sorted(found, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The step of `checkpoints/checkpoint-N`: N."""
    return int(CHECKPOINT_NAME.fullmatch(checkpoint.name).group(1))


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


def resolve_resume(run_dir: Path, resume_from_checkpoint: str | None, overwrite: bool = False) -> Path | None:
    """The checkpoint to continue from, or None for a fresh run. A fresh run never lands on an earlier one by
    accident: a run with checkpoints, or a finished one, is refused unless `overwrite` (`--overwrite_output_dir`),
    which deletes it first; the leftovers of an attempt that saved no checkpoint are cleared with a warning."""
    run_dir = Path(run_dir)
    check_output_folder(run_dir, "--output_dir")
    existing = checkpoints(run_dir)
    if resume_from_checkpoint is None:
        if overwrite:
            remove_run(run_dir)
        elif existing or is_finished(run_dir):
            holds = f"a finished run ({MODEL_DIR}/, {RESULTS_FILE})" if is_finished(run_dir) else existing[-1].name
            raise ValueError(
                f"--output_dir {run_dir} already holds a run: {holds}. Continue it with --resume_from_checkpoint "
                f"latest, replace it with --overwrite_output_dir, or choose another --output_dir."
            )
        else:
            clear_an_attempt_without_checkpoints(run_dir)
        return None
    if resume_from_checkpoint == "latest":
        if not existing:
            raise ValueError(f"--resume_from_checkpoint latest: {run_dir / CHECKPOINTS_DIR} holds no checkpoint.")
        return existing[-1]
    path = Path(resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        hint = ""
        if checkpoints(path):  # a run folder
            hint = f" It is a run folder: pass --output_dir {path} --resume_from_checkpoint latest."
        elif (path / "config.json").is_file():
            hint = " It is a model folder: continue training a model with posformer-finetune --model_name_or_path."
        raise ValueError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {STATE_FILE}).{hint}")
    return path


def remove_run(run_dir: Path) -> None:
    """Delete what a run wrote into `run_dir` (only the names it writes; anything else there stays)."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def clear_an_attempt_without_checkpoints(run_dir: Path) -> None:
    """An earlier attempt that stopped before its first checkpoint left a metrics log (and a plot) that no resume
    can continue: clear them, saying so, so that the new run's log and curves are its own."""
    leftovers = [name for name in (METRICS_FILE, CURVES_FILE) if (Path(run_dir) / name).is_file()]
    if leftovers:
        logger.warning(
            f"{run_dir} holds {', '.join(leftovers)} of an earlier attempt that saved no checkpoint: starting over "
            "and replacing them."
        )
        for name in leftovers:
            (Path(run_dir) / name).unlink()


def model_source(path: str, option: str) -> str:
    """`path` unchanged when it can be a model for `from_pretrained`: a folder with a `config.json`, or a name that
    only the Hub can resolve (`org/name`). Otherwise a `FileNotFoundError` or `ValueError` naming `option`: a
    missing local path, a file, a run folder given for its model (`RUN/model` is named), a folder without a model."""
    folder = Path(path)
    if folder.is_dir():
        if (folder / "config.json").is_file():
            return path
        if (folder / MODEL_DIR / "config.json").is_file():
            raise ValueError(
                f"{option} {path} is a posformer-train run folder, not a model: pass its model, {folder / MODEL_DIR}."
            )
        if (folder / STATE_FILE).is_file():
            raise ValueError(
                f"{option} {path} is a training checkpoint, not a model: pass the run's {MODEL_DIR}/, or export the "
                f"checkpoint as a model with posformer-export RUN OUT_DIR --average_last 1."
            )
        raise FileNotFoundError(
            f"{option} {path} holds no config.json, so it is not a model folder (what save_pretrained writes)."
        )
    if folder.exists():
        raise ValueError(f"{option} {path} is a file; pass a model folder (what save_pretrained writes) or a Hub name.")
    if not _can_be_a_hub_name(path):
        raise FileNotFoundError(f"{option} {path}: no such folder (and not a Hub name such as 'org/name').")
    if hub_constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(path, "config.json"), str):
        raise FileNotFoundError(
            f"{option} {path}: no such folder, and not in the Hugging Face cache as a Hub name (HF_HUB_OFFLINE=1 "
            f"loads only from the cache). Pass a model folder, or download it once without HF_HUB_OFFLINE "
            f"(hf download {path})."
        )
    return path


def _can_be_a_hub_name(path: str) -> bool:
    """Whether `path` has the shape of a Hub repository id: `name` or `org/name`, no leading `.`, `/` or `~`."""
    return path.count("/") <= 1 and not path.startswith((".", "/", "~")) and "\\" not in path


# ---------------------------------------------------------------------------------------------------------------
# Saving and loading checkpoints
# ---------------------------------------------------------------------------------------------------------------


def save_checkpoint(accelerator: Accelerator, run_dir: Path, keep: int, step: int, **state: dict) -> Path:
    """An Accelerate state of `step` (model, optimizer, random states), written aside and renamed into place with
    its `trainer_state.json` (`{"step": step, **state}`: JSON values such as the data order, the schedule's
    `state_dict()` and the run's arguments); only the last `keep` complete checkpoints stay. A collective: every
    process calls it."""
    final = Path(run_dir) / CHECKPOINTS_DIR / f"{CHECKPOINT_PREFIX}{step}"
    staging = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps({"step": step, **state}))
        replace_directory(staging, final)  # a checkpoint of an abandoned continuation may hold the name
        for old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator, checkpoint: Path, run_dir: Path, scheduler: LRScheduler, arguments: dict
) -> dict:
    """Restore what `save_checkpoint` saved into the prepared objects and `scheduler`, and return its state
    (`step`, `data_order`, ...). First refuses `arguments` (the resumed run's) that differ from the checkpoint's
    beyond what a resume may change (`refuse_changed_arguments`). Reads no pickle that can run code
    (`UnsafeCheckpointError`); a damaged checkpoint is a `ValueError` that names an intact earlier one."""
    state = read_checkpoint_state(checkpoint, run_dir)
    if "arguments" in state:  # checkpoints from before the arguments were saved cannot be compared
        refuse_changed_arguments(checkpoint, state["arguments"], arguments)
    try:
        refuse_unsafe_pickles(checkpoint)
        # Accelerate skips a damaged random-state file (and would resume with other dropout masks): read it first
        load_accelerate_file(checkpoint / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl")
        if "scheduler" in state:
            accelerator.load_state(str(checkpoint))
            scheduler.load_state_dict(state["scheduler"])
        else:  # saved before the schedule moved into the JSON state: read it with weights_only=True (data only)
            with _view_without(checkpoint, LEGACY_SCHEDULER_FILE) as view:  # else Accelerate wants it registered
                accelerator.load_state(str(view))
            scheduler.load_state_dict(load_accelerate_file(checkpoint / LEGACY_SCHEDULER_FILE))
    except UnsafeCheckpointError as error:
        raise UnsafeCheckpointError(
            f"Cannot resume from {checkpoint}: {error} An earlier one: {_earlier_checkpoint(run_dir, checkpoint)}."
        ) from error
    except CHECKPOINT_READ_ERRORS as error:
        raise ValueError(
            f"Cannot resume from {checkpoint}: {checkpoint_error_reason(error)}. The checkpoint is damaged "
            f"(truncated, corrupt or incomplete). An earlier one: {_earlier_checkpoint(run_dir, checkpoint)}."
        ) from error
    return state


@contextmanager
def _view_without(folder: Path, name: str) -> Iterator[Path]:
    """A temporary folder of links to everything in `folder` but `name`."""
    with tempfile.TemporaryDirectory(prefix="posformer-checkpoint-") as view:
        for entry in folder.iterdir():
            if entry.name != name:
                (Path(view) / entry.name).symlink_to(entry.resolve())
        yield Path(view)


def read_checkpoint_state(checkpoint: Path, run_dir: Path) -> dict:
    """A checkpoint's `trainer_state.json`; `ValueError` naming it and an intact earlier checkpoint when it is not
    the JSON object with a `step` that `save_checkpoint` writes."""
    path = checkpoint / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError(f"it must be a JSON object with an integer 'step', got {str(state)[:80]!r}")
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"Cannot resume from {checkpoint}: {path} is damaged ({error}). An earlier one: "
            f"{_earlier_checkpoint(run_dir, checkpoint)}."
        ) from error
    return state


def _earlier_checkpoint(run_dir: Path, checkpoint: Path) -> str:
    """How to resume from the run's last checkpoint before `checkpoint` (any other, for a folder not named
    `checkpoint-N`), or that there is none."""
    named = CHECKPOINT_NAME.fullmatch(checkpoint.name)
    earlier = [
        path
        for path in checkpoints(run_dir)
        if path.resolve() != checkpoint.resolve() and (named is None or checkpoint_step(path) < int(named.group(1)))
    ]
    return f"--resume_from_checkpoint {earlier[-1]}" if earlier else "none is left; start a new run"


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


def refuse_changed_arguments(checkpoint: Path, saved: dict, now: dict) -> None:
    """`ValueError` listing every argument of this resume that differs from the checkpoint's run, other than
    `RESUMABLE_CHANGES` and `DATA_ORDER_CHANGES` (an argument that one side does not know is not compared)."""
    changed = sorted(
        name
        for name in saved.keys() & now.keys()
        if saved[name] != now[name] and name not in RESUMABLE_CHANGES | DATA_ORDER_CHANGES
    )
    if changed:
        differences = ", ".join(f"--{name} {saved[name]!r} -> {now[name]!r}" for name in changed)
        raise ValueError(
            f"Cannot resume from {checkpoint} with other arguments: {differences}. A resume continues the same "
            f"run; it would go on as another model, on other data or with another recipe. Pass the checkpoint's "
            f"values (or leave them out if they were the defaults), or start a new run in another --output_dir "
            f"(posformer-finetune continues training a finished model with new settings)."
        )


def keep_metrics_up_to(run_dir: Path, step: int) -> None:
    """Drop the metrics records after `step` (logged after the checkpoint a resume continues from, so the resumed
    run logs those steps again) and any line a kill left half-written; rewritten atomically."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


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
