"""Checkpoint averaging (Vaswani et al., 2017, section 6.1): the element-wise mean of the weights of a run's last
checkpoints, read from whatever the run saved (safetensors, FSDP's full or sharded state dicts).
"""

import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from accelerate.utils.constants import FSDP_MODEL_NAME
from safetensors.torch import load_file
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from transformers import PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_NAME

from .checkpoint_safety import DCP_METADATA_NAME, check_dcp_metadata
from .run_folder import CHECKPOINT_READ_ERRORS, checkpoint_error_reason

# what a checkpoint folder may hold, in this order: single process or DDP, FSDP sharded (the default), FSDP full
CHECKPOINT_WEIGHTS_NAMES = (SAFE_WEIGHTS_NAME, f"{FSDP_MODEL_NAME}_0", f"{FSDP_MODEL_NAME}.bin")


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
        f"Checkpoint weights do not exist: none of {tried}. Pass `{SAFE_WEIGHTS_NAME}` files or checkpoint folders."
    )


def _is_sharded_checkpoint(path: Path) -> bool:
    """Whether `path` is a `torch.distributed.checkpoint` folder (its `.metadata` file lists the shards)."""
    return (path / DCP_METADATA_NAME).is_file()


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


def _read_sharded_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Join the shards of a model that Accelerate saved under FSDP (`{"model": state_dict}` through
    `torch.distributed.checkpoint`) into full tensors: the metadata gives every tensor's size and dtype."""
    check_dcp_metadata(folder / DCP_METADATA_NAME)  # torch unpickles it without restriction
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


def load_average(model: PreTrainedModel, paths: list[Path]) -> bool:
    """Load the mean of the checkpoints at `paths` into `model`; return whether the weights stayed the same.

    Checkpoints store tied weights once: a tensor they lack must share its storage with one they hold.
    """
    average = average_checkpoints(paths)
    current = model.state_dict()
    unchanged = all(torch.equal(tensor, current[name]) for name, tensor in average.items() if name in current)
    missing, unexpected = model.load_state_dict(average, strict=False)
    loaded = {current[name].data_ptr() for name in average if name in current}
    untied = [name for name in missing if current[name].data_ptr() not in loaded]
    if unexpected or untied:
        raise ValueError(
            f"The checkpoints in {paths[0].parent} do not fit the model in {paths[0].parent.parent / 'model'}: "
            f"missing {untied[:5]}, unexpected {unexpected[:5]}."
        )
    return unchanged
