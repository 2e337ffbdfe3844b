"""The model card of an exported model: `model_card.md` filled with the model's own values and the run's.

`model_card.md` (next to this file; at the repository top in a checkout) is a `string.Template`. `model_card_values`
fills these keys from the model itself, so they cannot drift from the weights (`export.export_model` overlays the
caller's `card`, whose keys win):

    position_encoding, position_encoding_description, layer_norm, d_model, encoder_layers, decoder_layers,
    encoder_attention_heads, decoder_attention_heads, encoder_ffn_dim, decoder_ffn_dim, vocab_size,
    max_position_embeddings, num_parameters, num_beams, length_penalty, max_new_tokens, ctranslate2_support

The caller's `card` gives the run-specific ones (`training_card_values` derives them from a posformer-train run):

    model_name            title and model-index name, e.g. "posformer-base-rope-en-de"
    model_id              Hub id or local path used in the card's loading example
    license               Hub licence id of the weights, e.g. "apache-2.0"
    source_language       ISO 639-1 code, e.g. "en"
    target_language       ISO 639-1 code, e.g. "de"
    dataset               dataset id for the Hub metadata, e.g. "posformer-builtin-en-de"
    dataset_name          human-readable name, e.g. "Debian gettext catalogs, English-German"
    dataset_description   a paragraph on the training data: provenance, licences, number of sentence pairs
    tokenizer_description e.g. "byte-level BPE trained on the training split"
    test_split            the split the scores are on, e.g. "test"
    train_steps           optimizer steps (int)
    tokens_per_batch      source + target tokens per step (int)
    optimizer             optimizer and schedule, e.g. "Adam (0.9, 0.98, 1e-9), inverse square root decay"
    learning_rate         peak learning rate (float)
    warmup_steps          (int)
    label_smoothing       (float)
    checkpoint_averaging  e.g. "mean of the last 5 checkpoints" or "none"
    seed                  (int)
    hardware              e.g. "1x NVIDIA H100 80GB"
    training_time         wall-clock time, e.g. "3 h 10 min"
    bleu, chrf            test-split scores (floats, 0-100)
    bleu_signature, chrf_signature   sacrebleu signatures, from `metrics.load_translation_metric`

In the YAML header every value is escaped, so any string keeps the header valid YAML; in the Markdown body floats
are shown with four significant digits.
"""

import json
import math
import string
from collections.abc import Mapping
from pathlib import Path

import yaml
from transformers import GenerationConfig, PreTrainedModel

from ..modeling import POSITION_ENCODINGS
from .ctranslate2_export import EXPORTABLE, NOT_EXPORTABLE

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "model_card.md"

# Config fields the model card shows as they are.
ARCHITECTURE_FIELDS = (
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "vocab_size",
    "max_position_embeddings",
)


def template_fields(template: str) -> set[str]:
    """The `$name` / `${name}` identifiers a `string.Template` text uses."""
    matches = string.Template.pattern.finditer(template)
    return {match.group("named") or match.group("braced") for match in matches} - {None}


def _split_front_matter(text: str) -> tuple[str, str]:
    """`---\\n<yaml>---\\n<markdown>` -> (yaml, markdown); `ValueError` when there is no front matter."""
    end = text.find("\n---\n", 4)
    if not text.startswith("---\n") or end < 0:
        raise ValueError(f"{MODEL_CARD_TEMPLATE} must start with a YAML front matter between two `---` lines.")
    return text[4 : end + 1], text[end + 5 :]


def _yaml_value(value: object) -> str:
    """Numbers, booleans and None as YAML scalars; anything else as the escaped inside of a double-quoted string."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")  # YAML's spelling, not JSON's
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return json.dumps(str(value), ensure_ascii=False)[1:-1]


def _markdown_value(value: object) -> str:
    """Floats with four significant digits (27.31, 0.0007); everything else as `str` gives it."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _parse_front_matter(header: str) -> dict:
    """The rendered header as a dict; `ValueError` if it is not a YAML mapping."""
    try:
        metadata = yaml.safe_load(header)
    except yaml.YAMLError as error:
        raise ValueError(f"The rendered model card header is not valid YAML: {error}") from error
    if not isinstance(metadata, dict):
        raise ValueError(f"The rendered model card header is not a YAML mapping: {metadata!r}")
    return metadata


def render_model_card(card: Mapping[str, object]) -> str:
    """Fill `model_card.md` with `card`'s values (see the module docstring for the keys).

    Guarantees: every placeholder is filled, and the YAML header parses (`yaml.safe_load`) to a mapping whatever
    the strings contain. Raises `ValueError` listing every key the template needs and `card` lacks. Keys the
    template does not use are ignored.
    """
    template = MODEL_CARD_TEMPLATE.read_text(encoding="utf-8")
    missing = sorted(template_fields(template) - card.keys())
    if missing:
        raise ValueError(f"The model card needs values for {missing}; the module docstring of {__name__} lists them.")
    header, body = _split_front_matter(template)
    header = string.Template(header).substitute({key: _yaml_value(value) for key, value in card.items()})
    body = string.Template(body).substitute({key: _markdown_value(value) for key, value in card.items()})
    _parse_front_matter(header)
    return f"---\n{header}---\n{body}"


def describe_position_encoding(name: str) -> str:
    """One sentence on what encoding `name` does: its class's `summary` in the registry, as a sentence."""
    summary = POSITION_ENCODINGS[name].summary
    return f"{summary[:1].upper()}{summary[1:]}."


def describe_ctranslate2_support(name: str) -> str:
    """Whether encoding `name` exports to CTranslate2, as the card's sentence (`ctranslate2_export`)."""
    if name in EXPORTABLE:
        return f"CTranslate2 computes the `{name}` encoding exactly as posformer does."
    reason = NOT_EXPORTABLE.get(name, "CTranslate2's Transformer specification cannot express it")
    return f"The `{name}` encoding does not export to CTranslate2 ({reason}): the export below refuses it."


def model_card_values(model: PreTrainedModel, generation_config: GenerationConfig) -> dict[str, object]:
    """The card values that the model and its decoding settings determine (architecture, encoding, decoding)."""
    config = model.config
    return {
        "position_encoding": config.position_encoding,
        "position_encoding_description": describe_position_encoding(config.position_encoding),
        "layer_norm": "pre-norm with a final LayerNorm" if config.normalize_before else "post-norm as in the paper",
        **{field: getattr(config, field) for field in ARCHITECTURE_FIELDS},
        "num_parameters": f"{model.num_parameters():,}",
        "num_beams": generation_config.num_beams,
        "length_penalty": generation_config.length_penalty,
        "max_new_tokens": generation_config.max_new_tokens,
        "ctranslate2_support": describe_ctranslate2_support(config.position_encoding),
    }


def describe_averaging(count: int) -> str:
    """The card's `checkpoint_averaging` for weights that are the mean of the last `count` checkpoints."""
    return f"mean of the last {count} checkpoints" if count > 1 else "none"


def training_card_values(
    model_args,
    data_args,
    train_args,
    split_sizes: Mapping[str, int],
    *,
    steps: int,
    processes: int,
    device: str,
    minutes: float,
    model_id: str,
    results: Mapping[str, object],
) -> dict[str, object]:
    """The run-specific card values of a posformer-train run (see the module docstring for the keys): its data,
    recipe, hardware and test scores. `split_sizes` maps each split to its number of sentence pairs."""
    source, target = data_args.source_lang, data_args.target_lang
    builtin = data_args.dataset_name is None and data_args.train_file is None
    dataset = data_args.dataset_name or ("posformer-builtin-en-de" if builtin else "local-files")
    sizes = ", ".join(f"{size:,} {split}" for split, size in split_sizes.items())
    if builtin:
        description = (
            "The built-in corpus shipped with posformer: English-German message pairs written by free-software "
            "translators in the gettext catalogs of Debian packages (see `training/corpus/en-de/README.md` for "
            f"provenance and the licence of each catalog). Sentence pairs: {sizes}."
        )
    else:
        description = f"{dataset} {data_args.dataset_config_name or ''}".strip() + f". Sentence pairs: {sizes}."
    return {
        "model_name": f"posformer-{model_args.model_size}-{model_args.position_encoding}-{source}-{target}",
        "model_id": model_id,
        "license": "other" if builtin else "apache-2.0",
        "source_language": source,
        "target_language": target,
        "dataset": dataset,
        "dataset_name": "Debian gettext catalogs, English-German" if builtin else dataset,
        "dataset_description": description,
        "tokenizer_description": data_args.tokenizer_name
        or f"a BPE of {data_args.tokenizer_vocab_size} tokens trained on the training split",
        "test_split": "test",
        "train_steps": steps,
        "tokens_per_batch": train_args.max_tokens * train_args.gradient_accumulation_steps * processes,
        "optimizer": f"AdamW ({train_args.adam_beta1}, {train_args.adam_beta2}, {train_args.adam_epsilon}), linear "
        "warmup then inverse square root decay",
        "learning_rate": train_args.learning_rate,
        "warmup_steps": train_args.warmup_steps,
        "label_smoothing": train_args.label_smoothing,
        "checkpoint_averaging": describe_averaging(results["averaged_checkpoints"]),  # what finish() averaged
        "seed": train_args.seed,
        "hardware": f"{processes} x {device}",
        "training_time": f"{minutes:.1f} min (this session)",
        "bleu": results.get("test_bleu", float("nan")),
        "chrf": results.get("test_chrf", float("nan")),
        "bleu_signature": results.get("test_bleu_signature", "not scored"),
        "chrf_signature": results.get("test_chrf_signature", "not scored"),
    }
