"""Shared fixtures: tiny configurations keep the fast suite fast."""

import json
import logging
import os
import socket
import traceback
from importlib import metadata
from pathlib import Path

import pytest
import torch
from transformers.utils import logging as transformers_logging

import posformer.modeling  # noqa: F401  (registers the Auto classes)
from posformer.configuration import PosformerConfig

REPORTED_PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "huggingface_hub", "evaluate")


# marks of transformers' own test files (`transformers_suite.py`), which its conftest would register
TRANSFORMERS_MARKS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "torch_compile_test",
)


def pytest_configure(config) -> None:
    for mark in TRANSFORMERS_MARKS:
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' own test suite")
    share_the_cores_between_workers()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `longest` first: under `pytest -n N` a worker starts on each at once and the others share the
    rest, instead of one of them starting last and running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)  # stable: the rest keep their order


def share_the_cores_between_workers() -> None:
    """Under `pytest -n N` (pytest-xdist), each worker's torch, and the subprocesses its tests start, use the
    machine's cores divided by N: N workers with every core each would spend their time switching threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def free_port() -> int:
    """A TCP port no process listens on now, for one `accelerate launch` (its default, 29500, is shared by every
    launch on the machine, so two tests launching at once under pytest-xdist would meet there)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pytest_terminal_summary(terminalreporter) -> None:
    """The releases the suite ran on, above pytest's closing line even under `-q` (CI runs it on the newest and on
    the floor versions)."""
    releases = ", ".join(f"{name} {metadata.version(name)}" for name in REPORTED_PACKAGES)
    terminalreporter.write_line(f"posformer tested on: {releases}")


def siblings(path):
    """Everything next to `path` besides `path` itself: leftovers of an atomic write would show up here."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


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


def enable_activation_checkpointing(model: torch.nn.Module, **checkpoint_kwargs) -> None:
    """Gradient checkpointing on every layer (`checkpoint_kwargs` go to `torch.utils.checkpoint`):
    `activation_checkpointing_enable` from transformers 5.23 on (which deprecates `gradient_checkpointing_enable`),
    `gradient_checkpointing_enable` before."""
    checkpoint_kwargs = checkpoint_kwargs or None  # None: transformers' default (use_reentrant=False)
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class _DeprecationRecords(logging.Handler):
    """Collects what transformers logs as deprecated (it logs some deprecations instead of warning, e.g. the
    `past_key_values` names of its outputs from 5.24 on)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "deprecat" in record.getMessage().lower() and not called_by_transformers_itself():
            self.messages.append(record.getMessage())


# transformers modules that call its own deprecated API, whoever calls them: 5.24's assisted decoding passes the
# assistant's `generate` a `generation_config` together with generation arguments, which `generate` logs as
# deprecated (for Marian as for posformer).
TRANSFORMERS_OWN_CALLERS = ("transformers/generation/candidate_generator.py",)


def called_by_transformers_itself() -> bool:
    return any(
        frame.filename.replace("\\", "/").endswith(TRANSFORMERS_OWN_CALLERS) for frame in traceback.extract_stack()
    )


@pytest.fixture(autouse=True)
def fail_on_logged_deprecations():
    """A deprecation that transformers logs during a test fails it, as pyproject's `filterwarnings` fails one that
    it warns about. (transformers logs each message once per process: the first test that causes it fails.)"""
    records = _DeprecationRecords()
    library_logger = transformers_logging.get_logger("transformers")
    library_logger.addHandler(records)
    try:
        yield
    finally:
        library_logger.removeHandler(records)
    assert not records.messages, f"transformers logged a deprecation: {records.messages}"


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
