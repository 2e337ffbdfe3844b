"""Shared fixtures: tiny configurations keep the fast suite fast."""

import pytest
import torch

import posformer.modeling  # noqa: F401  (registers the Auto classes)
from posformer.configuration import PosformerConfig

TINY = dict(
    vocab_size=99,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=48,
    decoder_ffn_dim=48,
    max_position_embeddings=64,
    dropout=0.0,
    shaw_max_distance=4,
    t5_num_buckets=8,
    t5_max_distance=20,
)


def tiny_config(position_encoding: str = "sinusoidal", **overrides) -> PosformerConfig:
    """A 2+2-layer, width-32 config; `overrides` replace any field."""
    return PosformerConfig(**{**TINY, "position_encoding": position_encoding, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
