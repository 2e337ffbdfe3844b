"""Attention maps: eager weights of every layer and head for any encoding, and one PNG with a panel per layer x head."""

import subprocess
import sys

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from conftest import tiny_config
from posformer.modeling import POSITION_ENCODINGS, PosformerForConditionalGeneration
from posformer.training.attention_maps import ATTENTION_KINDS, attention_figure, attention_maps, plot_attention_maps
from posformer.training.data import train_bpe_tokenizer

SOURCE = "The file could not be opened because of an error."
TARGET = "Die Datei konnte nicht geöffnet werden."
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer([SOURCE, TARGET] * 10, 120)


def tiny_model(tokenizer, position_encoding: str = "sinusoidal") -> PosformerForConditionalGeneration:
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    ids.update(eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.bos_token_id)
    return PosformerForConditionalGeneration(tiny_config(position_encoding, vocab_size=len(tokenizer), **ids))


@pytest.mark.parametrize("position_encoding", list(POSITION_ENCODINGS))
def test_maps_have_one_distribution_per_layer_head_and_query(tokenizer, position_encoding):
    model = tiny_model(tokenizer, position_encoding)
    maps = attention_maps(model, tokenizer, SOURCE, TARGET)
    source, target = len(maps["source_tokens"]), len(maps["target_tokens"])
    assert maps["source_tokens"][-1] == "</s>" and maps["target_tokens"][0] == "<s>" and source == 11
    assert maps["encoder_self"].shape == (2, 4, source, source)
    assert maps["decoder_self"].shape == (2, 4, target, target)
    assert maps["cross"].shape == (2, 4, target, source)
    for kind in ATTENTION_KINDS:
        torch.testing.assert_close(maps[kind].sum(-1), torch.ones(maps[kind].shape[:-1]))
    assert torch.all(maps["decoder_self"].triu(diagonal=1) == 0)  # causal
    assert model.config._attn_implementation == "sdpa" and model.training  # restored


def test_maps_equal_a_direct_eager_forward(tokenizer):
    model = tiny_model(tokenizer, "rope").eval()
    maps = attention_maps(model, tokenizer, SOURCE, TARGET)
    model.set_attn_implementation("eager")
    input_ids = tokenizer(SOURCE, return_tensors="pt")["input_ids"]
    decoder_ids = tokenizer.convert_tokens_to_ids(maps["target_tokens"])
    outputs = model(input_ids=input_ids, decoder_input_ids=torch.tensor([decoder_ids]), output_attentions=True)
    expected = {
        "encoder_self": outputs.encoder_attentions,
        "decoder_self": outputs.decoder_attentions,
        "cross": outputs.cross_attentions,
    }
    for kind, per_layer in expected.items():
        torch.testing.assert_close(maps[kind], torch.stack([weights[0] for weights in per_layer]), rtol=0, atol=0)


def test_without_a_target_the_decoder_reads_the_greedy_translation(tokenizer):
    model = tiny_model(tokenizer, "shaw").eval()
    maps = attention_maps(model, tokenizer, SOURCE, max_new_tokens=5)
    input_ids = tokenizer(SOURCE, return_tensors="pt")["input_ids"]
    greedy = model.generate(input_ids=input_ids, num_beams=1, do_sample=False, max_new_tokens=5)
    assert maps["target_tokens"] == tokenizer.convert_ids_to_tokens(greedy[0].tolist())
    assert maps["decoder_self"].shape[-1] == maps["cross"].shape[-2] == greedy.shape[1]


def test_figure_has_one_titled_heatmap_per_layer_and_head_in_each_section(tokenizer):
    maps = attention_maps(tiny_model(tokenizer, "t5"), tokenizer, SOURCE, TARGET)
    maps["decoder_self"], maps["cross"] = maps["decoder_self"][:1], maps["cross"][:1]  # grids differ: 1 x 4
    figure = attention_figure(maps)
    assert len(figure.subfigs) == 3
    for section, kind in zip(figure.subfigs, ATTENTION_KINDS, strict=True):
        heatmaps = [axes for axes in section.axes if axes.images]
        layers, heads = maps[kind].shape[:2]
        assert len(heatmaps) == layers * heads
        assert {axes.get_title() for axes in heatmaps} == {
            f"layer {layer + 1}, head {head + 1}" for layer in range(layers) for head in range(heads)
        }
        assert section.get_suptitle() == ATTENTION_KINDS[kind][0]
        assert len(section.axes) == layers * heads + 1  # and one colour bar
        _, query_key, key_key = ATTENTION_KINDS[kind]
        bottom_left = heatmaps[(layers - 1) * heads]
        assert [label.get_text() for label in bottom_left.get_xticklabels()] == maps[key_key]
        assert [label.get_text() for label in bottom_left.get_yticklabels()] == maps[query_key]


def test_plot_writes_a_png_atomically(tokenizer, tmp_path):
    maps = attention_maps(tiny_model(tokenizer), tokenizer, SOURCE, TARGET)
    out = plot_attention_maps(maps, tmp_path / "plots" / "maps.png")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert [path.name for path in out.parent.iterdir()] == ["maps.png"]


def test_cli_runs_as_a_module_on_a_saved_model(tokenizer, tmp_path):
    model_dir = tmp_path / "model"
    tiny_model(tokenizer, "alibi").save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "maps.png"
    command = [sys.executable, "-m", "posformer.training.attention_maps", str(model_dir), SOURCE, "--out", str(out)]
    completed = subprocess.run([*command, "--target", TARGET], capture_output=True, text=True, check=True)
    assert "▁Datei" in completed.stderr and out.read_bytes()[:8] == PNG_SIGNATURE
