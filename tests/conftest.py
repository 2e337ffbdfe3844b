"""Shared fixtures: tiny configurations keep the fast suite fast."""

import json
from pathlib import Path

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


# A training run in about a second: `posformer.training.train.main([*TINY_RUN, *FAST_RUN, ...])`.
TINY_RUN = [
    "--model_size", "tiny", "--d_model", "32", "--encoder_ffn_dim", "64", "--decoder_ffn_dim", "64",
    "--encoder_layers", "1", "--decoder_layers", "1",
]  # fmt: skip
FAST_RUN = [
    "--tokenizer_vocab_size", "300", "--max_tokens", "512", "--warmup_steps", "4", "--learning_rate", "3e-3",
    "--logging_steps", "1", "--max_eval_samples", "8", "--max_test_samples", "8", "--eval_batch_size", "8",
    "--num_beams", "2", "--report_to", "none", "--num_samples_to_show", "2",
]  # fmt: skip


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def toy_pairs(count: int, offset: int = 0) -> list[dict]:
    """`count` English-German pairs in the datasets translation format, built from a ten-word dictionary."""
    words = ["file", "open", "save", "close", "print", "copy", "delete", "folder", "name", "error"]
    german = ["Datei", "öffnen", "speichern", "schließen", "drucken", "kopieren", "löschen", "Ordner", "Name", "Fehler"]
    rows = []
    for i in range(offset, offset + count):
        picks = [(i * 7 + k * 3) % len(words) for k in range(2 + i % 4)]
        english, translated = " ".join(words[p] for p in picks), " ".join(german[p] for p in picks)
        rows.append({"translation": {"en": english, "de": translated}})
    return rows


def toy_data_arguments(folder: Path) -> list[str]:
    """`--train_file/--validation_file/--test_file` arguments for toy files written into `folder`."""
    return [
        "--train_file", write_jsonl(folder / "train.jsonl", toy_pairs(200)),
        "--validation_file", write_jsonl(folder / "validation.jsonl", toy_pairs(10, 500)),
        "--test_file", write_jsonl(folder / "test.jsonl", toy_pairs(10, 900)),
    ]  # fmt: skip
