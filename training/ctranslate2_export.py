"""Export a posformer model to CTranslate2, the C++ engine behind OpenNMT, LibreTranslate and faster-whisper.

The model is described with CTranslate2's own specification classes (`TransformerSpec`, `TransformerEncoderSpec`,
`TransformerDecoderSpec`) and written by its converter framework (a `Converter` subclass), as its own converters of
transformers' Marian and BART do. Only what CTranslate2 computes exactly as posformer does is exported; everything
else is refused with a `ValueError` before anything is written.

How each encoding maps (checked against `generate`, token for token: `tests/test_ctranslate2_export.py`):

* `none`: a position table of zeros (CTranslate2 adds its own sinusoids to a stack that has neither a table nor a
  relative encoding). `max_position_embeddings` rows.
* `sinusoidal`: posformer's sinusoids written out as a table: CTranslate2's built-in sinusoids use another layout
  (frequencies `10000^(-k / (d/2 - 1))`, not Marian's `10000^(-2k / d)`). `max_position_embeddings` rows.
* `learned`: the table itself (positions from 0, no offset).
* `shaw`: CTranslate2's relative position keys and values (Shaw et al., 2018), `clip(j - i, -k, k) + k`, `(2k + 1,
  D)` per layer and shared by the heads, as posformer's.
* `t5`: CTranslate2's relative attention bias: T5's buckets (bidirectional in the encoder, causal in the decoder),
  one `(buckets, heads)` table per stack given to each of its layers, added to the scaled scores.
* `rope`: CTranslate2's rotary embeddings over the whole head, halves rotated (not interleaved), base `rope_theta`.

The folder (`export_ctranslate2`): CTranslate2's `model.bin`, `config.json` and `shared_vocabulary.json` (the
shared source/target vocabulary: the tokenizer's tokens in id order), beside the Hugging Face tokenizer's files
(`AutoTokenizer.from_pretrained(folder)` works) and `generation_config.json` (beams, length penalty, token budget).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..modeling.atomic_io import atomic_directory
from ..modeling.position_encodings import POSITION_ENCODINGS, sinusoids

INSTALL_HINT = 'pip install "posformer[ctranslate2]" (in a checkout: pip install -e ".[ctranslate2]")'

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16")
"""Weight types of `--quantization` (CTranslate2's names); None keeps float32."""

# transformers' activation names (`config.activation_function`) -> CTranslate2's `common_spec.Activation` member for
# the same function (the mapping of CTranslate2's own transformers converter)
ACTIVATIONS = {
    "relu": "RELU",
    "gelu": "GELU",
    "gelu_python": "GELU",
    "gelu_new": "GELUTanh",
    "gelu_fast": "GELUTanh",
    "gelu_pytorch_tanh": "GELUTanh",
    "quick_gelu": "GELUSigmoid",
    "silu": "SWISH",
    "swish": "SWISH",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
}

NOT_EXPORTABLE = {
    "hadamard": "it multiplies sinusoids into the token embeddings, and CTranslate2 can only add a position table",
    "transformer_xl": "its content and position biases and per-layer projected relative sinusoids have no "
    "counterpart in CTranslate2's attention",
    "alibi": "CTranslate2 applies ALiBi in decoders only (its encoder specification has no ALiBi), and with its own "
    "causal slopes",
    "fire": "its learned MLP of normalised distances has no counterpart in CTranslate2's attention",
}
"""Why each encoding that CTranslate2 cannot compute exactly is refused (the error says it)."""


class CTranslate2NotInstalledError(ImportError):
    """The `ctranslate2` package, an optional extra of posformer, is not installed."""


def import_ctranslate2() -> ModuleType:
    """The `ctranslate2` package with its converters and specs; `CTranslate2NotInstalledError` saying how to install
    it when it is missing."""
    try:
        import ctranslate2
        import ctranslate2.converters
        import ctranslate2.specs
    except ImportError as error:
        raise CTranslate2NotInstalledError(
            f"Exporting to CTranslate2 needs the ctranslate2 package, which is not installed ({error}): {INSTALL_HINT}."
        ) from error
    return ctranslate2


# ---------------------------------------------------------------------------------------------------------------
# What the specification can express
# ---------------------------------------------------------------------------------------------------------------


def _spec_options_none(config) -> dict:
    return {}


def _spec_options_shaw(config) -> dict:
    return {"relative_position": True}


def _spec_options_t5(config) -> dict:
    return {"relative_attention_bias": True}


def _spec_options_rope(config) -> dict:
    # rotary_dim=0: every dimension of the head; not interleaved: posformer rotates the pairs (i, i + D/2)
    return {"rotary_dim": 0, "rotary_interleave": False, "rotary_base": float(config.rope_theta)}


def _position_table(stack_spec, table: torch.Tensor) -> None:
    stack_spec.position_encodings.encodings = table.detach().float().cpu().numpy()


def _weights_none(stack_spec, stack) -> None:
    config = stack.config
    _position_table(stack_spec, torch.zeros(config.max_position_embeddings, config.d_model))


def _weights_sinusoidal(stack_spec, stack) -> None:
    config = stack.config
    _position_table(stack_spec, sinusoids(torch.arange(config.max_position_embeddings), config.d_model))


def _weights_learned(stack_spec, stack) -> None:
    _position_table(stack_spec, stack.position_encoding.embeddings.weight)


def _weights_shaw(stack_spec, stack) -> None:
    for layer_spec, layer in zip(stack_spec.layer, stack.layers, strict=True):
        term = layer.self_attn.relative_term
        layer_spec.self_attention.relative_position_keys = _array(term.relative_key.weight)
        layer_spec.self_attention.relative_position_values = _array(term.relative_value.weight)


def _weights_t5(stack_spec, stack) -> None:
    encoding = stack.position_encoding
    for layer_spec in stack_spec.layer:  # one table per stack, as T5's: every layer gets it (stored once)
        layer_spec.self_attention.relative_attention_bias = _array(encoding.relative_attention_bias.weight)
        layer_spec.self_attention.relative_attention_max_distance = np.int32(encoding.max_distance)


def _weights_rope(stack_spec, stack) -> None:
    """Nothing to store: the rotation is computed from the positions."""


EXPORTABLE: dict[str, tuple[Callable[[object], dict], Callable[[object, object], None]]] = {
    "none": (_spec_options_none, _weights_none),
    "sinusoidal": (_spec_options_none, _weights_sinusoidal),
    "learned": (_spec_options_none, _weights_learned),
    "shaw": (_spec_options_shaw, _weights_shaw),
    "t5": (_spec_options_t5, _weights_t5),
    "rope": (_spec_options_rope, _weights_rope),
}
"""Encoding -> (the stack specification's options, what writes its position weights into a stack specification)."""


NOT_YET_EXPORTED = {"share_encoder_decoder_embeddings": True, "head_dim": None}
"""Options (and the one value the export maps) that it does not map yet: separate source and target vocabularies
(the export writes one shared vocabulary) and a head size apart from d_model / heads (which CTranslate2's own T5
converter does not map either)."""


def exportable_encodings() -> list[str]:
    """The registered encodings that export to CTranslate2, in the registry's order."""
    return [name for name in POSITION_ENCODINGS if name in EXPORTABLE]


def _single_eos(config) -> int:
    """The one end-of-sequence id; `ValueError` for none or several (CTranslate2 ends on one token)."""
    eos = config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    if len(ids) != 1 or ids[0] is None:
        raise ValueError(
            f"config.eos_token_id={eos!r}: CTranslate2's model config names exactly one end token. Set "
            "config.eos_token_id to one id before exporting."
        )
    return ids[0]


def check_exportable(model: PreTrainedModel, quantization: str | None = None) -> None:
    """`ValueError` naming the setting, its value and what exports, for what CTranslate2 cannot compute exactly."""
    config = model.config
    if config.model_type != "posformer":
        raise ValueError(f"export_ctranslate2 exports posformer models, got a {config.model_type!r} model.")
    encoding = config.position_encoding
    if encoding not in EXPORTABLE:
        reason = NOT_EXPORTABLE.get(encoding, "CTranslate2's Transformer specification cannot express it")
        raise ValueError(
            f"position_encoding={encoding!r} cannot be exported to CTranslate2: {reason}. Encodings that export: "
            f"{', '.join(exportable_encodings())}."
        )
    if config.activation_function not in ACTIVATIONS:
        raise ValueError(
            f"activation_function={config.activation_function!r} has no CTranslate2 counterpart. Activations that "
            f"export: {', '.join(ACTIVATIONS)}."
        )
    if config.decoder_start_token_id is None:
        raise ValueError(
            "config.decoder_start_token_id is None, but CTranslate2 starts every translation from that token. Set it "
            "(posformer's default is 1, <s>)."
        )
    unmapped = [f"{name}={getattr(config, name)!r}" for name, default in NOT_YET_EXPORTED.items()
                if getattr(config, name) != default]  # fmt: skip
    if unmapped:
        raise ValueError(
            f"{', '.join(unmapped)}: the CTranslate2 export does not map this option yet. For a model converted from "
            "transformers, CTranslate2's own converter exports the source: ct2-transformers-converter --model SOURCE "
            "--output_dir OUT."
        )
    _single_eos(config)
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(
            f"quantization={quantization!r} is not a CTranslate2 weight type posformer exports. Choose one of: "
            f"{', '.join(QUANTIZATIONS)}, or None for float32."
        )


# ---------------------------------------------------------------------------------------------------------------
# Building the specification
# ---------------------------------------------------------------------------------------------------------------


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def vocabulary(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """The `config.vocab_size` token strings in id order: rows the tokenizer has no token for (a vocabulary padded to
    a round size) get unique placeholders. `ValueError` when the tokenizer has more tokens than the embedding rows."""
    size = model.config.vocab_size
    if len(tokenizer) > size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's embedding only {size} rows "
            "(config.vocab_size): ids past it cannot be translated. Export the tokenizer the model was trained with."
        )
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return tokens + [f"<posformer_unused_{index}>" for index in range(len(tokens), size)]


def _set_linear(spec, module: torch.nn.Linear) -> None:
    spec.weight = _array(module.weight)
    if module.bias is not None:
        spec.bias = _array(module.bias)


def _set_layer_norm(spec, module: torch.nn.LayerNorm | torch.nn.RMSNorm) -> None:
    """A LayerNorm's gain and bias, or an RMSNorm's gain (CTranslate2's `rms_norm` specification has no bias)."""
    spec.gamma = _array(module.weight)
    if getattr(module, "bias", None) is not None:
        spec.beta = _array(module.bias)


def _set_attention(spec, attention, self_attention: bool) -> None:
    """q, k, v as CTranslate2 fuses them: one `[q; k; v]` projection for self-attention, `q` and `[k; v]` for
    cross-attention."""
    projections = [attention.q_proj, attention.k_proj, attention.v_proj]
    groups = [projections] if self_attention else [projections[:1], projections[1:]]
    for linear_spec, group in zip(spec.linear[:-1], groups, strict=True):
        linear_spec.weight = np.concatenate([_array(p.weight) for p in group])
        if attention.q_proj.bias is not None:  # projection_bias
            linear_spec.bias = np.concatenate([_array(p.bias) for p in group])
    _set_linear(spec.linear[-1], attention.out_proj)
    if attention.scaling == 1.0:  # scale_attention_scores=False (T5), as CTranslate2's own T5 converter says it
        spec.queries_scale = 1.0


def _set_stack(stack_spec, stack) -> None:
    """Embeddings, scale, positions, the norm of the embeddings, layers and the final pre-LN norm of one stack."""
    embeddings = stack_spec.embeddings[0] if isinstance(stack_spec.embeddings, list) else stack_spec.embeddings
    embeddings.weight = _array(stack.embed_tokens.weight)
    stack_spec.scale_embeddings = float(stack.embed_scale)
    EXPORTABLE[stack.config.position_encoding][1](stack_spec, stack)
    if stack.layer_norm is not None:
        _set_layer_norm(stack_spec.layer_norm, stack.layer_norm)
    if stack.layernorm_embedding is not None:
        _set_layer_norm(stack_spec.layernorm_embedding, stack.layernorm_embedding)
    for layer_spec, layer in zip(stack_spec.layer, stack.layers, strict=True):
        _set_attention(layer_spec.self_attention, layer.self_attn, self_attention=True)
        _set_layer_norm(layer_spec.self_attention.layer_norm, layer.self_attn_layer_norm)
        if hasattr(layer, "encoder_attn"):
            _set_attention(layer_spec.attention, layer.encoder_attn, self_attention=False)
            _set_layer_norm(layer_spec.attention.layer_norm, layer.encoder_attn_layer_norm)
        _set_linear(layer_spec.ffn.linear_0, layer.fc1)
        if layer.fc_up is not None:  # gated_feed_forward: CTranslate2's `ffn_glu`, the activated branch first
            _set_linear(layer_spec.ffn.linear_0_noact, layer.fc_up)
        _set_linear(layer_spec.ffn.linear_1, layer.fc2)
        _set_layer_norm(layer_spec.ffn.layer_norm, layer.final_layer_norm)


def build_spec(ctranslate2: ModuleType, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
    """The `TransformerSpec` of `model`, its weights set, its vocabulary and special tokens registered."""
    specs = ctranslate2.specs
    config = model.config
    options = {
        "pre_norm": config.normalize_before,  # with pre-LN, posformer's stacks end with a LayerNorm, as CT2's
        "activation": getattr(specs.common_spec.Activation, ACTIVATIONS[config.activation_function]),
        "layernorm_embedding": config.layernorm_embedding,
        "rms_norm": config.norm_type == "rms_norm",
        "ffn_glu": config.gated_feed_forward,
        **EXPORTABLE[config.position_encoding][0](config),
    }
    encoder = specs.TransformerEncoderSpec(config.encoder_layers, config.encoder_attention_heads, **options)
    decoder = specs.TransformerDecoderSpec(config.decoder_layers, config.decoder_attention_heads, **options)
    spec = specs.TransformerSpec(encoder, decoder)
    _set_stack(spec.encoder, model.model.encoder)
    _set_stack(spec.decoder, model.model.decoder)
    _set_linear(spec.decoder.projection, model.lm_head)
    if model.final_logits_bias is not None:
        spec.decoder.projection.bias = _array(model.final_logits_bias[0])
    if model.output_scale != 1.0:  # scale_decoder_output (T5 v1.0's tied head)
        spec.decoder.scale_outputs = model.output_scale

    tokens = vocabulary(model, tokenizer)
    spec.register_source_vocabulary(tokens)
    spec.register_target_vocabulary(tokens)
    spec.config.bos_token = tokens[config.bos_token_id] if config.bos_token_id is not None else tokens[0]
    spec.config.eos_token = tokens[_single_eos(config)]
    spec.config.decoder_start_token = tokens[config.decoder_start_token_id]
    if tokenizer.unk_token is not None:
        spec.config.unk_token = tokenizer.unk_token
    spec.config.layer_norm_epsilon = model.model.encoder.layers[0].final_layer_norm.eps
    return spec


def converter(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
    """A CTranslate2 `Converter` of `model`: `converter(model, tokenizer).convert(folder, quantization=...)`."""
    ctranslate2 = import_ctranslate2()

    class PosformerConverter(ctranslate2.converters.Converter):
        """CTranslate2's converter framework (validation, quantization, saving) over posformer's spec."""

        def _load(self):
            return build_spec(ctranslate2, model, tokenizer)

    return PosformerConverter()


# ---------------------------------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------------------------------


def _move_beside(source: Path, folder: Path) -> None:
    """Move every file of `source` into `folder`; `FileExistsError` rather than replace one of its files."""
    for path in sorted(source.iterdir()):
        target = folder / path.name
        if target.exists():
            raise FileExistsError(
                f"{path.name} would replace CTranslate2's file of that name in {folder}; nothing was exported."
            )
        os.replace(path, target)


def export_ctranslate2(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike,
    quantization: str | None = None,
    generation_config: GenerationConfig | None = None,
) -> Path:
    """Write `model` as a CTranslate2 model folder to `out_dir`, atomically, and return `out_dir`.

    The folder holds CTranslate2's `model.bin`, `config.json` and `shared_vocabulary.json`, the tokenizer's files
    (`tokenizer.save_pretrained`) and `generation_config.json` (`generation_config`, default the model's). Load it
    with `ctranslate2.Translator(out_dir)` and `AutoTokenizer.from_pretrained(out_dir)`; translate the tokens of
    `tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)` (CTranslate2 adds no special token to the source,
    and starts the target with `config.decoder_start_token_id`'s token, which its output leaves out).

    `quantization` is one of `QUANTIZATIONS` (None: float32). What CTranslate2 cannot compute exactly raises
    `ValueError` (`check_exportable`), a missing ctranslate2 `CTranslate2NotInstalledError`, before anything is
    written; any failure leaves `out_dir` as it was (`atomic_directory`).
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"export_ctranslate2 needs a PreTrainedModel, got {type(model).__name__}; unwrap it first.")
    check_exportable(model, quantization)
    model_converter = converter(model, tokenizer)
    generation_config = generation_config if generation_config is not None else model.generation_config
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staging, torch.no_grad():
        model_converter.convert(str(staging), quantization=quantization, force=True)
        with tempfile.TemporaryDirectory(dir=staging) as hf_files:
            _save_tokenizer_with_limit(tokenizer, hf_files, max_input_length(model.config))
            generation_config.save_pretrained(hf_files)
            _move_beside(Path(hf_files), staging)
    return out_dir


def _save_tokenizer_with_limit(tokenizer: PreTrainedTokenizerBase, folder: str, limit: int | None) -> None:
    """`tokenizer.save_pretrained(folder)`, its `model_max_length` lowered to `limit` (the exported position table):
    a CTranslate2 folder has no model config, so the tokenizer is where `posformer-translate` reads how long a
    source may be. `tokenizer` itself is left as it was."""
    original = tokenizer.model_max_length
    if limit is not None and limit < original:
        tokenizer.model_max_length = limit
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = original


def max_input_length(config) -> int | None:
    """The longest input (source or target, in tokens) the exported model takes: the position table's rows for
    `none`, `sinusoidal` and `learned`, None (any length) for the relative encodings."""
    return config.max_position_embeddings if config.position_encoding in ("none", "sinusoidal", "learned") else None


__all__ = [
    "ACTIVATIONS",
    "CTranslate2NotInstalledError",
    "EXPORTABLE",
    "INSTALL_HINT",
    "QUANTIZATIONS",
    "check_exportable",
    "export_ctranslate2",
    "exportable_encodings",
    "max_input_length",
]
