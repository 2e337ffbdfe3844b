"""Export a trained translation model: one folder that loads with `from_pretrained`, with the paper's decoding
settings and a model card.

The folder holds `model.safetensors` + `config.json` and the code that loads them without posformer
(`save_pretrained`), the tokenizer files, `generation_config.json` and `README.md` (the model card, `model_card.py`).
It is written atomically (`atomic_directory`): a reader, or a crash, sees the previous folder or the complete new
one. Run it on the main process only.
"""

from collections.abc import Mapping
from pathlib import Path

from transformers import GenerationConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..modeling.atomic_io import atomic_directory
from .model_card import model_card_values, render_model_card

# Vaswani et al. (2017), section 6.1: beam size 4, length penalty alpha = 0.6, stop early when possible. The paper
# caps the output at input length + 50; a fixed budget of new tokens stands in for that. transformers divides a
# beam's log-probability by length ** alpha, not by the GNMT penalty ((5 + length) / 6) ** alpha the paper used.
PAPER_DECODING = {"num_beams": 4, "length_penalty": 0.6, "max_new_tokens": 256, "early_stopping": True}


def paper_generation_config(config: PretrainedConfig) -> GenerationConfig:
    """The paper's beam search (`PAPER_DECODING`) with the model's bos/eos/pad/decoder-start token ids."""
    return GenerationConfig(
        **PAPER_DECODING,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )


def export_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, card: Mapping[str, object]
) -> Path:
    """Write a loadable, documented model folder to `out_dir` atomically and return `out_dir`.

    The folder holds `model.safetensors` + `config.json` (`save_pretrained`), the tokenizer files,
    `generation_config.json` with the paper's decoding (`paper_generation_config`), and `README.md` rendered from
    `model_card.md` with `model_card_values(model, ...)` overlaid by `card`. The card is rendered before anything
    is written, so a missing key raises `ValueError` and leaves `out_dir` untouched; so does any failure while
    saving. `model` must be unwrapped (`accelerator.unwrap_model`); the model itself is not modified.
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"export_model needs a PreTrainedModel, got {type(model).__name__}; unwrap it first.")
    out_dir = Path(out_dir)
    generation_config = paper_generation_config(model.config)
    readme = render_model_card({**model_card_values(model, generation_config), **card})
    with atomic_directory(out_dir) as staging:
        model.save_pretrained(staging)
        generation_config.save_pretrained(staging)  # replaces the one save_pretrained derived from the config
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(readme, encoding="utf-8")
    return out_dir
