"""The training-curves plot: a PNG from a metrics log, and an error naming a bad line."""

import json
import re

import pytest

from conftest import siblings
from posformer.training.plots import plot_training_curves


def test_plot_training_curves_writes_a_png(tmp_path):
    log = tmp_path / "run" / "metrics.jsonl"
    log.parent.mkdir()
    records = [
        {"step": step, "train_loss": 5.0 / (1 + step / 50), "learning_rate": 1e-4} for step in range(10, 210, 10)
    ]
    records += [
        {"step": step, "eval_loss": 4.0 / (1 + step / 60), "eval_bleu": step / 10, "eval_chrf": 20 + step / 5}
        for step in (50, 100, 150, 200)
    ]
    log.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    out = plot_training_curves(log, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert siblings(out) == []


def test_plot_training_curves_names_a_bad_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "train_loss": 2.0}\n{"train_loss": 1.0}\n')
    with pytest.raises(ValueError, match=re.escape(f"{log}:2")):
        plot_training_curves(log, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
