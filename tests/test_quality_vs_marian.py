"""Smoke test of benchmarks/quality_vs_marian.py at tiny sizes: both runs train and are scored. No quality asserts."""

import importlib.util
import json
import math
from pathlib import Path

from conftest import FAST_RUN, TINY_RUN, toy_data_arguments

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "quality_vs_marian.py"


def load_script():
    spec = importlib.util.spec_from_file_location("quality_vs_marian", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_vs_marian_runs_both_and_writes_the_summary(tmp_path, capsys):
    extra = [*TINY_RUN, *FAST_RUN, *toy_data_arguments(tmp_path), "--max_steps", "3", "--max_tokens", "128"]
    summary = load_script().main(["--out_dir", str(tmp_path / "q"), "--", *extra])
    assert json.loads((tmp_path / "q" / "summary.json").read_text()) == summary
    for name in ("posformer", "marian"):
        assert 0 <= summary[name]["test_bleu"] <= 100 and math.isfinite(summary[name]["test_loss"])
    tokenizers = [
        (tmp_path / "q" / name / "tokenizer" / "tokenizer.json").read_text() for name in summary if name != "bleu_gap"
    ]
    assert tokenizers[0] == tokenizers[1]  # Marian's run loaded the tokenizer posformer's run trained
    assert "BLEU gap" in capsys.readouterr().out
