"""`PosformerConfig`: the configuration of the posformer encoder-decoder Transformer.

Field names follow transformers' Marian and BART configs (`d_model`, `encoder_layers`,
`encoder_attention_heads`, `encoder_ffn_dim`, ...) so that users' habits carry over; the usual
aliases (`hidden_size`, `num_attention_heads`, `num_hidden_layers`) map onto them. The defaults are
the base model of Vaswani et al. (2017), "Attention Is All You Need": 6+6 layers, width 512,
8 heads, FFN 2048, ReLU, dropout 0.1, post-LN, scaled embeddings, fixed sinusoids. The other architecture
choices (pre-norm, RMSNorm, a norm of the embeddings, no biases, unscaled scores, a gated feed-forward network, a
logits bias, ...) are what BART, mBART, Marian and T5 need (`posformer.modeling.convert_from_transformers`), and
combine with every position encoding.
"""

import difflib
import math
import typing
from dataclasses import Field, fields

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.utils import logging

from .transformers_compat import CACHE_NAME

logger = logging.get_logger(__name__)

NORM_TYPES = ("layer_norm", "rms_norm")
"""`norm_type` values: `nn.LayerNorm` (Ba et al., 2016) or `nn.RMSNorm` (Zhang & Sennrich, 2019: no mean, no bias)."""

KEYS_SAVED_BESIDE_FIELDS = frozenset({"model_type", "auto_map", "custom_pipelines", "_name_or_path"})
"""What a config.json written by transformers 5.20-5.24 holds besides the fields, which `PreTrainedConfig` sets back
as plain attributes: the model type, the remote-code entries (`remote_code.save_remote_code`) and the checkpoint path
of an undiffed `to_dict()`. Everything else it saves is a field, or a key it consumes (`torch_dtype`,
`output_attentions`, ...)."""


@strict
class PosformerConfig(PreTrainedConfig):
    r"""Configuration of a [`PosformerModel`] / [`PosformerForConditionalGeneration`].

    Every value is checked when the config is built; a bad value raises `ValueError` naming the field,
    the value and what to change. A key that is neither a field nor one transformers knows (a typo such as
    `d_modle`) is kept, as transformers keeps it, but logged as a warning with the closest field: configs written by
    other transformers releases carry keys this one does not know and must still load.

    Example:
    ```python
    >>> import posformer.modeling  # registers the Auto classes
    >>> from transformers import AutoConfig
    >>> config = AutoConfig.for_model("posformer", position_encoding="rope", d_model=256)
    ```
    """

    model_type = "posformer"
    keys_to_ignore_at_inference = [CACHE_NAME]  # the Trainer leaves the cache out of predictions
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "encoder_attention_heads",
        "num_hidden_layers": "encoder_layers",
    }

    # --- sizes -----------------------------------------------------------------------------------
    vocab_size: int = 32000
    d_model: int = 512
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    max_position_embeddings: int = 1024

    # --- regularisation and activation ------------------------------------------------------------
    activation_function: str = "relu"
    dropout: float | int = 0.1
    attention_dropout: float | int = 0.0
    activation_dropout: float | int = 0.0

    # --- architecture choices (the paper's by default; `convert_from_transformers` sets the others) ---
    scale_embedding: bool = True  # multiply token embeddings by sqrt(d_model), as the paper does
    normalize_before: bool = False  # False: post-norm as in the paper; True: pre-norm plus a final norm per stack
    norm_type: str = "layer_norm"  # "layer_norm" (the paper, BART, Marian) or "rms_norm" (T5: no mean, no bias)
    layer_norm_eps: float = 1e-5  # epsilon of every norm (T5 uses 1e-6)
    layernorm_embedding: bool = False  # a norm of the embeddings (positions included) before the first layer (BART)
    head_dim: int | None = None  # per-head size; None: d_model / heads (T5 v1.1 and mT5 set it apart)
    projection_bias: bool = True  # biases of the attention projections and feed-forward layers (T5: none)
    scale_attention_scores: bool = True  # divide q.k by sqrt(head size); T5 folds the scaling into its init
    gated_feed_forward: bool = False  # fc2(act(fc1 x) * fc_up x), the GLU variants of Shazeer (2020) (T5 v1.1)
    final_logits_bias: bool = False  # a (1, V) bias buffer added to the logits (BART, Marian)
    scale_decoder_output: bool = False  # decoder output times d_model^-0.5 before the LM head (T5 v1.0's tied head)
    tie_word_embeddings: bool = True  # LM head shares the (source/target) token embedding matrix
    share_encoder_decoder_embeddings: bool = True  # False: separate source and target vocabularies (some Marian)
    decoder_vocab_size: int | None = None  # the target vocabulary (None: vocab_size; another size needs separate ones)
    init_std: float = 0.02

    # --- position encoding ------------------------------------------------------------------------
    position_encoding: str = "sinusoidal"
    shaw_max_distance: int = 16  # only used when position_encoding="shaw": clip distance k
    t5_num_buckets: int = 32  # only used when position_encoding="t5"
    t5_max_distance: int = 128  # only used when position_encoding="t5"
    rope_theta: float | int = 10000.0  # only used when position_encoding="rope": rotary base
    hadamard_gain: float | int = 0.5  # only used when position_encoding="hadamard": initial gain of 1 + g*sin

    # --- special tokens and generation ------------------------------------------------------------
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    decoder_start_token_id: int | None = 1
    use_cache: bool = True
    is_encoder_decoder: bool = True
    is_decoder: bool = False

    def __post_init__(self, **kwargs):
        # Checkpoints saved before label smoothing became the training recipe's alone (posformer-train's
        # --label_smoothing, Seq2SeqTrainer's --label_smoothing_factor) stored it here; the model never smooths.
        kwargs.pop("label_smoothing", None)
        super().__post_init__(**kwargs)  # first: it maps the aliases (`hidden_size`, ...) onto the fields checked here
        if self.decoder_vocab_size is None:  # as Marian's: transformers reads the decoder's vocabulary from it
            self.decoder_vocab_size = self.vocab_size
        self._warn_about_unknown_keys(kwargs)
        self._check_values()

    def _warn_about_unknown_keys(self, kwargs: dict) -> None:
        """Log a warning for each key of `kwargs` (what was passed besides the fields) that no class knows.

        transformers' `PreTrainedConfig.__post_init__` consumes the keys it knows (aliases of `attribute_map`, the
        generation parameters old configs carried, `torch_dtype`, `attn_implementation`, ...) and sets every other
        one as a plain attribute; of those, only `KEYS_SAVED_BESIDE_FIELDS` are ours."""
        for key in kwargs:
            if key in vars(self) and key not in KEYS_SAVED_BESIDE_FIELDS:
                suggestion = self._closest_field(key)
                logger.warning(
                    f"PosformerConfig got an unknown key {key!r}, which no part of the model reads. {suggestion}"
                )

    def _closest_field(self, key: str) -> str:
        """A suggestion for an unknown `key`: the closest field or alias, if one is close."""
        names = [field.name for field in fields(self)] + list(self.attribute_map)
        closest = difflib.get_close_matches(key, names, n=1)
        if closest:
            return f"Did you mean {closest[0]!r}?"
        return "Check its spelling against the fields of PosformerConfig."

    def _check_values(self) -> None:
        """Raise `ValueError` for any value the model cannot be built with, saying what to change."""
        # Imported here, not at the top: the modeling package imports this module.
        from ..modeling.position_encodings import POSITION_ENCODINGS

        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(
                f"Unknown position_encoding={self.position_encoding!r}. "
                f"Choose one of: {', '.join(sorted(POSITION_ENCODINGS))}."
            )
        for field in self._float_fields():
            if not math.isfinite(getattr(self, field.name)):
                raise ValueError(
                    f"{field.name} must be a finite number, got {getattr(self, field.name)} (the default is "
                    f"{field.default})."
                )
        positive = (
            "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.head_dim is not None and self.head_dim <= 0:
            raise ValueError(f"head_dim must be a positive integer or None (d_model / heads), got {self.head_dim}.")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, name)
            if self.head_dim is None and self.d_model % heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by {name}={heads}: every head gets "
                    f"d_model / heads dimensions. Pick a d_model that is a multiple of {heads}, or a head "
                    f"count that divides {self.d_model}, or set head_dim."
                )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}.")
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"Unknown norm_type={self.norm_type!r}. Choose one of: {', '.join(NORM_TYPES)}.")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}.")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be positive, got {self.init_std}.")
        self._check_vocabularies()
        self._check_token_ids()
        POSITION_ENCODINGS[self.position_encoding].check_config(self)  # the encoding's own fields and needs
        if self.activation_function not in ACT2FN:
            raise ValueError(
                f"Unknown activation_function={self.activation_function!r}. Choose one of: {', '.join(sorted(ACT2FN))}."
            )

    def target_vocab_size(self) -> int:
        """The decoder's vocabulary (its embedding rows, the LM head's outputs): `decoder_vocab_size`, which is
        `vocab_size` unless the vocabularies are separate."""
        return self.decoder_vocab_size if self.decoder_vocab_size is not None else self.vocab_size

    def _check_vocabularies(self) -> None:
        if self.decoder_vocab_size is not None and self.decoder_vocab_size <= 0:
            raise ValueError(f"decoder_vocab_size must be a positive integer or None, got {self.decoder_vocab_size}.")
        if self.share_encoder_decoder_embeddings and self.decoder_vocab_size != self.vocab_size:
            raise ValueError(
                f"decoder_vocab_size={self.decoder_vocab_size} differs from vocab_size={self.vocab_size}, but "
                "share_encoder_decoder_embeddings=True gives both stacks one embedding matrix. Set "
                "share_encoder_decoder_embeddings=False for separate source and target vocabularies."
            )

    def attention_head_dim(self, num_heads: int) -> int:
        """The per-head size `D` of an attention with `num_heads` heads: `head_dim`, else `d_model / num_heads`."""
        return self.head_dim if self.head_dim is not None else self.d_model // num_heads

    @classmethod
    def _float_fields(cls) -> list[Field]:
        """The fields annotated `float` (or `float | int`)."""
        return [field for field in fields(cls) if field.type is float or float in typing.get_args(field.type)]

    def _check_token_ids(self) -> None:
        """Every `*_token_id` field (an id, a list of ids for `eos_token_id`, or None) is a row of the embedding table:
        a negative id would silently wrap around to its last rows, a larger one fail deep in the forward pass."""
        size = min(self.vocab_size, self.target_vocab_size())  # the pad id pads both; the others are target ids
        for name in (field.name for field in fields(self) if field.name.endswith("_token_id")):
            value = getattr(self, name)
            ids = value if isinstance(value, list) else [value]
            if any(token_id is not None and not 0 <= token_id < size for token_id in ids):
                sizes = f"vocab_size={self.vocab_size}"
                if size != self.vocab_size:
                    sizes = (
                        f"the smaller of vocab_size={self.vocab_size} and decoder_vocab_size={self.decoder_vocab_size}"
                    )
                raise ValueError(
                    f"{name}={value} is outside the vocabulary [0, {sizes}): a token id is a row of the embedding "
                    f"table. Set {name} to an id of the tokenizer, or None, or raise vocab_size."
                )


__all__ = ["PosformerConfig"]
