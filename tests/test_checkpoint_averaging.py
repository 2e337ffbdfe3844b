"""Checkpoint averaging: the mean of what a run saved, in every format Accelerate writes, and clear errors for
missing, damaged or mismatched checkpoints."""

import re

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file

from conftest import tiny_config
from posformer.modeling import PosformerForConditionalGeneration
from posformer.training.checkpoint_averaging import average_checkpoints


def tiny_model(seed: int = 0) -> PosformerForConditionalGeneration:
    torch.manual_seed(seed)
    return PosformerForConditionalGeneration(tiny_config()).eval()


def test_average_of_two_checkpoints_is_their_mean_and_reloads(tmp_path):
    tiny_model(seed=1).save_pretrained(tmp_path / "a")
    tiny_model(seed=2).save_pretrained(tmp_path / "b")
    first, second = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")

    averaged = average_checkpoints([tmp_path / "a", tmp_path / "b" / "model.safetensors"])  # a folder and a file

    assert averaged.keys() == first.keys()
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (first[name] + second[name]) / 2)
    model = tiny_model(seed=3)
    result = model.load_state_dict(averaged, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= set(model.state_dict()) - set(first)  # only weights tied to a saved one
    for name, tensor in model.state_dict().items():
        if name in averaged:
            torch.testing.assert_close(tensor, averaged[name])
    torch.testing.assert_close(model.lm_head.weight, averaged["model.shared.weight"])


def test_average_keeps_each_tensor_dtype_and_sums_in_float32(tmp_path):
    half = torch.tensor([1.0, 2.0**-8], dtype=torch.bfloat16)
    save_file({"w": half, "n": torch.tensor([2, 4])}, tmp_path / "a.safetensors")
    save_file({"w": torch.zeros(2, dtype=torch.bfloat16), "n": torch.tensor([4, 8])}, tmp_path / "b.safetensors")
    averaged = average_checkpoints([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert averaged["w"].dtype == torch.bfloat16 and averaged["n"].dtype == torch.int64
    torch.testing.assert_close(averaged["w"], half / 2)
    torch.testing.assert_close(averaged["n"], torch.tensor([3, 6]))


def save_like_accelerate_under_fsdp(state: dict[str, torch.Tensor], folder, sharded: bool) -> None:
    """The model files of Accelerate's `save_state` under FSDP: `torch.distributed.checkpoint` shards of
    `{"model": state}` (SHARDED_STATE_DICT, the default) or one `torch.save` file (FULL_STATE_DICT)."""
    folder.mkdir()
    if sharded:
        writer = dcp.FileSystemWriter(folder / "pytorch_model_fsdp_0")
        dcp.save({"model": state}, storage_writer=writer, no_dist=True)
    else:
        torch.save(state, folder / "pytorch_model_fsdp.bin")


def test_average_reads_the_checkpoints_accelerate_writes_under_fsdp(tmp_path):
    first, second = tiny_model(seed=1).state_dict(), tiny_model(seed=2).state_dict()
    save_like_accelerate_under_fsdp(first, tmp_path / "sharded", sharded=True)
    save_like_accelerate_under_fsdp(second, tmp_path / "full", sharded=False)
    averaged = average_checkpoints([tmp_path / "sharded", tmp_path / "full"])
    assert averaged.keys() == first.keys()  # the FSDP files keep tied weights under every name
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (first[name] + second[name]) / 2)
    model = tiny_model(seed=3)
    model.load_state_dict(averaged)
    torch.testing.assert_close(model.lm_head.weight, averaged["model.shared.weight"])


def test_average_names_a_damaged_sharded_checkpoint(tmp_path):
    save_like_accelerate_under_fsdp(tiny_model().state_dict(), tmp_path / "a", sharded=True)
    (shard,) = (tmp_path / "a" / "pytorch_model_fsdp_0").glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "a" / "pytorch_model_fsdp_0")) + ".*corrupt"):
        average_checkpoints([tmp_path / "a"])


def test_average_names_a_missing_checkpoint(tmp_path):
    tiny_model().save_pretrained(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty" / "model.safetensors"))):
        average_checkpoints([tmp_path / "a", tmp_path / "empty"])


def test_average_names_a_truncated_checkpoint(tmp_path):
    for name in ("a", "b"):
        tiny_model().save_pretrained(tmp_path / name)
    weights = tmp_path / "b" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(str(weights)) + ".*truncated or corrupt"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"])


@pytest.mark.parametrize(
    ("other", "message"),
    [({"w": torch.zeros(2), "extra": torch.zeros(1)}, "unexpected \\['extra'\\]"), ({"w": torch.zeros(3)}, "shape")],
)
def test_average_refuses_checkpoints_of_different_models(tmp_path, other, message):
    save_file({"w": torch.zeros(2)}, tmp_path / "a.safetensors")
    save_file(other, tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "b.safetensors")) + ".*" + message):
        average_checkpoints([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])


def test_average_needs_a_checkpoint():
    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints([])
