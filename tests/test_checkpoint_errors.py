"""A checkpoint folder with missing or damaged weights gives a clear error naming the file."""

import pytest
from transformers import AutoModelForSeq2SeqLM

from conftest import tiny_config
from posformer.modeling import PosformerForConditionalGeneration


@pytest.fixture()
def checkpoint(tmp_path):
    PosformerForConditionalGeneration(tiny_config("alibi")).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_truncated_weights_name_the_file(checkpoint):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(OSError, match=f"Cannot read the weights in {weights}: the file is truncated or corrupt"):
        AutoModelForSeq2SeqLM.from_pretrained(checkpoint)


def test_garbage_weights_name_the_file(checkpoint):
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(b"not a safetensors file at all")
    with pytest.raises(OSError, match=f"Cannot read the weights in {weights}"):
        AutoModelForSeq2SeqLM.from_pretrained(checkpoint)


def test_missing_weights_name_the_file(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(OSError, match=f"no file named model.safetensors.*{checkpoint}"):
        AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
