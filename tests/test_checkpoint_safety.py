"""Resume and export read no pickle that can run code: planted pickles are refused (and never run), real ones load."""

import json
import pathlib
import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from conftest import FAST_RUN, TINY_RUN, toy_data_arguments
from posformer.training.checkpoint_averaging import average_checkpoints
from posformer.training.checkpoint_safety import UnsafeCheckpointError, check_dcp_metadata, check_torch_pickle
from posformer.training.run_folder import LEGACY_SCHEDULER_FILE, STATE_FILE
from posformer.training.train import main


class Planted:
    """A pickle that, once unpickled without restriction, creates the file `marker`: what an attacker's code does."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def plant_raw_pickle(path: pathlib.Path, marker: pathlib.Path) -> None:
    path.write_bytes(pickle.dumps({"state": Planted(marker)}))


def plant_torch_pickle(path: pathlib.Path, marker: pathlib.Path) -> None:
    torch.save({"state": Planted(marker)}, path)


@pytest.fixture()
def marker(tmp_path) -> pathlib.Path:
    return tmp_path / "the-planted-code-ran"


@pytest.mark.parametrize("plant", [plant_raw_pickle, plant_torch_pickle], ids=["raw-pickle", "torch-save"])
def test_a_planted_torch_pickle_is_refused_by_name_and_never_runs(tmp_path, marker, plant):
    path = tmp_path / "optimizer.bin"
    plant(path, marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch notes the raw pickle's protocol
        with pytest.raises(UnsafeCheckpointError, match=rf"{path} is not read: safe loading .* could run code"):
            check_torch_pickle(path)
    assert not marker.exists()


def test_what_posformer_train_saves_passes_the_pickle_check(tmp_path):
    """Tensors, optimizer states and Accelerate's random states (numpy arrays inside) are all data."""
    path = tmp_path / "random_states_0.pkl"
    torch.save({"numpy_random_seed": np.random.get_state(), "torch_manual_seed": torch.get_rng_state()}, path)
    check_torch_pickle(path)
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.bin")
    check_torch_pickle(tmp_path / "optimizer.bin")


def sharded_checkpoint(folder: pathlib.Path) -> pathlib.Path:
    """What Accelerate writes under FSDP's sharded state dict: a `torch.distributed.checkpoint` folder."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": {"weight": torch.randn(3, 4), "bias": torch.ones(2, dtype=torch.bfloat16)}},
                 checkpoint_id=folder, no_dist=True)  # fmt: skip
    return folder


def test_sharded_checkpoint_metadata_passes_and_a_planted_one_is_refused_before_torch_reads_it(tmp_path, marker):
    folder = sharded_checkpoint(tmp_path / "pytorch_model_fsdp_0")
    check_dcp_metadata(folder / ".metadata")
    assert set(average_checkpoints([folder])) == {"weight", "bias"}
    plant_raw_pickle(folder / ".metadata", marker)
    with pytest.raises(UnsafeCheckpointError, match=r"\.metadata is not read: it refers to pathlib\.Path\.touch"):
        average_checkpoints([folder])  # what posformer-export --average_last reads
    assert not marker.exists()


RUN = [*TINY_RUN, *FAST_RUN, "--max_steps", "2", "--save_steps", "2", "--eval_steps", "100"]


@pytest.fixture()
def run(tmp_path) -> tuple[list[str], pathlib.Path]:
    """A finished two-step run whose checkpoint-2 a resume to step 3 continues."""
    arguments = [*RUN, *toy_data_arguments(tmp_path), "--output_dir", str(tmp_path / "run")]
    main(arguments)
    return arguments, tmp_path / "run" / "checkpoints" / "checkpoint-2"


def resume(arguments: list[str]) -> dict:
    return main([*arguments, "--max_steps", "3", "--resume_from_checkpoint", "latest"])


def test_the_schedule_is_json_and_a_planted_custom_state_pickle_is_refused_unrun(run, marker):
    arguments, checkpoint = run
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["scheduler"]["last_epoch"] == 2 and not (checkpoint / LEGACY_SCHEDULER_FILE).exists()
    plant_torch_pickle(checkpoint / LEGACY_SCHEDULER_FILE, marker)  # Accelerate would unpickle it unrestricted
    with pytest.raises(UnsafeCheckpointError, match=rf"{LEGACY_SCHEDULER_FILE} is not read: .*could run code"):
        resume(arguments)
    assert not marker.exists()
    (checkpoint / LEGACY_SCHEDULER_FILE).unlink()
    assert resume(arguments)["step"] == 3


def test_a_checkpoint_from_before_the_json_schedule_resumes_and_a_planted_one_is_refused(run, marker):
    arguments, checkpoint = run
    state = json.loads((checkpoint / STATE_FILE).read_text())
    torch.save(state.pop("scheduler"), checkpoint / LEGACY_SCHEDULER_FILE)  # the old layout
    (checkpoint / STATE_FILE).write_text(json.dumps(state))
    assert resume(arguments)["step"] == 3
    plant_torch_pickle(checkpoint / LEGACY_SCHEDULER_FILE, marker)
    with pytest.raises(UnsafeCheckpointError, match=rf"Cannot resume from {checkpoint}: .*{LEGACY_SCHEDULER_FILE}"):
        main([*arguments, "--max_steps", "4", "--resume_from_checkpoint", str(checkpoint)])
    assert not marker.exists()


@pytest.mark.parametrize("name", ["random_states_0.pkl", "optimizer.bin", "pytorch_model.bin"])
def test_a_planted_state_file_is_refused_on_resume_and_never_runs(run, marker, name):
    arguments, checkpoint = run
    if name == "pytorch_model.bin":  # what Accelerate reads when there is no model.safetensors
        (checkpoint / "model.safetensors").unlink()
    plant_torch_pickle(checkpoint / name, marker)
    with pytest.raises(UnsafeCheckpointError, match=rf"Cannot resume from .*{name} is not read: .*could run code"):
        resume(arguments)
    assert not marker.exists()
