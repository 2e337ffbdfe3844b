"""PosformerConfig: Marian/BART field names, HF aliases, validation with messages that say what to change,
and every field read by the model."""

import pytest
import torch
from transformers import AutoConfig

from conftest import TINY, tiny_config
from posformer.configuration import PosformerConfig
from posformer.modeling import POSITION_ENCODINGS, PosformerForConditionalGeneration


def test_defaults_are_the_papers_base_model():
    config = PosformerConfig()
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (512, 6, 6)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.dropout) == (8, 2048, 0.1)
    assert config.position_encoding == "sinusoidal" and not config.normalize_before and config.scale_embedding
    assert config.activation_function == "relu" and config.tie_word_embeddings and config.is_encoder_decoder


def test_auto_config_and_aliases():
    config = AutoConfig.for_model("posformer", position_encoding="rope", d_model=256, encoder_layers=3)
    assert type(config) is PosformerConfig
    assert config.hidden_size == 256 and config.num_hidden_layers == 3 and config.num_attention_heads == 8
    config.hidden_size = 128
    assert config.d_model == 128
    assert PosformerConfig(hidden_size=64, num_attention_heads=4).d_model == 64


def test_decoder_text_config_has_decoder_depth():
    """The generation cache sizes itself from `get_text_config(decoder=True).num_hidden_layers`."""
    config = tiny_config(encoder_layers=3, decoder_layers=2)
    assert config.get_text_config(decoder=True).num_hidden_layers == 2


def test_round_trip_through_json(tmp_path):
    config = tiny_config("t5", t5_num_buckets=16, normalize_before=True)
    config.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert again.to_diff_dict() == config.to_diff_dict()
    assert again.t5_num_buckets == 16 and again.normalize_before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"position_encoding": "rotary"}, r"Unknown position_encoding='rotary'. Choose one of: "),
        ({"d_model": 30}, r"d_model=30 is not divisible by encoder_attention_heads=4"),
        ({"decoder_attention_heads": 5}, r"not divisible by decoder_attention_heads=5"),
        ({"encoder_layers": 0}, r"encoder_layers must be a positive integer, got 0"),
        ({"vocab_size": -1}, r"vocab_size must be a positive integer"),
        ({"max_position_embeddings": 0}, r"max_position_embeddings must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"attention_dropout": -0.1}, r"attention_dropout must be in \[0, 1\)"),
        ({"activation_function": "swishy"}, r"Unknown activation_function='swishy'. Choose one of: .*relu"),
        ({"position_encoding": "rope", "d_model": 24, "encoder_attention_heads": 8}, r"head size .* must be even"),
        ({"rope_theta": 0, "position_encoding": "rope"}, r"rope_theta must be positive"),
        ({"t5_num_buckets": 2, "position_encoding": "t5"}, r"t5_num_buckets must be at least 4"),
        ({"hadamard_gain": 1.0, "position_encoding": "hadamard"}, r"hadamard_gain must be in \[0, 1\)"),
        ({"shaw_max_distance": 0, "position_encoding": "shaw"}, r"shaw_max_distance must be a positive integer"),
        ({"t5_max_distance": 0, "position_encoding": "t5"}, r"t5_max_distance must be greater than t5_num_buckets"),
        ({"norm_type": "batch_norm"}, r"Unknown norm_type='batch_norm'. Choose one of: layer_norm, rms_norm"),
        ({"layer_norm_eps": 0.0}, r"layer_norm_eps must be positive"),
        ({"head_dim": 0}, r"head_dim must be a positive integer or None"),
        (
            {"decoder_vocab_size": 50},
            r"decoder_vocab_size=50 differs from vocab_size=.*share_encoder_decoder_embeddings",
        ),
        ({"share_encoder_decoder_embeddings": False, "decoder_vocab_size": 2}, r"eos_token_id=2 is outside the vocab"),
        ({"position_encoding": "rope", "head_dim": 5}, r"head size \(head_dim = 5\) must be even"),
        ({"layer_norm_eps": float("nan")}, r"layer_norm_eps must be a finite number"),
    ],
)
def test_invalid_values_raise_value_error_saying_what_to_change(overrides, message):
    with pytest.raises(ValueError, match=message):
        PosformerConfig(**{**TINY, **overrides})


def test_unknown_encoding_error_lists_every_registered_name():
    with pytest.raises(ValueError) as error:
        PosformerConfig(position_encoding="nope")
    for name in POSITION_ENCODINGS:
        assert name in str(error.value)


# Each field -> a different value that must change the model's output (or, for sizes, its parameters).
# A field the model does not read fails here.
FIELD_CHANGES = {
    "vocab_size": 101,
    "d_model": 48,
    "encoder_layers": 3,
    "decoder_layers": 3,
    "encoder_attention_heads": 8,
    "decoder_attention_heads": 8,
    "encoder_ffn_dim": 40,
    "decoder_ffn_dim": 40,
    "activation_function": "gelu",
    "scale_embedding": False,
    "normalize_before": True,
    "tie_word_embeddings": False,
    "init_std": 0.5,
    "norm_type": "rms_norm",
    "layer_norm_eps": 0.5,
    "layernorm_embedding": True,
    "head_dim": 4,
    "projection_bias": False,
    "scale_attention_scores": False,
    "gated_feed_forward": True,
    "final_logits_bias": True,
    "scale_decoder_output": True,
    "share_encoder_decoder_embeddings": False,
}
ENCODING_FIELD_CHANGES = {
    "shaw_max_distance": ("shaw", 1),
    "t5_num_buckets": ("t5", 4),
    "t5_max_distance": ("t5", 5),
    "rope_theta": ("rope", 10.0),
    "hadamard_gain": ("hadamard", 0.9),
    "max_position_embeddings": ("learned", 12),
}


def _fingerprint(config: PosformerConfig, train: bool = False) -> torch.Tensor:
    torch.manual_seed(0)
    model = PosformerForConditionalGeneration(config).train(train)
    with torch.no_grad():  # zero-initialised parameters would hide some fields
        for tensor in [*model.parameters(), *model.buffers()]:  # the buffers: `final_logits_bias`
            tensor.add_(0.01 * torch.randn_like(tensor))
    torch.manual_seed(1)
    src = torch.randint(4, 99, (2, 11))
    tgt = torch.randint(4, 99, (2, 9))
    torch.manual_seed(2)
    out = model(input_ids=src, decoder_input_ids=tgt, labels=tgt)
    parameters = sum(p.numel() for p in model.parameters())
    return torch.cat([out.logits.flatten()[:50], out.loss[None], torch.tensor([float(parameters)])])


@pytest.mark.parametrize("field", sorted(FIELD_CHANGES))
def test_every_model_field_is_read(field):
    base = tiny_config()
    assert not torch.equal(_fingerprint(base), _fingerprint(tiny_config(**{field: FIELD_CHANGES[field]})))


@pytest.mark.parametrize("field", sorted(ENCODING_FIELD_CHANGES))
def test_every_encoding_field_is_read(field):
    encoding, value = ENCODING_FIELD_CHANGES[field]
    base = tiny_config(encoding)
    assert not torch.equal(_fingerprint(base), _fingerprint(tiny_config(encoding, **{field: value})))


@pytest.mark.parametrize("field", ["dropout", "attention_dropout", "activation_dropout"])
def test_every_regularisation_field_is_read_in_training(field):
    base = tiny_config()
    changed = tiny_config(**{field: 0.3})
    assert not torch.equal(_fingerprint(base, train=True), _fingerprint(changed, train=True))
