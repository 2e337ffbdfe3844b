"""Smoke test of benchmarks/quality_vs_marian.py at tiny sizes: both runs train and are scored. No quality asserts."""

import importlib.util
import json
import math
from pathlib import Path

import torch

from conftest import FAST_RUN, TINY_RUN, toy_data_arguments

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "quality_vs_marian.py"


def load_script():
    spec = importlib.util.spec_from_file_location("quality_vs_marian", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_marian_gets_posformers_loss_on_identical_weights():
    """The Marian side's loss is posformer's loss function applied to Marian's logits."""
    from conftest import tiny_config
    from posformer.modeling import PosformerForConditionalGeneration

    script = load_script()
    config = tiny_config(dropout=0.0, label_smoothing=0.1)
    ours = PosformerForConditionalGeneration(config).eval()
    marian = script.MarianWithPosformerLoss(script.marian_config(config)).eval()
    marian.label_smoothing = 0.1
    marian.load_state_dict(ours.state_dict(), strict=False)
    src, labels = torch.randint(4, 99, (2, 7)), torch.randint(4, 99, (2, 5))
    with torch.no_grad():
        expected = ours(input_ids=src, labels=labels, num_items_in_batch=torch.tensor(7)).loss
        actual = marian(input_ids=src, labels=labels, num_items_in_batch=torch.tensor(7)).loss
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


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
