"""BLEU and chrF from sacrebleu, as one `evaluate` metric that ships inside posformer.

A standard `evaluate.Metric` script: `evaluate.load(<this folder>)` loads it from disk, so it works offline
(`HF_HUB_OFFLINE=1`, `HF_EVALUATE_OFFLINE=1`), where the Hub's `sacrebleu` and `chrf` modules cannot be fetched.
The scores are sacrebleu's corpus-level scores with its defaults (BLEU: 13a tokenisation, mixed case,
exponential smoothing; chrF: character 6-grams, beta 2), equal to calling `sacrebleu.metrics.BLEU().corpus_score`
and `CHRF().corpus_score` directly; the signatures say exactly which settings produced them.
"""

import datasets
import evaluate
from sacrebleu.metrics import BLEU, CHRF

_CITATION = """\
@inproceedings{post-2018-call,
    title = "A Call for Clarity in Reporting {BLEU} Scores",
    author = "Post, Matt",
    booktitle = "Proceedings of the Third Conference on Machine Translation: Research Papers",
    year = "2018",
    publisher = "Association for Computational Linguistics",
    url = "https://www.aclweb.org/anthology/W18-6319",
    pages = "186--191",
}
@inproceedings{popovic-2015-chrf,
    title = "chr{F}: character n-gram {F}-score for automatic {MT} evaluation",
    author = "Popovi{\\'c}, Maja",
    booktitle = "Proceedings of the Tenth Workshop on Statistical Machine Translation",
    year = "2015",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/W15-3049",
    pages = "392--395",
}
"""

_DESCRIPTION = """\
Corpus BLEU (Papineni et al., 2002) and chrF (Popović, 2015) as computed by sacrebleu (Post, 2018), with
sacrebleu's default settings and its signature strings, so that scores are comparable across papers.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): detokenised system outputs, one per segment.
    references (`list[str]` or `list[list[str]]`): one reference per segment, or the same number of
        references for every segment.
Returns:
    bleu (`float`): corpus BLEU, 0-100.
    chrf (`float`): corpus chrF, 0-100.
    bleu_signature (`str`): sacrebleu's BLEU signature,
        e.g. `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    chrf_signature (`str`): sacrebleu's chrF signature.
Examples:
    >>> metric = evaluate.load("path/to/translation_scores")
    >>> metric.compute(predictions=["the cat sat on the mat"], references=["the cat sat on the mat"])["chrf"]
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TranslationScores(evaluate.Metric):
    """sacrebleu's corpus BLEU and chrF, with their signatures."""

    def _info(self) -> evaluate.MetricInfo:
        # Two accepted input formats, tried in order: several references per segment, then exactly one.
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            homepage="https://github.com/mjpost/sacrebleu",
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Sequence(datasets.Value("string", id="sequence"), id="references"),
                    }
                ),
                datasets.Features(
                    {
                        "predictions": datasets.Value("string", id="sequence"),
                        "references": datasets.Value("string", id="sequence"),
                    }
                ),
            ],
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
            reference_urls=["https://aclanthology.org/W18-6319", "https://aclanthology.org/W15-3049"],
        )

    def _compute(self, predictions: list[str], references: list[str] | list[list[str]]) -> dict[str, float | str]:
        streams = reference_streams(references)
        bleu, chrf = BLEU(), CHRF()
        return {
            "bleu": bleu.corpus_score(predictions, streams).score,
            "chrf": chrf.corpus_score(predictions, streams).score,
            "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature()),
        }


def reference_streams(references: list[str] | list[list[str]]) -> list[list[str]]:
    """Per-segment references -> sacrebleu's layout: one stream per reference index, each as long as the corpus.

    `[["r1 of s1", "r2 of s1"], ["r1 of s2", "r2 of s2"]]` -> `[["r1 of s1", "r1 of s2"], ["r2 of s1", "r2 of s2"]]`.
    Raises `ValueError` when the segments do not all have the same number of references.
    """
    per_segment = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
    counts = {len(refs) for refs in per_segment}
    if len(counts) > 1:
        raise ValueError(
            f"Every prediction needs the same number of references for sacrebleu; got counts {sorted(counts)}."
        )
    return [list(stream) for stream in zip(*per_segment, strict=True)]
