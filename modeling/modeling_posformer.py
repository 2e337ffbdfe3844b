"""posformer: the encoder-decoder Transformer of Vaswani et al. (2017) with a configurable position encoding.

Shape legend: B batch, S source length, T target length (new tokens this step), P cached target
length, q/k query/key length, H heads, D head size, d d_model, V vocabulary.

In data-flow order: the eager attention function, attention, the residual sub-layer, encoder and
decoder layers, the encoder and decoder stacks, the pretrained base, the model, and the
conditional-generation head. Position encodings live in `position_encodings.py`; each stack builds its
encoding's tensors once per forward (`AttentionPositions`) and hands them to every layer.

Layer and parameter names are transformers' BART/Marian names (`self_attn`, `encoder_attn`,
`q_proj/k_proj/v_proj/out_proj`, `fc1/fc2`, `embed_tokens`), so Marian weights copy over one to one.
"""

import dataclasses
import importlib
import math
import os
import shutil
from collections.abc import Callable, Iterator

import torch
from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutput,
    BaseModelOutputWithPastAndCrossAttentions,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import SAFE_WEIGHTS_NAME, TransformersKwargs, cached_file, can_return_tuple, logging
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ..configuration.configuration_posformer import PosformerConfig
from ..configuration.transformers_compat import CACHE_NAME, hidden_states_recorder, resolve_cache
from .input_checks import (
    check_attention_mask,
    check_encoder_states,
    check_generation_arguments,
    check_labels,
    check_position_ids,
    check_stack_inputs,
)
from .position_encodings import (
    POSITION_ENCODINGS,
    AttentionPositions,
    PositionEncoding,
    RelativeAttentionTerm,
    apply_rotary,
    encodings_where,
)

logger = logging.get_logger(__name__)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Teacher-forcing decoder inputs: `(B, T)` labels shifted right behind the start token, -100 -> pad."""
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention: `softmax(q k^T * scaling + position_bias + mask) v`.

    Args:
        query: `(B, H, q, D)`; key, value: `(B, H, k, D)`.
        attention_mask: `(B, 1, q, k)` additive float mask (eager), boolean keep-mask (built for sdpa,
            when an encoding sends one attention to this path), or None.
        position_bias: `(B, H, q, k)` added to the scaled scores, as transformers' kernels add it.
    Returns:
        `(B, q, H, D)` output and `(B, H, q, k)` probabilities (after dropout).
    """
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class PosformerAttention(nn.Module):
    """Multi-head attention (Vaswani et al., 2017) dispatched through transformers' attention interface.

    Self-attention receives its stack's `AttentionPositions` (rotary angles, score bias) and, for
    encodings with per-layer terms, owns a `relative_term`. Cross-attention gets no position term.
    """

    def __init__(
        self,
        config: PosformerConfig,
        num_heads: int,
        is_causal: bool,
        layer_idx: int,
        relative_term: RelativeAttentionTerm | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = config.attention_head_dim(num_heads)
        self.scaling = self.head_dim**-0.5 if config.scale_attention_scores else 1.0
        self.dropout = config.attention_dropout
        self.is_causal = is_causal  # read by the sdpa kernel when no mask is given
        self.layer_idx = layer_idx
        inner_dim, bias = num_heads * self.head_dim, config.projection_bias
        self.q_proj = nn.Linear(config.d_model, inner_dim, bias=bias)
        self.k_proj = nn.Linear(config.d_model, inner_dim, bias=bias)
        self.v_proj = nn.Linear(config.d_model, inner_dim, bias=bias)
        self.out_proj = nn.Linear(inner_dim, config.d_model, bias=bias)
        self.relative_term = relative_term
        encoding = POSITION_ENCODINGS[config.position_encoding]
        self.needs_weights = relative_term is not None and encoding.needs_attention_weights

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        positions: AttentionPositions | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(B, q, d)` hidden states (and `(B, S, d)` encoder states for cross-attention) -> `(B, q, d)`."""
        is_cross_attention = key_value_states is not None
        input_shape = hidden_states.shape[:-1]
        query = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)  # (B, H, q, D)

        layer_cache = cache
        if isinstance(cache, EncoderDecoderCache):
            layer_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
        if is_cross_attention and layer_cache is not None and cache.is_updated.get(self.layer_idx):
            # the encoder's keys and values were projected at the first step; reuse them
            key, value = layer_cache.layers[self.layer_idx].keys, layer_cache.layers[self.layer_idx].values
        else:
            source = key_value_states if is_cross_attention else hidden_states
            kv_shape = (*source.shape[:-1], -1, self.head_dim)
            key = self.k_proj(source).view(kv_shape).transpose(1, 2)  # (B, H, k, D)
            value = self.v_proj(source).view(kv_shape).transpose(1, 2)
            if positions is not None and positions.rotary is not None:
                query, key = apply_rotary(query, key, *positions.rotary)
            if layer_cache is not None:
                key, value = layer_cache.update(key, value, self.layer_idx)
                if is_cross_attention:
                    cache.is_updated[self.layer_idx] = True

        position_bias = positions.bias if positions is not None else None
        if self.relative_term is not None:
            layer_bias = self.relative_term.score_bias(query, key, positions, self.scaling)
            position_bias = layer_bias if position_bias is None else position_bias + layer_bias
        if position_bias is not None and "flex" in self.config._attn_implementation:
            # flex indexes the bias by batch row, so it cannot broadcast a batch of 1
            position_bias = position_bias.expand(query.shape[0], -1, -1, -1)

        attention_interface: Callable = eager_attention_forward
        if not self.needs_weights:
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        elif self.config._attn_implementation != "eager" and not torch.compiler.is_compiling():
            logger.warning_once(
                f"position_encoding={self.config.position_encoding!r} adds relative value embeddings weighted by "
                f"the attention probabilities, which {self.config._attn_implementation!r} does not return: its "
                "self-attention runs on the eager path (same results; cross-attention keeps the fast kernel)."
            )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout if self.training else 0.0,
            scaling=self.scaling,
            position_bias=position_bias,
            **kwargs,
        )
        if self.needs_weights:
            attn_output = attn_output + self.relative_term.value_term(attn_weights, positions).transpose(1, 2)
        attn_output = self.out_proj(attn_output.reshape(*input_shape, -1))
        return attn_output, attn_weights


def make_norm(config: PosformerConfig) -> nn.LayerNorm | nn.RMSNorm:
    """The config's normalisation over `d_model` features: `nn.LayerNorm` (Ba et al., 2016) or `nn.RMSNorm`
    (Zhang & Sennrich, 2019; T5's layer norm: `x / sqrt(mean(x^2) + eps) * weight`, no mean, no bias)."""
    if config.norm_type == "rms_norm":
        return nn.RMSNorm(config.d_model, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)


def residual_sublayer(
    hidden_states: torch.Tensor,
    sublayer: Callable[[torch.Tensor], torch.Tensor],
    layer_norm: nn.Module,
    dropout: float,
    normalize_before: bool,
    training: bool,
) -> torch.Tensor:
    """`Norm(x + Dropout(f(x)))` (post-norm, the paper) or `x + Dropout(f(Norm(x)))` (pre-norm)."""
    if normalize_before:
        return hidden_states + nn.functional.dropout(sublayer(layer_norm(hidden_states)), dropout, training)
    return layer_norm(hidden_states + nn.functional.dropout(sublayer(hidden_states), dropout, training))


class PosformerLayer(GradientCheckpointingLayer):
    """What encoder and decoder layers share: residual sub-layers and the position-wise feed-forward
    network `fc2(Dropout(act(fc1(x))))`, or with `gated_feed_forward` `fc2(Dropout(act(fc1(x)) * fc_up(x)))`
    (GEGLU, ReGLU, SwiGLU, ...: Shazeer, 2020, "GLU Variants Improve Transformer"; T5 v1.1's `wi_0`, `wi_1`, `wo`)."""

    def __init__(self, config: PosformerConfig, ffn_dim: int) -> None:
        super().__init__()
        self.dropout = config.dropout
        self.normalize_before = config.normalize_before
        self.activation_fn = ACT2FN[config.activation_function]
        self.activation_dropout = config.activation_dropout
        bias = config.projection_bias
        self.fc1 = nn.Linear(config.d_model, ffn_dim, bias=bias)
        self.fc_up = nn.Linear(config.d_model, ffn_dim, bias=bias) if config.gated_feed_forward else None
        self.fc2 = nn.Linear(ffn_dim, config.d_model, bias=bias)
        self.final_layer_norm = make_norm(config)

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states, inputs = self.activation_fn(self.fc1(hidden_states)), hidden_states
        if self.fc_up is not None:
            hidden_states = hidden_states * self.fc_up(inputs)
        hidden_states = nn.functional.dropout(hidden_states, p=self.activation_dropout, training=self.training)
        return self.fc2(hidden_states)

    def sublayer(
        self,
        hidden_states: torch.Tensor,
        sublayer: Callable[[torch.Tensor], torch.Tensor],
        layer_norm: nn.Module,
    ) -> torch.Tensor:
        return residual_sublayer(
            hidden_states, sublayer, layer_norm, self.dropout, self.normalize_before, self.training
        )

    @staticmethod
    def positions_with_bias(
        positions: AttentionPositions | None, position_bias: torch.Tensor | None
    ) -> AttentionPositions | None:
        """`positions` carrying `position_bias`, the stack's score bias, which the stack also passes positionally.

        Under reentrant gradient checkpointing only positional tensors are checkpoint inputs: the recomputed layer
        must use that copy (detached by the checkpoint, its gradient handed back once per layer), not the stack's
        tensor, whose graph every layer's backward would otherwise traverse again (`t5`'s learned bias: "Trying to
        backward through the graph a second time"). Without checkpointing the two are the same tensor."""
        if positions is None or position_bias is None:
            return positions
        return dataclasses.replace(positions, bias=position_bias)


class PosformerEncoderLayer(PosformerLayer):
    """Self-attention then feed-forward, each a residual sub-layer."""

    def __init__(self, config: PosformerConfig, layer_idx: int, relative_term: RelativeAttentionTerm | None) -> None:
        super().__init__(config, config.encoder_ffn_dim)
        self.self_attn = PosformerAttention(
            config,
            config.encoder_attention_heads,
            is_causal=False,
            layer_idx=layer_idx,
            relative_term=relative_term,
        )
        self.self_attn_layer_norm = make_norm(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        positions: AttentionPositions | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        positions = self.positions_with_bias(positions, position_bias)

        def self_attention(x: torch.Tensor) -> torch.Tensor:
            return self.self_attn(x, attention_mask=attention_mask, positions=positions, **kwargs)[0]

        hidden_states = self.sublayer(hidden_states, self_attention, self.self_attn_layer_norm)
        return self.sublayer(hidden_states, self.feed_forward, self.final_layer_norm)


class PosformerDecoderLayer(PosformerLayer):
    """Causal self-attention, cross-attention over the encoder output, then feed-forward. Without encoder states
    (the decoder run alone, as BART's and Marian's can be) the cross-attention sub-layer is skipped."""

    def __init__(self, config: PosformerConfig, layer_idx: int, relative_term: RelativeAttentionTerm | None) -> None:
        super().__init__(config, config.decoder_ffn_dim)
        heads = config.decoder_attention_heads
        self.self_attn = PosformerAttention(
            config, heads, is_causal=True, layer_idx=layer_idx, relative_term=relative_term
        )
        self.self_attn_layer_norm = make_norm(config)
        self.encoder_attn = PosformerAttention(config, heads, is_causal=False, layer_idx=layer_idx)
        self.encoder_attn_layer_norm = make_norm(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        positions: AttentionPositions | None = None,
        cache: Cache | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """The stack passes the cache under the installed transformers' name (`CACHE_NAME`), which is the keyword
        `GradientCheckpointingLayer` clears when it recomputes this layer."""
        cache = resolve_cache(cache, past_key_values)
        positions = self.positions_with_bias(positions, position_bias)

        def self_attention(x: torch.Tensor) -> torch.Tensor:
            return self.self_attn(x, attention_mask=attention_mask, cache=cache, positions=positions, **kwargs)[0]

        def cross_attention(x: torch.Tensor) -> torch.Tensor:
            return self.encoder_attn(
                x,
                key_value_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                cache=cache,
                **kwargs,
            )[0]

        hidden_states = self.sublayer(hidden_states, self_attention, self.self_attn_layer_norm)
        if encoder_hidden_states is not None:
            hidden_states = self.sublayer(hidden_states, cross_attention, self.encoder_attn_layer_norm)
        return self.sublayer(hidden_states, self.feed_forward, self.final_layer_norm)


def check_attention_backend(position_encoding: str, implementation: str | None) -> None:
    """Raise `ValueError` when the requested attention kernel cannot compute the encoding's maths."""
    if implementation is None:
        return
    encoding = POSITION_ENCODINGS[position_encoding]
    if "flash" in implementation and encoding.adds_score_bias:
        raise ValueError(
            f"position_encoding={position_encoding!r} adds a bias to the attention scores, which "
            f"attn_implementation={implementation!r} cannot apply (it would be silently dropped). Use "
            "attn_implementation='sdpa' (default) or 'eager', or an encoding without a score bias: "
            f"{', '.join(encodings_where(lambda encoding: not encoding.adds_score_bias))}."
        )
    if "flex" in implementation and encoding.needs_attention_weights:
        raise ValueError(
            f"position_encoding={position_encoding!r} needs the attention probabilities for its relative "
            f"value term, which attn_implementation={implementation!r} does not return. Use "
            "attn_implementation='sdpa' (default; its self-attention runs eagerly) or 'eager'."
        )


class PosformerPreTrainedModel(PreTrainedModel):
    config: PosformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True  # only for encodings without a score bias: see `check_attention_backend`
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _no_split_modules = ["PosformerEncoderLayer", "PosformerDecoderLayer"]

    def embedding_ties(self) -> dict[str, str]:
        """`{tied: source}` names of token embeddings that are one matrix whatever `tie_word_embeddings` says (the
        encoder's and decoder's tables are `shared`); `tie_word_embeddings` decides only whether the head is tied."""
        return {}

    def get_expanded_tied_weights_keys(self, all_submodels: bool = False) -> dict[str, str]:
        """transformers' `{tied: source}` parameter names, with `embedding_ties` kept under
        `tie_word_embeddings=False` (transformers ties nothing at all then; T5 v1.1 and flan-T5 still share one
        embedding between encoder and decoder, with an untied head).

        Each stack owns its `embed_tokens`, tied to `shared` by name as Marian's are, so that loading sees every
        tied name: a checkpoint that holds the table under any one of them (`lm_head.weight` included) loads
        complete, and one that holds none reports it missing."""
        tied = super().get_expanded_tied_weights_keys(all_submodels)
        return tied if all_submodels else {**self.embedding_ties(), **tied}

    def _check_and_adjust_attn_implementation(self, attn_implementation: str | None, *args, **kwargs) -> str:
        """transformers' check of a requested kernel, after posformer's: from 5.25, with the `kernels` library
        installed, transformers fetches a Hub kernel for a flash attention that is not installed before it asks
        `get_correct_attn_implementation`, and a machine offline would get a download error instead of the reason."""
        check_attention_backend(self.config.position_encoding, attn_implementation)
        return super()._check_and_adjust_attn_implementation(attn_implementation, *args, **kwargs)

    def get_correct_attn_implementation(self, requested_attention: str | None, is_init_check: bool = False) -> str:
        check_attention_backend(self.config.position_encoding, requested_attention)
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, (PositionEncoding, RelativeAttentionTerm)):
            module.init_weights(self.config)
        if isinstance(module, PosformerAttention) and not self.config.scale_attention_scores:
            # unscaled scores (T5): the queries start 1/sqrt(D) smaller, so the scores start as the scaled ones would
            init.normal_(module.q_proj.weight, std=self.config.init_std * module.head_dim**-0.5)
        if isinstance(module, PosformerForConditionalGeneration) and module.final_logits_bias is not None:
            init.zeros_(module.final_logits_bias)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with an error naming the weights file when it is truncated or corrupt
        (safetensors' own message names no file)."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            weights = os.path.join(str(pretrained_model_name_or_path), SAFE_WEIGHTS_NAME)
            if not os.path.isfile(weights):
                weights = try_to_load_from_cache(str(pretrained_model_name_or_path), SAFE_WEIGHTS_NAME) or weights
            raise OSError(
                f"Cannot read the weights in {weights}: the file is truncated or corrupt ({error}). Download or "
                "save the checkpoint again."
            ) from error

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, *args, **kwargs) -> None:
        """`PreTrainedModel.save_pretrained`, and the folder becomes a complete Hub model repository.

        posformer's `remote_code.save_remote_code` first writes a flat copy of this code beside the weights and
        names it in the config (`auto_map`, `custom_pipelines`), so `trust_remote_code=True` loads the checkpoint
        where posformer is not installed. A copy of this file loaded as remote code has no `remote_code` module
        (it is imported by name so that the copy does not need it): there transformers copies the model's code
        itself, and the config keeps the entries it was loaded with.
        """
        remote_code = _remote_code_module()
        if remote_code is not None and is_main_process:
            remote_code.save_remote_code(self.config, save_directory)  # before config.json, which names it
        elif is_main_process:
            _copy_pipeline_code(self.config, save_directory)
        super().save_pretrained(save_directory, is_main_process, *args, **kwargs)

    def _get_files_timestamps(self, working_dir: str | os.PathLike) -> dict[str, float]:
        """The snapshot `save_pretrained(push_to_hub=True)` takes to upload only what it changed. It is taken after
        the code files above were written, so they are left out of it: they always upload with the weights."""
        timestamps = super()._get_files_timestamps(working_dir)
        remote_code = _remote_code_module()
        for name in remote_code.remote_code_file_names() if remote_code is not None else []:
            timestamps.pop(name, None)
        return timestamps


def _copy_pipeline_code(config: PosformerConfig, save_directory: str | os.PathLike) -> None:
    """In a copy of this file loaded as remote code, write the pipeline file that `config.custom_pipelines` names.

    transformers re-saves the model's own code and what it imports, but nothing imports the pipeline file. It is
    taken from beside this file, else from the checkpoint it was loaded from (the Hub cache works offline)."""
    for task, entry in (getattr(config, "custom_pipelines", None) or {}).items():
        name = entry["impl"].split(".")[0] + ".py"
        source = os.path.join(os.path.dirname(__file__), name)
        if not os.path.isfile(source):
            source = cached_file(config._name_or_path, name, _raise_exceptions_for_missing_entries=False)
        if source is None:
            logger.warning(f"{name} (the {task!r} pipeline) was not found; the saved checkpoint loads without it.")
            continue
        os.makedirs(save_directory, exist_ok=True)
        shutil.copyfile(source, os.path.join(save_directory, name))


def _remote_code_module():
    """posformer's `remote_code` module, or None in a flat copy of this file loaded as remote code."""
    try:
        return importlib.import_module(".remote_code", __package__)
    except ModuleNotFoundError as error:
        if error.name != f"{__package__}.remote_code":
            raise
        return None


class PosformerStack(PosformerPreTrainedModel):
    """What the encoder and decoder share: token embeddings (scaled), the position encoding, an optional norm of the
    embeddings, layers, and, with pre-norm, a final norm."""

    causal: bool
    layer_class: type[PosformerEncoderLayer]
    argument_prefix: str  # what the encoder-decoder model's forward puts before this stack's argument names

    def __init__(self, config: PosformerConfig, num_layers: int, heads: int):
        super().__init__(config)
        self.dropout = config.dropout
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        vocab_size = config.target_vocab_size() if self.causal else config.vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, config.d_model, config.pad_token_id)
        self.position_encoding = POSITION_ENCODINGS[config.position_encoding](config, heads, causal=self.causal)
        self.layers = nn.ModuleList(
            [self.layer_class(config, i, self.position_encoding.make_layer_term()) for i in range(num_layers)]
        )
        self.layernorm_embedding = make_norm(config) if config.layernorm_embedding else None
        self.layer_norm = make_norm(config) if config.normalize_before else None
        self.self_attention_runs_eager = POSITION_ENCODINGS[config.position_encoding].needs_attention_weights

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def embed(
        self, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """Scaled token embeddings combined with the positions (embedding contract), normalised with
        `layernorm_embedding` (BART's `layernorm_embedding`), then dropout."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        hidden_states = self.position_encoding.embed(inputs_embeds * self.embed_scale, position_ids)
        if self.layernorm_embedding is not None:
            hidden_states = self.layernorm_embedding(hidden_states)
        return nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)

    def finish(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(hidden_states) if self.layer_norm is not None else hidden_states


def default_positions(length: int, offset: int | torch.Tensor, device: torch.device) -> torch.Tensor:
    """`(1, length)` positions `offset .. offset + length - 1`, shared by the batch. `offset` may be a 0-d tensor
    (a static cache's length, which `torch.compile` must not read as a Python number)."""
    return (torch.arange(length, device=device) + offset)[None]


def cached_length(cache: Cache) -> int | torch.Tensor:
    """The number of tokens `cache` holds. A static cache counts them in a 0-d tensor: an eager call reads it as an
    int, a compiled step keeps the tensor (reading it back would break the graph)."""
    length = cache.get_seq_length()
    return int(length) if isinstance(length, torch.Tensor) and not torch.compiler.is_compiling() else length


def decoder_key_positions(position_ids: torch.Tensor, past_length: int | torch.Tensor, key_length: int) -> torch.Tensor:
    """`(B|1, key_length)` positions of the decoder's keys for `(B|1, T)` new positions, slot by slot: the
    `past_length` cached tokens right before the first new one, the new ones at their slots, then the empty slots of a
    static cache (masked) continuing from there. Static shapes only (`key_length` slots, the new ones scattered in), so
    a compiled step never reads the cache's length back from a tensor."""
    if key_length == position_ids.shape[1]:  # nothing cached (training, the first step): the keys are the queries
        return position_ids
    device, new_tokens = position_ids.device, position_ids.shape[1]
    keys = position_ids[:, :1] - past_length + torch.arange(key_length, device=device)
    slots = (torch.arange(new_tokens, device=device) + past_length).expand_as(position_ids)
    return keys.scatter(1, slots, position_ids)


class PosformerEncoder(PosformerStack):
    """The encoder stack: `config.encoder_layers` bidirectional [`PosformerEncoderLayer`]s."""

    causal = False
    layer_class = PosformerEncoderLayer
    argument_prefix = ""
    _can_record_outputs = {
        "hidden_states": hidden_states_recorder(PosformerEncoderLayer, "encoder_layers"),
        "attentions": PosformerAttention,
    }

    def __init__(self, config: PosformerConfig) -> None:
        super().__init__(config, config.encoder_layers, config.encoder_attention_heads)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutput:
        """`(B, S)` ids (or `(B, S, d)` embeddings), `(B, S)` padding mask (1 = token) -> `(B, S, d)`.

        `position_ids` `(B|1, S)` defaults to `0 .. S-1`. Inputs that do not fit raise `ValueError`/`TypeError`
        ([`check_stack_inputs`], [`check_attention_mask`], [`check_position_ids`]).
        """
        batch, length = check_stack_inputs(
            self.argument_prefix, input_ids, inputs_embeds, self.config, self.embed_tokens.num_embeddings
        )
        check_attention_mask("attention_mask", attention_mask, batch, length, (length,), "the source")
        check_position_ids("position_ids", position_ids, batch, length)
        reference = input_ids if input_ids is not None else inputs_embeds
        if position_ids is None:
            position_ids = default_positions(length, 0, reference.device)
        hidden_states = self.embed(input_ids, inputs_embeds, position_ids)
        positions = self.position_encoding.attention_positions(position_ids, position_ids)
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=attention_mask
        )
        for layer in self.layers:
            # tensors a checkpointed layer needs gradients through go positionally (see `positions_with_bias`)
            hidden_states = layer(hidden_states, attention_mask, positions.bias, positions=positions, **kwargs)
        return BaseModelOutput(last_hidden_state=self.finish(hidden_states))


class PosformerDecoder(PosformerStack):
    """The decoder stack: `config.decoder_layers` causal [`PosformerDecoderLayer`]s with cross-attention."""

    causal = True
    layer_class = PosformerDecoderLayer
    argument_prefix = "decoder_"
    _can_record_outputs = {
        "hidden_states": hidden_states_recorder(PosformerDecoderLayer, "decoder_layers"),
        "attentions": OutputRecorder(PosformerAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(PosformerAttention, index=1, layer_name="encoder_attn"),
    }

    def __init__(self, config: PosformerConfig) -> None:
        super().__init__(config, config.decoder_layers, config.decoder_attention_heads)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """`(B, T)` target ids attending to `(B, S, d)` encoder states -> `(B, T, d)`; without encoder states the
        layers skip cross-attention (a decoder-only run).

        Positions continue at the cache's length `P`: `position_ids` `(B|1, T)` defaults to `P .. P+T-1`,
        and the cached tokens are taken to sit right before the first new position (so explicit,
        shifted positions stay consistent step after step). The cache comes as `cache` or `past_key_values`
        ([`resolve_cache`]) and goes back in the output field of the installed transformers' name.

        A 2D `attention_mask` covers the cached and the new tokens, `(B, P+T)` (or a static cache's whole length).
        Inputs that do not fit raise `ValueError`/`TypeError`, naming them as the encoder-decoder model's forward does
        (`decoder_input_ids`, ...; [`check_stack_inputs`], [`check_attention_mask`], [`check_encoder_states`]).
        """
        cache = resolve_cache(cache, past_key_values)
        batch, length = check_stack_inputs(
            self.argument_prefix, input_ids, inputs_embeds, self.config, self.embed_tokens.num_embeddings
        )
        reference = input_ids if input_ids is not None else inputs_embeds
        if use_cache and cache is None:
            cache = EncoderDecoderCache(DynamicCache(config=self.config), DynamicCache(config=self.config))
        self_attention_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        past_length, key_length = 0, length
        if self_attention_cache is not None:
            past_length = cached_length(self_attention_cache)
            key_length = self_attention_cache.get_mask_sizes(length, 0)[0]  # a static cache: its whole length
        target = "the target (cached and new tokens)"
        key_lengths = tuple(
            sorted({key_length, past_length + length} if isinstance(past_length, int) else {key_length})
        )
        check_attention_mask("decoder_attention_mask", attention_mask, batch, length, key_lengths, target)
        check_position_ids("decoder_position_ids", position_ids, batch, length)
        if encoder_hidden_states is not None:
            check_encoder_states(encoder_hidden_states, encoder_attention_mask, batch, length, self.config.d_model)
        if position_ids is None:
            position_ids = default_positions(length, past_length, reference.device)
        key_positions = decoder_key_positions(position_ids, past_length, key_length)

        hidden_states = self.embed(input_ids, inputs_embeds, position_ids)
        positions = self.position_encoding.attention_positions(position_ids, key_positions)
        causal_mask = create_causal_mask(
            self.config,
            hidden_states,
            attention_mask,
            self_attention_cache,  # positional: the argument is `cache` from transformers 5.24 on
            # an attention that runs eagerly under another implementation needs the mask spelled out
            allow_is_causal_skip=not self.self_attention_runs_eager,
        )
        if encoder_hidden_states is not None:
            encoder_attention_mask = create_bidirectional_mask(
                config=self.config,
                inputs_embeds=hidden_states,
                attention_mask=encoder_attention_mask,
                encoder_hidden_states=encoder_hidden_states,
            )
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                causal_mask,
                encoder_hidden_states,  # positional: checkpoint inputs under gradient checkpointing
                positions.bias,
                encoder_attention_mask=encoder_attention_mask,
                positions=positions,
                **{CACHE_NAME: cache},
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=self.finish(hidden_states), **{CACHE_NAME: cache}
        )


class PosformerModel(PosformerPreTrainedModel):
    """Encoder and decoder sharing one token embedding matrix (`shared`), as the paper shares its
    source/target BPE vocabulary. Returns `Seq2SeqModelOutput`."""

    def __init__(self, config: PosformerConfig) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.encoder = PosformerEncoder(config)
        self.decoder = PosformerDecoder(config)
        self._tied_weights_keys = self.embedding_ties()  # what saving reads to store the tied table once
        self.post_init()

    def embedding_ties(self) -> dict[str, str]:
        """Both stacks' tables are `shared`; with separate vocabularies (`share_encoder_decoder_embeddings=False`)
        `shared` is the source's, and the decoder keeps its own table of the target vocabulary, as Marian's."""
        stacks = ("encoder", "decoder") if self.config.share_encoder_decoder_embeddings else ("encoder",)
        return {f"{stack}.embed_tokens.weight": "shared.weight" for stack in stacks}

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        """The source embedding, which is also the decoder's unless the vocabularies are separate."""
        self.shared = value
        self.encoder.embed_tokens = value
        if self.config.share_encoder_decoder_embeddings:
            self.decoder.embed_tokens = value

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple[torch.Tensor] | BaseModelOutput | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqModelOutput:
        """The encoder-decoder forward; the cache comes as `cache` or `past_key_values` ([`resolve_cache`])."""
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                inputs_embeds=inputs_embeds,
                position_ids=position_ids,
                **kwargs,
            )
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(
                last_hidden_state=encoder_outputs[0],
                hidden_states=encoder_outputs[1] if len(encoder_outputs) > 1 else None,
                attentions=encoder_outputs[2] if len(encoder_outputs) > 2 else None,
            )
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            attention_mask=decoder_attention_mask,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            cache=resolve_cache(cache, past_key_values),
            inputs_embeds=decoder_inputs_embeds,
            position_ids=decoder_position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        return Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            **{CACHE_NAME: getattr(decoder_outputs, CACHE_NAME)},
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
        )


def smoothed_cross_entropy_(
    logits: torch.Tensor, targets: torch.Tensor, kept: torch.Tensor, smoothing: float, gradient: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed label-smoothed cross-entropy of float32 `(n, V)` logits `z` against `(n,)` targets `y` (rows where
    `kept` is False count for nothing), and (with `gradient`) its gradient with respect to `z`; `logits` is
    overwritten either way.

    Per row, with smoothing `eps` (Szegedy et al., 2016; the paper's 0.1) and `L = logsumexp(z)`:
    `loss = -(1 - eps) * log p[y] - eps * mean(log p) = L - (1 - eps) * z[y] - eps * mean(z)`, which is
    `F.cross_entropy(..., label_smoothing=eps)` row by row, and `grad = softmax(z) - (1 - eps) * onehot(y) - eps / V`.
    One exponential per logit serves both: `exp(z - max z)` is summed for `L`, then scaled into the softmax.
    """
    weight = kept[:, None].to(logits.dtype)
    top = logits.amax(-1, keepdim=True)
    target_logit = logits.gather(-1, targets[:, None])
    mean_logit = logits.mean(-1, keepdim=True)
    exponentials = logits.sub_(top).exp_()
    sums = exponentials.sum(-1, keepdim=True)
    token_loss = top + sums.log() - (1 - smoothing) * target_logit - smoothing * mean_logit
    if not gradient:
        return (token_loss * weight).sum(), None
    grad = exponentials.mul_(weight / sums)
    if smoothing:
        grad.sub_(weight * (smoothing / logits.shape[-1]))
    grad.scatter_add_(-1, targets[:, None], weight * (smoothing - 1))
    return (token_loss * weight).sum(), grad


def rows_per_chunk(rows: int, vocab_size: int) -> int:
    """Rows of one chunk of the fused losses over `(rows, vocab_size)` logits: at least 4 million logits per chunk
    (16 MiB in float32: the matrix products run at full speed, and glibc reuses blocks this size instead of mapping
    them afresh, which it does above 32 MiB) and at most 64 chunks (few kernel launches on a GPU)."""
    return max(math.ceil(2**22 / vocab_size), math.ceil(rows / 64))


def chunks(rows: int, vocab_size: int) -> Iterator[slice]:
    """The row slices of `(rows, vocab_size)` logits, [`rows_per_chunk`] at a time."""
    step = rows_per_chunk(rows, vocab_size)
    return (slice(start, start + step) for start in range(0, rows, step))


def _targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(targets, kept)`: labels with -100 replaced by 0, and where they were not -100."""
    kept = labels != -100
    return labels.masked_fill(~kept, 0), kept


class TokenCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross-entropy of `(N, V)` logits against `(N,)` labels (-100 ignored), fused
    ([`smoothed_cross_entropy_`], chunk by chunk: [`rows_per_chunk`]).

    `F.cross_entropy` keeps its `(N, V)` log-probabilities for the backward pass and allocates two more `(N, V)`
    tensors there. This keeps nothing vocabulary-sized but the logits (which the model output keeps alive anyway):
    the forward pass needs one chunk of scratch, and the backward pass recomputes the softmax into the one `(N, V)`
    tensor it allocates, the gradient, when the rest of the step's activations are being freed.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float) -> torch.Tensor:
        targets, kept = _targets(labels)
        total = logits.new_zeros(())
        for rows in chunks(*logits.shape):
            chunk = logits[rows].clone()
            total += smoothed_cross_entropy_(chunk, targets[rows], kept[rows], label_smoothing, gradient=False)[0]
        ctx.save_for_backward(logits, targets, kept)
        ctx.label_smoothing = label_smoothing
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, targets, kept = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for rows in chunks(*logits.shape):
            smoothed_cross_entropy_(grad[rows].copy_(logits[rows]), targets[rows], kept[rows], ctx.label_smoothing)
        return grad.mul_(grad_output), None, None


class LinearCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross-entropy of the logits `hidden @ weight.T + bias` against `labels` (-100 ignored),
    without ever holding the `(N, V)` logits: the output projection and the loss fused, chunk by chunk over the
    `N` rows ([`rows_per_chunk`]), as Liger Kernel's fused linear cross-entropy (Hsu et al., 2024) does.

    `hidden` `(N, d)`, `weight` `(V, d)`, `bias` `(V,)` or None (a buffer: no gradient), `labels` `(N,)`. Each
    chunk's logits are computed (in `hidden`'s precision, or autocast's), taken to float32 (float64 stays), turned
    into the loss and its gradient in place, and multiplied back into the gradients of `hidden` and `weight`, which
    the forward pass returns ready for backward to scale. The same three matrix products as the unfused head; what
    goes is the `(N, V)` logits and gradient (131 MB each for the main job's 4,096 x 8,000), which on CPU glibc maps
    and faults in afresh every step, and a second exponential per logit.
    """

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        label_smoothing: float,
    ) -> torch.Tensor:
        targets, kept = _targets(labels)
        precision = torch.promote_types(hidden.dtype, torch.float32)  # of the loss: float32 at least
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=precision) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), device=hidden.device, dtype=precision)
        for rows in chunks(hidden.shape[0], weight.shape[0]):
            logits = (hidden[rows] @ weight.T).to(precision)
            if bias is not None:
                logits += bias
            loss, grad = smoothed_cross_entropy_(logits, targets[rows], kept[rows], label_smoothing, needs_grad)
            total += loss
            if needs_grad:
                grad = grad.to(hidden.dtype)
                if grad_hidden is not None:
                    grad_hidden[rows] = grad @ weight
                if grad_weight is not None:
                    grad_weight += grad.T @ hidden[rows]
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if grad_weight is not None else None)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        grad_hidden, grad_weight = ctx.saved_tensors
        scaled = [None if grad is None else grad * grad_output.to(grad.dtype) for grad in (grad_hidden, grad_weight)]
        return scaled[0], scaled[1], None, None, None


def mean_over_targets(
    total: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None
) -> torch.Tensor:
    """A summed token loss divided by `num_items_in_batch` when given (transformers' Trainer passes the number of
    target tokens of the whole accumulated batch, so gradient accumulation weighs every token alike), otherwise by
    the number of target tokens in `labels`.

    Labels that are all -100 give a loss of 0 with zero gradients, where transformers' models (BART's and Marian's
    mean `CrossEntropyLoss`) give NaN: the sum over no tokens is 0, and that is also what such a batch adds to an
    accumulated batch through `num_items_in_batch`. A NaN would poison the weights and the optimizer state at the next
    step, and an error would end a training run over one batch whose targets are all masked; with any target token
    the loss is the mean, as theirs.
    """
    count = num_items_in_batch if num_items_in_batch is not None else (labels != -100).sum()
    if torch.is_tensor(count):
        return total / count.to(total.device).clamp(min=1)
    return total / max(count, 1)


def seq2seq_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Token-level cross-entropy over `(B, T, V)` logits and `(B, T)` labels, -100 ignored ([`TokenCrossEntropy`]),
    averaged by [`mean_over_targets`]."""
    total = TokenCrossEntropy.apply(
        logits.float().flatten(0, 1), labels.flatten().to(logits.device, torch.long), float(label_smoothing)
    )
    return mean_over_targets(total, labels, num_items_in_batch)


class PosformerForConditionalGeneration(PosformerPreTrainedModel, GenerationMixin):
    """[`PosformerModel`] with a language-modelling head tied to the shared embeddings (by default)."""

    def __init__(self, config: PosformerConfig) -> None:
        super().__init__(config)
        self.model = PosformerModel(config)
        target_vocab_size = config.target_vocab_size()
        self.lm_head = nn.Linear(config.d_model, target_vocab_size, bias=False)
        # BART's and Marian's `final_logits_bias`: a buffer (saved, never trained), as theirs
        self.final_logits_bias = nn.Buffer(torch.zeros(1, target_vocab_size)) if config.final_logits_bias else None
        # the head shares the target embedding (`tie_word_embeddings`), as Marian's
        target = "shared" if config.share_encoder_decoder_embeddings else "decoder.embed_tokens"
        self._tied_weights_keys = {"lm_head.weight": f"model.{target}.weight"}
        self.output_scale = config.d_model**-0.5 if config.scale_decoder_output else 1.0
        self.post_init()

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """`PreTrainedModel.resize_token_embeddings`, and `final_logits_bias` with it (new rows 0). With separate
        vocabularies it would resize only the source table and leave the head, so it is refused."""
        if not self.config.share_encoder_decoder_embeddings:
            raise NotImplementedError(
                "resize_token_embeddings resizes the shared vocabulary, but this model has separate source and target "
                "vocabularies (share_encoder_decoder_embeddings=False); resizing them is not supported."
            )
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.decoder_vocab_size = self.config.vocab_size  # one vocabulary: both sizes follow
        if self.final_logits_bias is not None:
            old, new = self.final_logits_bias, embeddings.num_embeddings
            resized = old.new_zeros(1, new)
            resized[:, : min(new, old.shape[-1])] = old[:, :new]
            self.final_logits_bias = nn.Buffer(resized)
        return embeddings

    def project_to_vocabulary(self, decoder_output: torch.Tensor) -> torch.Tensor:
        """`(B, T, d)` decoder output -> `(B, T, V)` logits: `lm_head(output * output_scale) + final_logits_bias`,
        with `output_scale` `d_model^-0.5` under `scale_decoder_output` (T5 v1.0's tied head), else 1."""
        if self.output_scale != 1.0:
            decoder_output = decoder_output * self.output_scale
        logits = self.lm_head(decoder_output)
        return logits + self.final_logits_bias if self.final_logits_bias is not None else logits

    def vocabulary_loss(
        self,
        decoder_output: torch.Tensor,
        labels: torch.Tensor,
        label_smoothing: float = 0.0,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`seq2seq_loss(project_to_vocabulary(decoder_output), labels, ...)` without the `(B, T, V)` logits:
        `(B, T, d)` decoder output and `(B, T)` labels through [`LinearCrossEntropy`], then [`mean_over_targets`]."""
        if self.output_scale != 1.0:
            decoder_output = decoder_output * self.output_scale
        total = LinearCrossEntropy.apply(
            decoder_output.flatten(0, 1),
            self.lm_head.weight,
            self.final_logits_bias,
            labels.flatten().to(decoder_output.device, torch.long),
            float(label_smoothing),
        )
        return mean_over_targets(total, labels, num_items_in_batch)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Used by `DataCollatorForSeq2Seq` to build `decoder_input_ids`."""
        for name in ("pad_token_id", "decoder_start_token_id"):
            if getattr(self.config, name) is None:
                raise ValueError(
                    f"config.{name} is None, but the decoder inputs are built from the labels with it (labels "
                    f"shifted right behind decoder_start_token_id, -100 -> pad_token_id). Set config.{name}, or pass "
                    "decoder_input_ids."
                )
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    def generate(self, inputs: torch.Tensor | None = None, generation_config: GenerationConfig | None = None, **kwargs):
        """`GenerationMixin.generate`, after [`check_generation_arguments`] on the arguments that transformers lets
        through (`num_beams=0`, a pad or end id outside the vocabulary, ...), each read from `kwargs` or else from
        `generation_config` (default: the model's)."""
        defaults = generation_config if generation_config is not None else self.generation_config
        check_generation_arguments(kwargs, defaults, self.config.target_vocab_size())
        return super().generate(inputs, generation_config, **kwargs)

    def _reorder_cache(self, cache: Cache, beam_idx: torch.LongTensor) -> Cache:
        """Beam search's per-step cache reordering (called by `GenerationMixin`), for the self-attention cache only.

        `beam_idx` `(B * beams,)` only ever moves beams within their own sentence, and the beams of a sentence share
        one (expanded) encoder output, so their cross-attention keys and values are equal row for row: reordering
        them, as `EncoderDecoderCache.reorder_cache` does, copies `2 * layers` tensors of `(B * beams, H, S, D)`
        every step and changes nothing.
        """
        self_attention_cache = cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache
        self_attention_cache.reorder_cache(beam_idx)
        return cache

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: tuple[torch.Tensor] | BaseModelOutput | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        decoder_position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        loss_smoothing: float = 0.0,
        return_logits: bool = True,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Seq2SeqLMOutput:
        """`labels` `(B, T)` (-100 = ignore) give the loss (the mean token cross-entropy, unsmoothed by default as in
        BART and Marian: smoothing belongs to the training recipe, posformer-train's `--label_smoothing` or the
        Trainer's `--label_smoothing_factor`) and, when no decoder inputs are passed, the decoder inputs (labels
        shifted right behind `decoder_start_token_id`). The cache comes as `cache` (what `generate` passes from
        transformers 5.24 on) or `past_key_values` (before), and goes back in the output field of the installed
        transformers' name.

        `logits_to_keep` projects only some decoder positions onto the vocabulary: an int keeps the last that many
        (0, the default, keeps all; `generate` passes 1), a 1-D tensor the positions it lists. `logits` is then
        `(B, kept, V)`; with `labels` it must keep all.

        `loss_smoothing` smooths that loss (posformer-train passes its `--label_smoothing`; not named `label_*`:
        transformers' Trainer takes every forward argument named so for a label column that the batch must hold).
        `return_logits=False` (with `labels`) computes that loss without the `(B, T, V)` logits, the projection and
        the loss fused chunk by chunk ([`LinearCrossEntropy`]; `logits` is then None): what posformer-train's steps
        use, as the same loss and gradients with less memory and time."""
        if not return_logits and labels is None:
            raise ValueError("return_logits=False computes the loss over `labels` without the logits: pass labels.")
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        if labels is not None:
            decoder_inputs = decoder_input_ids if decoder_input_ids is not None else decoder_inputs_embeds
            decoder_shape = tuple(decoder_inputs.shape[:2]) if decoder_inputs is not None else None
            check_labels(labels, decoder_shape, self.config.target_vocab_size())
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            cache=resolve_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            position_ids=position_ids,
            decoder_position_ids=decoder_position_ids,
            use_cache=use_cache,
            **kwargs,
        )
        if labels is not None and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
            raise ValueError(
                f"logits_to_keep={logits_to_keep!r} drops logits that the loss over `labels` needs: pass labels with "
                "logits_to_keep=0 (every position), or no labels."
            )
        if return_logits:
            kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.project_to_vocabulary(outputs.last_hidden_state[:, kept])
            loss = seq2seq_loss(logits, labels, loss_smoothing, num_items_in_batch) if labels is not None else None
        else:
            logits = None
            loss = self.vocabulary_loss(outputs.last_hidden_state, labels, loss_smoothing, num_items_in_batch)
        return Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
        )


__all__ = [
    "PosformerPreTrainedModel",
    "PosformerEncoder",
    "PosformerDecoder",
    "PosformerModel",
    "PosformerForConditionalGeneration",
]
