"""No file that a resume or an export reads can run code: the promise, and the one check that keeps it.

A checkpoint folder may come from someone else. Everything posformer reads from one is data, never a pickle that is
unpickled without restriction:

- weights: safetensors (`model.safetensors`);
- torch pickles (`optimizer.bin`, `random_states_N.pkl`, FSDP's full state dicts): Accelerate loads them with
  `torch.load(weights_only=True)`, whose unpickler resolves only tensors, plain containers and an allow-list (numpy
  arrays for the random states); `refuse_unsafe_pickles` loads each one that way first (memory-mapped, so tensors
  are not read), to name the file it refuses;
- the learning-rate schedule and the step: JSON in `trainer_state.json` (never Accelerate's custom-state pickle,
  `custom_checkpoint_N.pkl`, which it unpickles with `weights_only=False`);
- FSDP's sharded (`torch.distributed.checkpoint`) folders: their `.metadata` file is a plain pickle that torch
  unpickles without restriction, so it is first read with an unpickler that resolves only the checkpoint-metadata
  classes (`SAFE_METADATA_GLOBALS`), as the Python documentation's "Restricting Globals" shows.
"""

import io
import pickle
import re
from pathlib import Path

import torch
from accelerate.utils import load as load_accelerate_file

# Every global that torch.distributed.checkpoint's metadata pickles refer to (checked on torch 2.13).
SAFE_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "BytesStorageMetadata", "ChunkStorageMetadata", "Metadata", "MetadataIndex", "StorageMeta",
        "TensorProperties", "TensorStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip

DCP_METADATA_NAME = ".metadata"
TORCH_PICKLE_SUFFIXES = (".bin", ".pkl", ".pt", ".pth")


class UnsafeCheckpointError(ValueError):
    """A checkpoint file would need an unrestricted unpickling, which can run any code: it is not read."""


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only `SAFE_METADATA_GLOBALS` and torch's dtypes; any other global is refused before it is imported."""

    def find_class(self, module: str, name: str):
        if name in SAFE_METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which checkpoint metadata never holds")


def check_dcp_metadata(path: Path) -> None:
    """`UnsafeCheckpointError` naming `path` unless the `torch.distributed.checkpoint` metadata pickle there holds
    only checkpoint metadata (it is read here with the restricted unpickler, so nothing else is ever imported)."""
    try:
        _MetadataUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{path} is not read: {error}. A pickle like this one can run code when loaded, so it is refused. Use "
            f"a checkpoint you or posformer-train wrote, or one from a source you trust after checking it."
        ) from error


def check_torch_pickle(path: Path) -> None:
    """`UnsafeCheckpointError` naming `path` unless `torch.load(weights_only=True)` (with Accelerate's allow-list)
    accepts it. Memory-mapped where the file allows it, so the tensors themselves are not read."""
    try:
        try:
            load_accelerate_file(path, map_location="cpu", mmap=True)
        except RuntimeError as error:  # only torch.save's zip files can be memory-mapped; others are read whole
            if "mmap" not in str(error):
                raise
            load_accelerate_file(path, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{path} is not read: safe loading (torch.load with weights_only=True) refused it "
            f"({_weights_only_reason(error)}). It is damaged, or it holds objects beyond tensors and plain data, "
            "which could run code if unpickled."
        ) from error


def _weights_only_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's long weights-only message that says what was refused (not its advice to unpickle)."""
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
    return found.group(1).split(" was not an allowed global")[0].strip() if found else str(error).split("\n")[0]


def refuse_unsafe_pickles(folder: Path) -> None:
    """Check every pickle under `folder` (a checkpoint, with its FSDP shards) before anything else reads it: each
    `torch.distributed.checkpoint` metadata file with `check_dcp_metadata`, each torch pickle with
    `check_torch_pickle`. `UnsafeCheckpointError` names the first file refused."""
    for path in sorted(Path(folder).rglob("*")):
        if path.name == DCP_METADATA_NAME:
            check_dcp_metadata(path)
        elif path.suffix in TORCH_PICKLE_SUFFIXES and path.is_file():
            check_torch_pickle(path)
