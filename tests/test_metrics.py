"""The shipped BLEU/chrF metric equals sacrebleu called directly, and loads with the Hub unreachable."""

import os
import subprocess
import sys

import pytest
from sacrebleu.metrics import BLEU, CHRF

from posformer.training.metrics import TRANSLATION_SCORES_DIR, compute_translation_scores, load_translation_metric

PREDICTIONS = [
    "The file could not be opened.",
    "Do you want to save the changes?",
    "the printer is out of paper",
]
REFERENCES = [
    "The file could not be opened.",
    "Do you want to save your changes?",
    "The printer has run out of paper.",
]
SECOND_REFERENCES = [
    "Opening the file failed.",
    "Save the changes?",
    "No paper left in the printer.",
]


def test_scores_equal_sacrebleu_on_the_same_data():
    scores = load_translation_metric().compute(predictions=PREDICTIONS, references=REFERENCES)
    bleu, chrf = BLEU(), CHRF()
    assert scores["bleu"] == pytest.approx(bleu.corpus_score(PREDICTIONS, [REFERENCES]).score)
    assert scores["chrf"] == pytest.approx(chrf.corpus_score(PREDICTIONS, [REFERENCES]).score)
    assert scores["bleu_signature"] == str(bleu.get_signature())
    assert scores["chrf_signature"] == str(chrf.get_signature())
    assert "tok:13a" in scores["bleu_signature"] and "nrefs:1" in scores["bleu_signature"]
    assert 0 < scores["bleu"] < 100 and 0 < scores["chrf"] < 100


def test_several_references_per_segment_equal_sacrebleu_streams():
    references = [[first, second] for first, second in zip(REFERENCES, SECOND_REFERENCES, strict=True)]
    scores = load_translation_metric().compute(predictions=PREDICTIONS, references=references)
    streams = [REFERENCES, SECOND_REFERENCES]
    assert scores["bleu"] == pytest.approx(BLEU().corpus_score(PREDICTIONS, streams).score)
    assert scores["chrf"] == pytest.approx(CHRF().corpus_score(PREDICTIONS, streams).score)
    assert "nrefs:2" in scores["bleu_signature"]


def test_uneven_reference_counts_raise():
    with pytest.raises(ValueError, match="same number of references"):
        load_translation_metric().compute(predictions=PREDICTIONS[:2], references=[["a", "b"], ["c"]])


def test_perfect_translation_scores_100():
    assert compute_translation_scores(REFERENCES, REFERENCES) == pytest.approx({"bleu": 100.0, "chrf": 100.0})


def test_compute_translation_scores_returns_only_floats():
    scores = compute_translation_scores(PREDICTIONS, REFERENCES)
    assert set(scores) == {"bleu", "chrf"} and all(type(value) is float for value in scores.values())


@pytest.mark.parametrize(("predictions", "references"), [(["a"], ["a", "b"]), ([], [])])
def test_compute_translation_scores_rejects_bad_lengths(predictions, references):
    with pytest.raises(ValueError, match="predictions"):
        compute_translation_scores(predictions, references)


def test_metric_loads_and_scores_offline_in_a_fresh_process(tmp_path):
    code = (
        "from posformer.training.metrics import compute_translation_scores, load_translation_metric\n"
        "assert load_translation_metric().name == 'translation_scores'\n"
        "print(compute_translation_scores(['the cat sat on the mat'], ['the cat sat on the mat'])['bleu'])\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),  # an empty cache: nothing can come from an earlier download
    }
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(100.0)


def test_metric_script_sits_where_evaluate_looks_for_it():
    # evaluate.load(<folder>) imports <folder>/<folder name>.py
    assert (TRANSLATION_SCORES_DIR / f"{TRANSLATION_SCORES_DIR.name}.py").is_file()
