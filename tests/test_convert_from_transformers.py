"""`convert_from_transformers` gives a posformer model that computes what transformers' own model computes.

Oracle: transformers' `MarianMTModel`, `BartForConditionalGeneration`, `MBartForConditionalGeneration`,
`T5ForConditionalGeneration` (v1.0: ReLU, tied and rescaled head; v1.1: gated-GELU, untied head, heads narrower than
d_model / heads) and `MT5ForConditionalGeneration`, randomly initialised at unusual sizes (3 or 5 heads, encoder and
decoder depths that differ) with every weight moved far from its init, so that a weight mapped to the wrong place, an
option left out or a norm of the wrong kind changes the outputs. The peer runs eagerly; posformer eagerly and on sdpa.
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    BartConfig,
    BartForConditionalGeneration,
    BartModel,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    MT5Config,
    MT5ForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from posformer.configuration.transformers_compat import CACHE_NAME
from posformer.modeling import PosformerForConditionalGeneration, from_transformers
from posformer.modeling.from_transformers import UnsupportedModelError, convert_from_transformers

VOCAB = 97
BART_SIZES = dict(
    vocab_size=VOCAB, d_model=36, encoder_layers=3, decoder_layers=2, encoder_attention_heads=3,
    decoder_attention_heads=3, encoder_ffn_dim=50, decoder_ffn_dim=46, max_position_embeddings=40, dropout=0.0,
    attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    decoder_start_token_id=2,
)  # fmt: skip
T5_SIZES = dict(
    vocab_size=VOCAB, d_model=30, d_kv=10, num_heads=3, num_layers=3, num_decoder_layers=2, d_ff=44,
    relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0, pad_token_id=0,
    eos_token_id=1, decoder_start_token_id=0,
)  # fmt: skip
PEERS = {
    "marian": lambda: MarianMTModel(MarianConfig(
        **{**BART_SIZES, "pad_token_id": VOCAB - 1, "decoder_start_token_id": VOCAB - 1, "eos_token_id": 0,
           "bos_token_id": None, "d_model": 40, "encoder_attention_heads": 5, "decoder_attention_heads": 5},
        activation_function="swish", scale_embedding=True)),
    "marian-separate-vocabularies": lambda: MarianMTModel(MarianConfig(
        **{**BART_SIZES, "pad_token_id": VOCAB - 1, "decoder_start_token_id": VOCAB - 1, "eos_token_id": 0,
           "bos_token_id": None}, share_encoder_decoder_embeddings=False, decoder_vocab_size=VOCAB + 13,
        activation_function="gelu", scale_embedding=True)),
    "bart": lambda: BartForConditionalGeneration(BartConfig(**BART_SIZES, activation_function="gelu")),
    "mbart": lambda: MBartForConditionalGeneration(MBartConfig(**BART_SIZES, scale_embedding=True)),
    "t5-v1.0": lambda: T5ForConditionalGeneration(T5Config(**T5_SIZES, feed_forward_proj="relu")),
    "t5-v1.1": lambda: T5ForConditionalGeneration(T5Config(
        **{**T5_SIZES, "d_kv": 8}, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "mt5": lambda: MT5ForConditionalGeneration(MT5Config(
        **{**T5_SIZES, "d_kv": 8}, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
}  # fmt: skip
FAMILIES = sorted(PEERS)


def randomize_(model: torch.nn.Module) -> None:
    """Every parameter and buffer (the logits bias, BART's position table) far from its init: norms' weights near 1,
    everything else N(0, 0.2)."""
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            if "norm" in name and name.endswith("weight"):
                tensor.copy_(1 + 0.2 * torch.randn_like(tensor))
            elif "embed_positions" not in name or not isinstance(model, MarianMTModel):  # Marian's sinusoids stay
                tensor.copy_(0.2 * torch.randn_like(tensor))


UNTIED = ("t5-v1.1", "mt5")  # transformers ties T5's head when it builds one; released v1.1 checkpoints store theirs


def peer(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = PEERS[family]()
    model.set_attn_implementation("eager")  # T5's stacks hold copies of its config
    if family in UNTIED:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    randomize_(model)
    model.generation_config.forced_eos_token_id = None  # not a default of every family; the same either way
    return model.eval()


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request) -> tuple[torch.nn.Module, PosformerForConditionalGeneration]:
    """(transformers' model, its conversion)."""
    source = peer(request.param)
    return source, convert_from_transformers(source)


def padded_batch(padding_side: str) -> dict[str, torch.Tensor]:
    """Three sources (two padded, on `padding_side`) and decoder inputs starting with the start token."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB - 1, (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row, pads in ((1, 4), (2, 1)):
        if padding_side == "right":
            attention_mask[row, -pads:] = 0
        else:
            attention_mask[row, :pads] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def decoder_inputs(model: torch.nn.Module, length: int = 7) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(3, VOCAB - 1, (3, length), generator=generator)
    ids[:, 0] = model.config.decoder_start_token_id
    return ids


def logits(model: torch.nn.Module, batch: dict, decoder_input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, decoder_input_ids=decoder_input_ids).logits


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_logits_equal_transformers_model(pair, backend, padding_side):
    source, converted = pair
    converted.config._attn_implementation = backend
    batch, targets = padded_batch(padding_side), decoder_inputs(source)
    expected = logits(source, batch, targets)
    assert expected.abs().max() > 0.5  # the outputs depend on the weights
    torch.testing.assert_close(logits(converted, batch, targets), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("generation", [{"num_beams": 1}, {"num_beams": 3}], ids=["greedy", "beam3"])
def test_cached_generation_equals_transformers_model(pair, generation):
    source, converted = pair
    batch = padded_batch("right")
    options = {**generation, "max_new_tokens": 8, "output_scores": True, "return_dict_in_generate": True}
    expected, actual = source.generate(**batch, **options), converted.generate(**batch, **options)
    assert torch.equal(actual.sequences, expected.sequences)
    torch.testing.assert_close(torch.stack(actual.scores), torch.stack(expected.scores), atol=1e-4, rtol=1e-5)


def test_cached_step_logits_equal_transformers_full_forward(pair):
    source, converted = pair
    batch, targets = padded_batch("right"), decoder_inputs(source)
    expected = logits(source, batch, targets)
    with torch.no_grad():
        encoder_outputs = converted.get_encoder()(**batch)
        cache, steps = None, []
        for step in range(targets.shape[1]):
            output = converted(
                attention_mask=batch["attention_mask"], encoder_outputs=encoder_outputs,
                decoder_input_ids=targets[:, step : step + 1], use_cache=True, **{CACHE_NAME: cache},
            )  # fmt: skip
            cache = getattr(output, CACHE_NAME)
            steps.append(output.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), expected, atol=1e-5, rtol=1e-5)


LOAD_WITHOUT_POSFORMER = """
import sys
from pathlib import Path
sys.modules["posformer"] = None  # posformer is not installed here
import torch
from transformers import AutoModelForSeq2SeqLM
for folder in sorted(Path(sys.argv[1]).iterdir()):  # one converted family per folder, loaded as remote code
    data = torch.load(folder / "inputs.pt")
    model = AutoModelForSeq2SeqLM.from_pretrained(folder / "model", trust_remote_code=True).eval()
    with torch.no_grad():
        torch.save(model(**data["batch"], decoder_input_ids=data["targets"]).logits, folder / "out.pt")
"""


@pytest.fixture(scope="module")
def saved_families(tmp_path_factory) -> Path:
    """Every family converted and saved (`FAMILY/model`), with a batch (`FAMILY/inputs.pt`), the peer's logits on it
    (`FAMILY/expected.pt`) and, from one Python in which posformer cannot be imported, the logits of the saved copy
    loaded as remote code (`FAMILY/out.pt`)."""
    root = tmp_path_factory.mktemp("families")
    for family in FAMILIES:
        source, folder = peer(family), root / family
        batch, targets = padded_batch("left"), decoder_inputs(source)
        convert_from_transformers(source).save_pretrained(folder / "model")
        torch.save({"batch": batch, "targets": targets}, folder / "inputs.pt")
        torch.save(logits(source, batch, targets), folder / "expected.pt")
    script = root.parent / f"{root.name}-load.py"
    script.write_text(LOAD_WITHOUT_POSFORMER)
    environment = {**os.environ, "HF_MODULES_CACHE": str(root.parent / f"{root.name}-modules"), "PYTHONPATH": ""}
    completed = subprocess.run(
        [sys.executable, str(script), str(root)], cwd=root.parent, env=environment, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return root


@pytest.mark.parametrize("family", FAMILIES)
def test_save_reload_and_a_copy_loaded_without_posformer_compute_the_same(saved_families, family):
    folder = saved_families / family
    data, expected = torch.load(folder / "inputs.pt"), torch.load(folder / "expected.pt")
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder / "model").eval()
    assert isinstance(reloaded, PosformerForConditionalGeneration)
    torch.testing.assert_close(logits(reloaded, data["batch"], data["targets"]), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.load(folder / "out.pt"), expected, atol=1e-5, rtol=1e-5)


def test_each_family_maps_onto_its_options():
    """What the docs table says each family is."""
    options = {family: convert_from_transformers(peer(family)).config for family in FAMILIES}
    assert options["marian"].position_encoding == "sinusoidal" and options["marian"].final_logits_bias
    assert not options["marian"].layernorm_embedding and not options["marian"].normalize_before
    separate = options["marian-separate-vocabularies"]
    assert not separate.share_encoder_decoder_embeddings and separate.target_vocab_size() == VOCAB + 13
    assert options["bart"].position_encoding == "learned" and options["bart"].layernorm_embedding
    assert options["bart"].max_position_embeddings == 40  # BART's 42-row table without its 2 offset rows
    assert options["mbart"].normalize_before and options["mbart"].norm_type == "layer_norm"
    for family in ("t5-v1.0", "t5-v1.1", "mt5"):
        config = options[family]
        assert (config.position_encoding, config.norm_type, config.normalize_before) == ("t5", "rms_norm", True)
        assert not config.projection_bias and not config.scale_attention_scores and config.layer_norm_eps == 1e-6
    assert options["t5-v1.0"].tie_word_embeddings and options["t5-v1.0"].scale_decoder_output
    assert options["t5-v1.0"].head_dim is None and not options["t5-v1.0"].gated_feed_forward
    v11 = options["t5-v1.1"]
    assert not v11.tie_word_embeddings and not v11.scale_decoder_output
    assert v11.head_dim == 8 and v11.gated_feed_forward and v11.activation_function == "gelu_new"


def test_a_conversion_that_would_not_compute_the_same_is_refused(monkeypatch):
    """The conversion checks itself: a lost option (here T5 v1.0's rescaled head) is an error, not a wrong model."""
    t5 = from_transformers.FAMILIES["t5"]
    losing = dataclasses.replace(t5, config=lambda source: {**t5.config(source), "scale_decoder_output": False})
    monkeypatch.setitem(from_transformers.FAMILIES, "t5", losing)
    with pytest.raises(UnsupportedModelError, match="does not compute what T5ForConditionalGeneration does"):
        convert_from_transformers(peer("t5-v1.0"))


def test_unsupported_models_and_options_are_refused_naming_them():
    with pytest.raises(UnsupportedModelError, match="got BartModel .* AutoModelForSeq2SeqLM"):
        convert_from_transformers(BartModel(BartConfig(**BART_SIZES)))
    with pytest.raises(UnsupportedModelError, match="encoder_layerdrop=0.1: posformer has no layer drop"):
        convert_from_transformers(BartForConditionalGeneration(BartConfig(**BART_SIZES, encoder_layerdrop=0.1)))


def test_the_conversion_keeps_dtype_and_generation_config():
    source = peer("bart").to(torch.bfloat16)
    source.generation_config.num_beams = 5
    converted = convert_from_transformers(source)
    assert next(converted.parameters()).dtype == torch.bfloat16
    assert converted.generation_config.num_beams == 5 and converted.generation_config is not source.generation_config


def test_the_converted_model_is_complete_and_its_head_tied():
    converted = convert_from_transformers(peer("marian"))
    assert all(parameter.device.type != "meta" for parameter in converted.parameters())
    assert converted.lm_head.weight is converted.model.shared.weight


def test_a_start_token_only_in_the_generation_config_is_taken_and_none_at_all_is_refused():
    source = peer("t5-v1.0")
    source.config.decoder_start_token_id = None
    assert convert_from_transformers(source).config.decoder_start_token_id == 0  # the generation config's
    source.generation_config.decoder_start_token_id = None
    with pytest.raises(UnsupportedModelError, match="names no decoder_start_token_id"):
        convert_from_transformers(source)
