"""`PosformerConfig`: the configuration of the posformer encoder-decoder Transformer.

Field names follow transformers' Marian and BART configs (`d_model`, `encoder_layers`,
`encoder_attention_heads`, `encoder_ffn_dim`, ...) so that users' habits carry over; the usual
aliases (`hidden_size`, `num_attention_heads`, `num_hidden_layers`) map onto them. The defaults are
the base model of Vaswani et al. (2017), "Attention Is All You Need": 6+6 layers, width 512,
8 heads, FFN 2048, ReLU, dropout 0.1, post-LN, scaled embeddings, fixed sinusoids.
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from .transformers_compat import CACHE_NAME


@strict
class PosformerConfig(PreTrainedConfig):
    r"""Configuration of a [`PosformerModel`] / [`PosformerForConditionalGeneration`].

    Every value is checked when the config is built; a bad value raises `ValueError` naming the field,
    the value and what to change.

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

    # --- architecture choices ---------------------------------------------------------------------
    scale_embedding: bool = True  # multiply token embeddings by sqrt(d_model), as the paper does
    normalize_before: bool = False  # False: post-LN as in the paper; True: pre-LN plus a final LayerNorm
    tie_word_embeddings: bool = True  # LM head shares the (source/target) token embedding matrix
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
        self._check_values()
        super().__post_init__(**kwargs)

    def _check_values(self) -> None:
        """Raise `ValueError` for any value the model cannot be built with, saying what to change."""
        # Imported here, not at the top: the modeling package imports this module.
        from ..modeling.position_encodings import POSITION_ENCODINGS

        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(
                f"Unknown position_encoding={self.position_encoding!r}. "
                f"Choose one of: {', '.join(sorted(POSITION_ENCODINGS))}."
            )
        positive = (
            "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
            "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            heads = getattr(self, name)
            if self.d_model % heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by {name}={heads}: every head gets "
                    f"d_model / heads dimensions. Pick a d_model that is a multiple of {heads}, or a head "
                    f"count that divides {self.d_model}."
                )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}.")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be positive, got {self.init_std}.")
        POSITION_ENCODINGS[self.position_encoding].check_config(self)  # the encoding's own fields and needs
        if self.activation_function not in ACT2FN:
            raise ValueError(
                f"Unknown activation_function={self.activation_function!r}. Choose one of: {', '.join(sorted(ACT2FN))}."
            )


__all__ = ["PosformerConfig"]
