"""Translation metrics that work offline: sacrebleu's BLEU and chrF as an `evaluate` module shipped in the package.

The Hub's `sacrebleu`/`chrf` modules need the network; `translation_scores/` holds an equivalent metric script that
`evaluate.load` reads from disk, so training and evaluation run with `HF_HUB_OFFLINE=1` / `HF_EVALUATE_OFFLINE=1`.
"""

from pathlib import Path

import evaluate

TRANSLATION_SCORES_DIR = Path(__file__).resolve().parent / "translation_scores"


def load_translation_metric() -> evaluate.EvaluationModule:
    """Load the shipped BLEU + chrF metric by its folder path; never touches the network.

    `compute(predictions=[...], references=[...])` returns `{"bleu", "chrf", "bleu_signature", "chrf_signature"}`.
    Predictions are kept in memory, so several processes can score at once without sharing cache files.
    """
    return evaluate.load(str(TRANSLATION_SCORES_DIR), keep_in_memory=True)


def compute_translation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (0-100, sacrebleu defaults) of detokenised `predictions` against one reference each.

    Returns exactly `{"bleu": float, "chrf": float}`; use `load_translation_metric` for the signature strings.
    Raises `ValueError` when the lists are empty or differ in length.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"Got {len(predictions)} predictions but {len(references)} references; pass one of each per segment."
        )
    if not predictions:
        raise ValueError("No predictions to score: BLEU and chrF are undefined on an empty corpus.")
    scores = load_translation_metric().compute(predictions=predictions, references=references)
    return {"bleu": float(scores["bleu"]), "chrf": float(scores["chrf"])}
