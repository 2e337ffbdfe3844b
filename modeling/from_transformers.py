"""`convert_from_transformers`: a pretrained Marian, BART, mBART or T5 model of transformers as a posformer model that
computes the same function.

Every family maps onto ordinary options of the one posformer config (no family name reaches the layers):

* Marian (opus-mt): `sinusoidal` (Marian's layout), post-norm LayerNorm, `final_logits_bias`, and for the models
  with separate source and target vocabularies `share_encoder_decoder_embeddings=False`, `decoder_vocab_size`.
* BART: `learned` (BART's table without its 2 offset rows), post-norm LayerNorm, `layernorm_embedding`,
  `final_logits_bias`.
* mBART: as BART, but pre-norm (`normalize_before`, with each stack's final norm).
* T5 and mT5 (v1.0, v1.1, flan-T5): `t5` (one bucketed bias per stack, bidirectional in the encoder, causal in the
  decoder), pre-norm RMSNorm (`norm_type="rms_norm"`, eps 1e-6), `projection_bias=False`,
  `scale_attention_scores=False`, `head_dim` (when d_kv * heads != d_model), `gated_feed_forward` (v1.1's gated-GELU),
  `scale_decoder_output` (T5 v1.0's rescaled tied head), and a tied or untied head.

Names stay BART's (`self_attn`, `encoder_attn`, `fc1/fc2`, ...): Marian, BART and mBART weights copy over one to one,
T5's are renamed (`rename_t5`). Whatever a config cannot express is refused (`UnsupportedModelError`) and every
conversion is checked by running both models on the same batch (`check_same_function`): nothing is approximated.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from ..configuration.configuration_posformer import PosformerConfig
from .modeling_posformer import PosformerForConditionalGeneration

BART_POSITION_OFFSET = 2
"""BART and mBART's learned tables have 2 rows before position 0 (`BartLearnedPositionalEmbedding.offset`, a fairseq
legacy); no position id reaches them, so posformer's `learned` table is theirs without those rows."""


class UnsupportedModelError(ValueError):
    """A model `convert_from_transformers` cannot convert exactly, with what is unsupported and what to do."""


def _shared_config(source) -> dict:
    """The config fields every family spells alike: token ids, cache, initialisation."""
    return {
        "vocab_size": source.vocab_size,
        "pad_token_id": source.pad_token_id,
        "bos_token_id": getattr(source, "bos_token_id", None),
        "eos_token_id": source.eos_token_id,
        "decoder_start_token_id": getattr(source, "decoder_start_token_id", None),
        "init_std": getattr(source, "init_std", 0.02),
    }


def _bart_like_config(source, **family) -> dict:
    """Marian, BART and mBART: the same field names as posformer's."""
    names = (
        "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
        "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings", "activation_function", "dropout",
        "attention_dropout", "activation_dropout", "scale_embedding",
    )  # fmt: skip
    return {**_shared_config(source), **{name: getattr(source, name) for name in names}, **family}


def marian_config(source) -> dict:
    """Marian, with one shared vocabulary (most opus-mt models) or separate source and target ones."""
    vocabularies = {}
    if not getattr(source, "share_encoder_decoder_embeddings", True):
        vocabularies = {"share_encoder_decoder_embeddings": False, "decoder_vocab_size": source.decoder_vocab_size}
    return _bart_like_config(source, position_encoding="sinusoidal", final_logits_bias=True, **vocabularies)


def bart_config(source) -> dict:
    return _bart_like_config(
        source, position_encoding="learned", layernorm_embedding=True, final_logits_bias=True, normalize_before=False
    )


def mbart_config(source) -> dict:
    return _bart_like_config(
        source, position_encoding="learned", layernorm_embedding=True, final_logits_bias=True, normalize_before=True
    )


def _t5_architecture(source) -> dict:
    """What T5 and mT5 share: everything but the rescaling of the decoder output."""
    heads = source.num_heads
    return {
        **_shared_config(source),
        "bos_token_id": None,  # T5 has no start-of-sentence token: the decoder starts with the pad token
        "init_std": 0.02,
        "d_model": source.d_model,
        "encoder_layers": source.num_layers,
        "decoder_layers": source.num_decoder_layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "head_dim": source.d_kv if source.d_kv * heads != source.d_model else None,
        "encoder_ffn_dim": source.d_ff,
        "decoder_ffn_dim": source.d_ff,
        "max_position_embeddings": getattr(source, "n_positions", 512),
        "activation_function": source.dense_act_fn,
        "gated_feed_forward": source.is_gated_act,
        "dropout": source.dropout_rate,
        "attention_dropout": source.dropout_rate,
        "activation_dropout": source.dropout_rate,
        "scale_embedding": False,
        "normalize_before": True,
        "norm_type": "rms_norm",
        "layer_norm_eps": source.layer_norm_epsilon,
        "projection_bias": False,
        "scale_attention_scores": False,
        "position_encoding": "t5",
        "t5_num_buckets": source.relative_attention_num_buckets,
        "t5_max_distance": source.relative_attention_max_distance,
    }


def t5_config(source) -> dict:
    """T5 (v1.0, v1.1, flan). Whether the decoder output is rescaled before the head is transformers' own
    `scale_decoder_outputs` (what a config saved with `tie_word_embeddings` true, T5 v1.0's, meant)."""
    return {**_t5_architecture(source), "scale_decoder_output": source.scale_decoder_outputs}


def mt5_config(source) -> dict:
    """mT5: T5 v1.1's architecture; transformers' `MT5ForConditionalGeneration` never rescales the decoder output."""
    return {**_t5_architecture(source), "scale_decoder_output": False}


def rename_bart(name: str) -> str:
    """BART and mBART names are posformer's, but for the learned position tables."""
    if re.fullmatch(r"model\.(en|de)coder\.embed_positions\.weight", name):
        return name.replace("embed_positions", "position_encoding.embeddings")
    return name


def rename_marian(name: str) -> str | None:
    """BART's names, without Marian's sinusoid tables (None), which posformer computes from the positions; the
    encoder's embedding is posformer's `model.shared` (Marian has no `shared` when its vocabularies are separate)."""
    if re.fullmatch(r"model\.(en|de)coder\.embed_positions\.weight", name):
        return None
    if name == "model.encoder.embed_tokens.weight":
        return "model.shared.weight"
    return rename_bart(name)


T5_RENAMES = [
    (r"(en|de)coder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias",
     r"model.\1coder.position_encoding.relative_attention_bias"),
    (r"(en|de)coder\.block\.(\d+)\.layer\.0\.SelfAttention\.(q|k|v)", r"model.\1coder.layers.\2.self_attn.\3_proj"),
    (r"(en|de)coder\.block\.(\d+)\.layer\.0\.SelfAttention\.o", r"model.\1coder.layers.\2.self_attn.out_proj"),
    (r"(en|de)coder\.block\.(\d+)\.layer\.0\.layer_norm", r"model.\1coder.layers.\2.self_attn_layer_norm"),
    (r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.(q|k|v)", r"model.decoder.layers.\1.encoder_attn.\2_proj"),
    (r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.o", r"model.decoder.layers.\1.encoder_attn.out_proj"),
    (r"decoder\.block\.(\d+)\.layer\.1\.layer_norm", r"model.decoder.layers.\1.encoder_attn_layer_norm"),
    (r"(en|de)coder\.block\.(\d+)\.layer\.\d\.DenseReluDense\.(wi|wi_0)", r"model.\1coder.layers.\2.fc1"),
    (r"(en|de)coder\.block\.(\d+)\.layer\.\d\.DenseReluDense\.wi_1", r"model.\1coder.layers.\2.fc_up"),
    (r"(en|de)coder\.block\.(\d+)\.layer\.\d\.DenseReluDense\.wo", r"model.\1coder.layers.\2.fc2"),
    (r"encoder\.block\.(\d+)\.layer\.1\.layer_norm", r"model.encoder.layers.\1.final_layer_norm"),
    (r"decoder\.block\.(\d+)\.layer\.2\.layer_norm", r"model.decoder.layers.\1.final_layer_norm"),
    (r"(en|de)coder\.final_layer_norm", r"model.\1coder.layer_norm"),
    (r"(en|de)coder\.embed_tokens", r"model.\1coder.embed_tokens"),
    (r"shared", r"model.shared"),
    (r"lm_head", r"lm_head"),
]  # fmt: skip
"""T5's module names (a regular expression each; every T5 parameter is a `.weight`) -> posformer's. The relative
bias lives in each stack's first self-attention in T5 and is the stack's `position_encoding` in posformer: computed
once, shared by the layers, in both."""


def rename_t5(name: str) -> str:
    """posformer's name of T5's parameter `name`."""
    module, kind = name.rsplit(".", 1)
    for pattern, replacement in T5_RENAMES:
        match = re.fullmatch(pattern, module)
        if kind == "weight" and match:
            return f"{match.expand(replacement)}.weight"
    raise UnsupportedModelError(f"T5's weight {name!r} has no posformer counterpart.")


@dataclass(frozen=True)
class Family:
    """How one of transformers' model types becomes a posformer model: its config fields, its weight names."""

    classes: tuple[str, ...]  # the conditional-generation classes of transformers that are converted
    config: Callable[[object], dict]
    rename: Callable[[str], str | None]


FAMILIES: dict[str, Family] = {
    "marian": Family(("MarianMTModel",), marian_config, rename_marian),
    "bart": Family(("BartForConditionalGeneration",), bart_config, rename_bart),
    "mbart": Family(("MBartForConditionalGeneration",), mbart_config, rename_bart),
    "t5": Family(("T5ForConditionalGeneration",), t5_config, rename_t5),
    "mt5": Family(("MT5ForConditionalGeneration",), mt5_config, rename_t5),
}
"""`config.model_type` -> `Family`. Adding a family: its config and name functions, and one line here."""


def _family(model: PreTrainedModel) -> Family:
    model_type = getattr(model.config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None or type(model).__name__ not in family.classes:
        supported = ", ".join(name for family in FAMILIES.values() for name in family.classes)
        raise UnsupportedModelError(
            f"convert_from_transformers converts {supported}; got {type(model).__name__} (model_type="
            f"{model_type!r}). Load the checkpoint with AutoModelForSeq2SeqLM (a model with its language-modelling "
            "head) or convert one of these families."
        )
    return family


def posformer_config(model: PreTrainedModel) -> PosformerConfig:
    """The posformer config of `model`'s architecture: sizes, token ids and the options of its family."""
    family = _family(model)
    source = model.config
    layerdrop = [name for name in ("encoder_layerdrop", "decoder_layerdrop") if getattr(source, name, 0.0)]
    if layerdrop:
        raise UnsupportedModelError(
            f"{', '.join(f'{name}={getattr(source, name)}' for name in layerdrop)}: posformer has no layer drop. Set "
            "it to 0.0 on the model's config before converting (it only acts in training)."
        )
    fields = family.config(source)
    if fields["decoder_start_token_id"] is None:  # a setting transformers 5 may keep in the generation config only
        fields["decoder_start_token_id"] = model.generation_config.decoder_start_token_id
    if fields["decoder_start_token_id"] is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} names no decoder_start_token_id (neither its config nor its generation config), "
            "and posformer's decoder starts from it. Set model.generation_config.decoder_start_token_id (T5: the pad "
            "id, 0; Marian: the pad id) before converting."
        )
    head, target_embedding = model.get_output_embeddings().weight, model.get_decoder().get_input_embeddings().weight
    tied = head.shape == target_embedding.shape and torch.equal(head, target_embedding)
    return PosformerConfig(**fields, tie_word_embeddings=tied)


def posformer_state_dict(model: PreTrainedModel, config: PosformerConfig) -> dict[str, torch.Tensor]:
    """`model`'s weights under posformer's names."""
    family = _family(model)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        target = family.rename(name)
        if target is None:
            continue
        if target.endswith("position_encoding.embeddings.weight"):
            tensor = tensor[BART_POSITION_OFFSET : BART_POSITION_OFFSET + config.max_position_embeddings]
        state[target] = tensor
    return state


def check_same_function(source: PreTrainedModel, converted: PosformerForConditionalGeneration) -> float:
    """Run both models on one right-padded batch and raise unless their logits agree; return the largest difference.

    The tolerance is relative to the logits' size: `1e-4` of their largest magnitude in float32, `3e-2` in half
    precision (the two models order some sums differently)."""
    generator = torch.Generator().manual_seed(0)
    vocab_size = converted.config.vocab_size
    input_ids = torch.randint(vocab_size, (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0
    decoder_input_ids = torch.randint(vocab_size, (2, 5), generator=generator)
    decoder_input_ids[:, 0] = converted.config.decoder_start_token_id
    device = next(converted.parameters()).device
    batch = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "decoder_input_ids": decoder_input_ids.to(device),
    }
    modes = source.training, converted.training
    source.eval()
    converted.eval()
    with torch.no_grad():
        expected = source(**batch).logits.float()
        actual = converted(**batch).logits.float()
    source.train(modes[0])
    converted.train(modes[1])
    difference = (expected - actual).abs().max().item()
    relative = 1e-4 if next(converted.parameters()).dtype == torch.float32 else 3e-2
    if not difference <= relative * max(1.0, expected.abs().max().item()):
        raise UnsupportedModelError(
            f"The converted model does not compute what {type(source).__name__} does: their logits differ by up to "
            f"{difference:.3g} on a test batch. Some option of this checkpoint has no posformer counterpart; please "
            "report it with the checkpoint's config.json."
        )
    return difference


def convert_from_transformers(model: PreTrainedModel) -> PosformerForConditionalGeneration:
    """A posformer model that computes what `model` does, from transformers' `MarianMTModel`,
    `BartForConditionalGeneration`, `MBartForConditionalGeneration`, `T5ForConditionalGeneration` or
    `MT5ForConditionalGeneration` (T5 v1.0 and v1.1: ReLU or gated-GELU, tied or untied head).

    The result has `model`'s dtype, device and generation config, and is checked against `model` on a test batch
    ([`check_same_function`]); a model it cannot convert exactly raises [`UnsupportedModelError`] saying why.

    Example:
    ```python
    >>> from transformers import AutoModelForSeq2SeqLM
    >>> from posformer.modeling import convert_from_transformers
    >>> marian = AutoModelForSeq2SeqLM.from_pretrained("Helsinki-NLP/opus-mt-en-de")
    >>> model = convert_from_transformers(marian)  # then model.save_pretrained(...), or posformer-convert
    ```
    """
    config = posformer_config(model)
    reference = next(model.parameters())
    with torch.device("meta"):
        converted = PosformerForConditionalGeneration(config)
    tied = set(converted.all_tied_weights_keys)  # the tied copies, which `tie_weights` fills from their sources
    state = {name: tensor for name, tensor in posformer_state_dict(model, config).items() if name not in tied}
    missing, unexpected = converted.load_state_dict(state, strict=False, assign=True)
    if unexpected or set(missing) != tied:
        raise UnsupportedModelError(
            f"The weights of {type(model).__name__} do not fill a posformer model of its config: missing "
            f"{sorted(set(missing) - tied)}, left over {sorted(unexpected)}."
        )
    converted.tie_weights()
    converted.to(device=reference.device, dtype=reference.dtype).eval()
    converted.generation_config = copy.deepcopy(model.generation_config)
    check_same_function(model, converted)
    return converted


__all__ = ["FAMILIES", "UnsupportedModelError", "convert_from_transformers"]
