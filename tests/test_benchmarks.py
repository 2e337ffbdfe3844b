"""Smoke tests of benchmarks/speed.py and data_access.py at tiny sizes: they run and write finite, positive figures.
No timing asserts."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import FAST_RUN, TINY_RUN, toy_data_arguments
from posformer.modeling import POSITION_ENCODINGS
from posformer.training.train import main as train

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "speed.py"


def load_speed_script():
    spec = importlib.util.spec_from_file_location("speed", SCRIPT)
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    return speed


def test_speed_benchmark_writes_its_table(tmp_path, capsys):
    speed = load_speed_script()
    out = tmp_path / "speed.json"
    speed.main(["--tiny", "--rounds", "1", "--profile", "--out", str(out)])
    results = json.loads(out.read_text())
    assert set(results["workloads"]) == {
        "training step", "training step, logits returned", "greedy generation", "beam search (4)",
        "peak training memory (bytes)", "peak training memory, logits returned (bytes)",
    }  # fmt: skip
    assert set(results["encodings"]) == set(results["workloads"])
    for group, names in (("workloads", {"posformer", "marian"}), ("encodings", set(POSITION_ENCODINGS))):
        for values in results[group].values():
            assert set(values) == names and all(math.isfinite(v) and v > 0 for v in values.values())
    printed = capsys.readouterr().out
    assert "| training step |" in printed and "ours / Marian" in printed
    for workload in ("training step", "greedy generation"):
        for name in ("posformer", "marian"):
            kinds = results["profile"][workload][name]
            assert kinds["matrix multiplies"] > 0 and all(seconds >= 0 for seconds in kinds.values())
    assert results["profile"]["training step"]["posformer"]["optimizer (AdamW)"] > 0
    assert results["profile"]["greedy generation"]["posformer"]["optimizer (AdamW)"] == 0
    assert "| where the time goes (ms) |" in printed
    if importlib.util.find_spec("ctranslate2") is None:  # an optional extra: its rows are left out, with a note
        assert "ctranslate2" not in results and "Leaving out the CTranslate2 rows" in printed
        return
    assert set(results["ctranslate2"]) == {"greedy generation", "beam search (4)"}
    for values in results["ctranslate2"].values():
        assert set(values) == set(speed.CTRANSLATE2_ROWS) and all(math.isfinite(v) and v > 0 for v in values.values())
    assert results["machine"]["ctranslate2"]
    for label in (*speed.CTRANSLATE2_ROWS.values(), "posformer / CTranslate2's Marian, both int8"):
        assert f"| {label} |" in printed
    for workload in results["ctranslate2"]:
        for weights in speed.CTRANSLATE2_WEIGHTS:
            ratio = results["ctranslate2_same_engine"][workload][weights]
            assert 0 < ratio["quartile_1"] <= ratio["median"] <= ratio["quartile_3"]


def test_rounds_alternate_their_order_and_ratios_pair_the_runs_of_one_round():
    speed = load_speed_script()
    calls = []
    workloads = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = speed.timed_rounds(workloads, 3, torch.device("cpu"))
    assert calls == [*"abc", *"abc", *"cba", *"abc"]  # a warm-up call each, then forward, backward, forward
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}
    # per-round ratios 2, 1, 3, 10; the ratio of the medians (6.5 / 3.5) would be none of them
    ratio = speed.paired_ratio({"a": [2.0, 4.0, 9.0, 10.0], "b": [1.0, 4.0, 3.0, 1.0]}, "a", "b")
    assert ratio == {"median": 2.5, "quartile_1": 1.75, "quartile_3": 4.75}
    assert speed.paired_ratio({"a": [3.0], "b": [2.0]}, "a", "b") == dict.fromkeys(ratio, 1.5)  # one round


def test_speed_benchmark_measures_only_the_ctranslate2_rows_when_asked(capsys):
    pytest.importorskip("ctranslate2")
    results = load_speed_script().main(["--tiny", "--rounds", "2", "--only_ctranslate2"])
    assert set(results) == {"ctranslate2", "ctranslate2_same_engine", "machine", "size"}
    printed = capsys.readouterr().out
    assert "posformer / CTranslate2's Marian, both int8" in printed and "ours / Marian" not in printed


def test_data_access_benchmark_checks_its_two_ways_agree_and_prints_its_table(capsys):
    spec = importlib.util.spec_from_file_location("data_access", SCRIPT.with_name("data_access.py"))
    data_access = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(data_access)
    results = data_access.main(["--pairs", "500", "--batch_size", "64", "--rounds", "1"])  # asserts equal results
    assert all(seconds > 0 for times in results.values() for seconds in times.values())
    assert "| one padded batch of 64 pairs |" in capsys.readouterr().out


def test_input_checks_benchmark_times_the_checks_against_a_forward_and_prints_its_table(capsys):
    spec = importlib.util.spec_from_file_location("input_checks", SCRIPT.with_name("input_checks.py"))
    input_checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(input_checks)
    results = input_checks.main(["--sizes", "tiny", "--batch", "2", "--length", "8", "--rounds", "2"])
    assert 0 < results["tiny"]["share"] < 1 and results["tiny"]["checks_us"] > 0
    assert "| tiny |" in capsys.readouterr().out


@pytest.mark.slow
def test_ctranslate2_quality_benchmark_scores_three_engines_of_a_run(tmp_path, capsys):
    pytest.importorskip("ctranslate2")
    spec = importlib.util.spec_from_file_location("ctranslate2_quality", SCRIPT.with_name("ctranslate2_quality.py"))
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    train([*TINY_RUN, *FAST_RUN, *toy_data_arguments(tmp_path), "--output_dir", str(tmp_path / "run"),
           "--max_steps", "40", "--save_steps", "40", "--eval_steps", "100"])  # fmt: skip
    results = quality.main([str(tmp_path / "run"), "--max_samples", "6"])
    assert set(results) == {"torch", "ctranslate2 float32", "ctranslate2 int8"}
    assert results["ctranslate2 float32"]["differ_from_torch"] == 0  # the export's parity, on a real run
    assert "| ctranslate2 int8 |" in capsys.readouterr().out
    int8_drop = results["ctranslate2 float32"]["bleu"] - results["ctranslate2 int8"]["bleu"]
    quality.check_bleu_drop(results, max_drop=int8_drop)  # exactly at the bar passes
    with pytest.raises(SystemExit, match=r"over the .* BLEU bar: ctranslate2 int8 scores"):
        quality.check_bleu_drop(results, max_drop=int8_drop - 0.01)


@pytest.mark.slow
def test_conversion_parity_benchmark_reports_each_model(capsys):
    spec = importlib.util.spec_from_file_location("parity", SCRIPT.with_name("conversion_parity.py"))
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    (row,) = parity.main(["--families", "t5-small"])
    assert row["max diff eager"] == 0 and row["max diff sdpa"] < 1e-4 and row["beam4 equal"]
    assert "| t5-small | 60.5M |" in capsys.readouterr().out
