"""`posformer-convert`: a pretrained Marian (opus-mt), BART, mBART or T5 checkpoint as a posformer checkpoint that
computes the same function.

    posformer-convert SOURCE OUT_DIR [--revision REV] [--overwrite_output_dir]

SOURCE is a local model folder or a Hub name (`Helsinki-NLP/opus-mt-en-de`), loaded with
`AutoModelForSeq2SeqLM.from_pretrained`, so the Hub cache and `HF_HUB_OFFLINE=1` work as usual. OUT_DIR is written
atomically: safetensors, config, the source's generation config and tokenizer, the code that loads it without
posformer (`trust_remote_code=True`), and a model card naming the source model, its licence and the largest logit
difference from it on a test batch. The conversion itself is `posformer.modeling.convert_from_transformers`.

The result trains further like any posformer model: `posformer-finetune --model_name_or_path OUT_DIR ...`, and
`posformer-train --init_from OUT_DIR ...` on the built-in corpus, where the position encoding may also be changed
(docs/converting.md says what that does).
"""

import argparse
import logging
import sys
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel

from ..modeling.atomic_io import atomic_directory
from ..modeling.from_transformers import check_same_function, convert_from_transformers
from .arguments import check_output_folder
from .console import log_to_console
from .run_folder import model_source

logger = logging.getLogger(__spec__.name)  # the module's name also when run as `python -m`

UNKNOWN_LICENSE = "other"
"""The Hub's licence id for "see the card": what the converted card says when the source's card names no licence."""


def source_card(source: str, revision: str | None) -> ModelCard | None:
    """The source model's card (its README.md), from the folder or the Hub (the cache, offline); None without one."""
    try:
        path = Path(source, "README.md")
        if not path.is_file():
            path = hf_hub_download(source, "README.md", revision=revision)
        return ModelCard.load(path)
    except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, OSError, ValueError):
        return None


def conversion_card(source: str, source_model: PreTrainedModel, model: PreTrainedModel, difference: float,
                    card: ModelCard | None) -> ModelCard:  # fmt: skip
    """The converted model's card: the source, its licence and languages, what the conversion mapped, the parity."""
    data = card.data if card is not None else ModelCardData()
    license_id = data.license or UNKNOWN_LICENSE
    config = model.config
    metadata = ModelCardData(
        license=license_id,
        language=data.language,
        base_model=source if not Path(source).exists() else None,
        library_name="transformers",
        pipeline_tag="translation",
        tags=["posformer", "translation", f"position-encoding-{config.position_encoding}", "converted"],
    )
    licence_line = (
        f"The weights keep the source's licence, `{data.license}`."
        if data.license
        else "The source's card names no licence: check the source model's terms before you use or share these weights."
    )
    options = ", ".join(
        f"`{name}={getattr(config, name)!r}`"
        for name in (
            "position_encoding",
            "normalize_before",
            "norm_type",
            "layernorm_embedding",
            "final_logits_bias",
            "projection_bias",
            "scale_attention_scores",
            "gated_feed_forward",
            "scale_decoder_output",
            "head_dim",
            "tie_word_embeddings",
        )  # fmt: skip
    )
    text = f"""---
{metadata.to_yaml()}
---

# {Path(source).name} (posformer)

This is `{source}` ({type(source_model).__name__}), converted to posformer by `posformer-convert` with no retraining:
it computes the same function. {licence_line}

On a test batch its logits differ from the source model's by at most {difference:.3g} (float arithmetic in another
order). posformer options it maps to: {options}.

```python
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, pipeline

model = AutoModelForSeq2SeqLM.from_pretrained("PATH_OR_HUB_NAME", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("PATH_OR_HUB_NAME")
translate = pipeline("translation", model="PATH_OR_HUB_NAME", trust_remote_code=True)
```

The source's own card follows.

{card.text if card is not None else "(The source model has no card.)"}
"""
    return ModelCard(text)


def convert(source: str, out_dir: Path, revision: str | None = None, overwrite_output_dir: bool = False) -> Path:
    """Convert `source` (a folder or a Hub name) into the posformer checkpoint folder `out_dir`; return `out_dir`."""
    check_output_folder(out_dir, "OUT_DIR")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite_output_dir:
        raise ValueError(f"OUT_DIR {out_dir} exists and is not empty; pass --overwrite_output_dir to replace it.")
    model_source(source, "SOURCE")
    source_model = AutoModelForSeq2SeqLM.from_pretrained(source, revision=revision).eval()
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    model = convert_from_transformers(source_model)
    difference = check_same_function(source_model, model)
    card = conversion_card(source, source_model, model, difference, source_card(source, revision))
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        card.save(staging / "README.md")
    logger.info(f"converted {source} ({type(source_model).__name__}); largest logit difference {difference:.3g}")
    return out_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posformer-convert",
        description="Convert a pretrained Marian, BART, mBART or T5 model into a posformer checkpoint that computes "
        "the same function.",
    )
    parser.add_argument("source", help="a model folder or a Hub name, e.g. Helsinki-NLP/opus-mt-en-de")
    parser.add_argument("out_dir", type=Path, help="the folder to write (replaced atomically)")
    parser.add_argument("--revision", help="the Hub revision (branch, tag or commit) of SOURCE")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace a non-empty OUT_DIR")
    return parser


def cli(argv: list[str] | None = None) -> None:
    """Console entry point `posformer-convert`: a user error exits with its message and status 1."""
    log_to_console()
    args = _parser().parse_args(argv)
    try:
        out_dir = convert(args.source, args.out_dir, args.revision, args.overwrite_output_dir)
    except (ValueError, FileNotFoundError) as error:  # UnsupportedModelError is a ValueError
        sys.exit(f"posformer-convert: error: {error}")
    logger.info(f"saved: {out_dir}")


if __name__ == "__main__":
    cli()
