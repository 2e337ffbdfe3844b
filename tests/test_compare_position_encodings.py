"""benchmarks/compare_position_encodings.py: the long-input builder, and the whole study at tiny sizes (no quality
asserts)."""

import csv
import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "compare_position_encodings.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("compare_position_encodings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numbered_pairs(lengths: list[int]) -> tuple[list[str], list[str]]:
    """Source i is `len` words tagged `s<i>`; target i is the single word `t<i>`, so joins can be traced."""
    sources = [" ".join([f"s{i}"] * length) for i, length in enumerate(lengths)]
    targets = [f"t{i}" for i in range(len(lengths))]
    return sources, targets


def word_count(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("low, high", [(0, 4), (4, 8), (8, 16), (20, 30)])
def test_joined_sources_fall_in_the_bucket_and_stay_aligned(script, low, high):
    sources, targets = numbered_pairs([3, 1, 5, 2, 7, 2, 2, 4, 1, 6, 3, 3, 9, 1, 2] * 3)
    inputs = script.join_consecutive_pairs(sources, targets, word_count, script.Bucket(low, high), limit=100)
    assert inputs, "every bucket here can be filled from these pairs"
    used: list[int] = []
    for source, target in inputs:
        assert low < word_count(source) <= high
        pieces = [int(word[1:]) for word in target.split()]
        assert pieces == list(range(pieces[0], pieces[0] + len(pieces)))  # consecutive pairs, in order
        assert source == " ".join(sources[i] for i in pieces)  # the target is the source's own references
        used += pieces
    assert len(used) == len(set(used))  # no test pair is used twice in one bucket


def test_joining_respects_the_limit_and_skips_overshooting_starts(script):
    sources, targets = numbered_pairs([10, 1, 1, 1, 1, 1, 1])
    inputs = script.join_consecutive_pairs(sources, targets, word_count, script.Bucket(2, 3), limit=1)
    assert inputs == [(" ".join(sources[1:4]), "t1 t2 t3")]  # pair 0 alone overshoots the bucket


def test_length_buckets_start_below_l_and_reach_the_longest(script):
    buckets = script.length_buckets(max_length=16, width=8, longest=64)
    assert (buckets[0].low, buckets[-1].high) == (8, 64)
    assert all(a.high == b.low for a, b in zip(buckets, buckets[1:], strict=False))
    assert [bucket.midpoint for bucket in buckets][:2] == [12.5, 20.5]


TINY_STUDY = [
    "--seeds", "1", "--max_length", "12",
        "--max_steps", "2", "--max_tokens", "256", "--warmup_steps", "1", "--tokenizer_vocab_size", "300",
        "--max_train_samples", "200", "--max_eval_samples", "4", "--max_test_samples", "4", "--num_beams", "1",
    "--eval_batch_size", "8", "--samples_per_bucket", "2", "--max_bucket_length", "24",
    "--", "--d_model", "32", "--encoder_ffn_dim", "64", "--decoder_ffn_dim", "64", "--encoder_layers", "1",
    "--decoder_layers", "1", "--logging_steps", "1", "--num_samples_to_show", "1",
]  # fmt: skip


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_study_writes_every_table_and_figure(script, tmp_path, capsys, jobs):
    out = tmp_path / "study"
    encodings = ["sinusoidal", "alibi"]
    rows = script.main(["--encodings", ",".join(encodings), "--out_dir", str(out), "--jobs", str(jobs), *TINY_STUDY])
    assert [row["encoding"] for row in rows] == encodings
    with open(out / "results.csv") as file:
        table = list(csv.DictReader(file))
    assert [row["encoding"] for row in table] == encodings
    for row in table:
        assert 0 <= float(row["test_bleu_mean"]) <= 100 and 0 <= float(row["test_chrf_mean"]) <= 100
        assert math.isfinite(float(row["eval_loss_mean"]))
        assert float(row["tokens_per_second_mean"]) > 0 and float(row["parameters_mean"]) > 0
    assert "| sinusoidal |" in (out / "results.md").read_text() and "| alibi |" in capsys.readouterr().out
    with open(out / "length_extrapolation.csv") as file:
        buckets = list(csv.DictReader(file))
    assert {row["encoding"] for row in buckets} == set(encodings)
    assert all(0 <= float(row["bleu"]) <= 100 and int(row["inputs"]) > 0 for row in buckets)
    assert (out / "length_extrapolation.png").read_bytes().startswith(PNG_SIGNATURE)
    for encoding in encodings:
        assert (out / "attention" / f"{encoding}.png").read_bytes().startswith(PNG_SIGNATURE)
        assert (out / "runs" / f"{encoding}-seed1" / "model" / "config.json").is_file()
        assert (out / "runs" / f"{encoding}-seed1" / "train.log").is_file() == (jobs > 1)


def test_a_failing_parallel_run_names_its_log(script, tmp_path):
    out = tmp_path / "study"
    with pytest.raises(RuntimeError, match=r"Training rope \(seed 1\) failed .*train\.log") as error:
        script.main(["--encodings", "rope", "--out_dir", str(out), "--jobs", "2", *TINY_STUDY, "--d_model", "30"])
    assert "d_model" in str(error.value)  # the tail of the run's own error message
