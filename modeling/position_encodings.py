"""Every position encoding of posformer, and the one registry that names them.

Shape legend: B batch (or 1 when the same for every row), L sequence length, q query length,
k key length, H heads, D head size (`config.head_dim`, else d_model / H), d d_model, n number of relative embeddings.

Each encoding is one small class with one contract, computed once per stack (encoder or decoder)
and handed to every layer as tensors; layers never look at the encoding's name:

* **embedding** (`embed`): positions combined with the token embeddings before the first layer
  (`none`, `sinusoidal`, `learned`, `hadamard`).
* **rotary** (`AttentionPositions.rotary`): `(cos, sin)` applied to queries and keys of
  self-attention (`rope`).
* **bias** (`AttentionPositions.bias`): a `(B, H, q, k)` tensor added to the scaled scores of
  self-attention and handed to the attention kernel as `position_bias` (`t5`, `alibi`, `fire`).
* **relative terms** (`make_layer_term`): encodings whose score terms depend on each layer's queries
  (`shaw`, `transformer_xl`) get a small per-layer module; the stack computes the relative index
  (and, for Transformer-XL, the relative sinusoids) once and the layer module turns them into a score
  bias (and, for Shaw, a value term).

Cross-attention gets no position term from any encoding: a relative distance between a target
position and a source position measures nothing (the two sequences are not aligned), which is also
why T5 leaves its encoder-decoder attention without a bias. Absolute encodings reach cross-attention
through the hidden states they were added to.

No encoding keeps a derived table (sinusoids, inverse frequencies, slopes) in a buffer: they are
computed from the positions in each forward, so they are right after `from_pretrained` (which leaves
non-persistent buffers uninitialised) and for positions past `max_position_embeddings`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn
from transformers import initialization as init


@dataclass
class AttentionPositions:
    """What self-attention needs to know about positions, computed once per stack forward.

    Attributes:
        rotary: `(cos, sin)`, each `(B, q, D)`, for the query positions (rotary contract).
        bias: `(B, H, q, k)` added to the scaled attention scores (bias contract).
        relative_index: `(B, q, k)` long, index of each (query, key) pair into the `n` relative
            embeddings of a per-layer term.
        relative_embeddings: `(n, d)` embeddings shared by every layer's term (Transformer-XL sinusoids).
    """

    rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    bias: torch.Tensor | None = None
    relative_index: torch.Tensor | None = None
    relative_embeddings: torch.Tensor | None = None


def sinusoids(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed sinusoids of Vaswani et al. (2017), laid out as transformers' Marian lays them out.

    `out[..., k] = sin(p * w_k)` for the first `ceil(dim/2)` features and
    `out[..., ceil(dim/2) + k] = cos(p * w_k)` for the rest, with `w_k = base^(-2k/dim)`.
    Computed in float64 (as Marian's numpy table is) and returned as float32.

    Args:
        positions: `(...)` integer or float positions (any values: negative, past any table).
        dim: number of features.
    Returns:
        `(..., dim)` float32.
    """
    num_sin = (dim + 1) // 2
    frequencies = base ** (-2.0 * torch.arange(num_sin, dtype=torch.float64, device=positions.device) / dim)
    angles = positions.to(torch.float64)[..., None] * frequencies
    return torch.cat([angles.sin(), angles[..., : dim // 2].cos()], dim=-1).float()


def relative_distances(query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
    """`key - query` for every pair: `(B, q)` and `(B, k)` positions -> `(B, q, k)`."""
    return key_positions[:, None, :] - query_positions[:, :, None]


class PositionEncoding(nn.Module):
    """Base of every encoding: positions in, the contract's tensors out. One instance per stack.

    Subclasses override what their contract needs; the defaults add nothing. Each declares what it is, so
    that the config's checks, the attention backends' errors, the model card and the tests read it here
    instead of listing encoding names:

    Class attributes:
        summary: one line on what the encoding does, with its paper (the model card and `--help` show it).
        kind: `"absolute"` (a position is added to or multiplied into the embeddings), `"relative"` (attention
            depends on positions only through `j - i`, so shifting every position changes nothing) or `"none"`.
        adds_score_bias: the encoding hands the attention kernel a `position_bias` (no flash-attention).
        needs_attention_weights: a layer term needs the attention probabilities (eager attention only).
        bounded_by_max_positions: positions past `config.max_position_embeddings` are an error (a table).
    """

    summary: ClassVar[str]
    kind: ClassVar[Literal["absolute", "relative", "none"]]
    adds_score_bias: ClassVar[bool] = False
    needs_attention_weights: ClassVar[bool] = False
    bounded_by_max_positions: ClassVar[bool] = False

    @classmethod
    def check_config(cls, config) -> None:
        """Raise `ValueError`, saying what to change, when this encoding cannot be built with `config` (its own
        fields, such as `rope_theta`, or what it needs of the others). Called when the config selects it."""

    def __init__(self, config, num_heads: int, causal: bool) -> None:
        super().__init__()
        self.d_model = config.d_model
        self.num_heads = num_heads
        self.head_dim = config.attention_head_dim(num_heads)
        self.causal = causal

    def embed(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Combine `(B, L, d)` token embeddings with `(B, L)` positions. Default: unchanged."""
        return inputs_embeds

    def attention_positions(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> AttentionPositions:
        """Self-attention inputs for `(B, q)` query and `(B, k)` key positions. Default: none."""
        return AttentionPositions()

    def make_layer_term(self) -> RelativeAttentionTerm | None:
        """A fresh per-layer module for encodings whose score terms depend on the layer. Default: none."""
        return None

    def init_weights(self, config) -> None:
        """Initialise parameters that transformers' default `_init_weights` does not know."""


class RelativeAttentionTerm(nn.Module):
    """Per-layer part of a relative encoding: a score bias from the layer's queries/keys, and maybe a
    value term from its attention probabilities."""

    def score_bias(
        self, query: torch.Tensor, key: torch.Tensor, positions: AttentionPositions, scaling: float
    ) -> torch.Tensor:
        """`(B, H, q, D)` queries and `(B, H, k, D)` keys -> `(B, H, q, k)` bias, already scaled."""
        raise NotImplementedError

    def value_term(self, attn_weights: torch.Tensor, positions: AttentionPositions) -> torch.Tensor:
        """`(B, H, q, k)` probabilities -> `(B, H, q, D)` added to the attention output."""
        raise NotImplementedError

    def init_weights(self, config) -> None:
        """Initialise parameters that transformers' default `_init_weights` does not know."""


def gather_relative(logits: torch.Tensor, relative_index: torch.Tensor) -> torch.Tensor:
    """Pick each pair's relative logit: `(B, H, q, n)` logits, `(B, q, k)` index -> `(B, H, q, k)`."""
    batch, heads, q_len, _ = logits.shape
    index = relative_index[:, None].expand(batch, heads, q_len, relative_index.shape[-1])
    return logits.gather(-1, index)


# --------------------------------------------------------------------------------------------------
# Embedding contract
# --------------------------------------------------------------------------------------------------


class NoPositionEncoding(PositionEncoding):
    """`none`: no position information at all.

    The encoder is then permutation-equivariant (permuting the source permutes its outputs); the
    decoder still sees order through its causal mask.
    """

    summary = "no position information: the encoder sees a bag of tokens, the decoder order only through its mask"
    kind = "none"


class SinusoidalPositionEncoding(PositionEncoding):
    """`sinusoidal`: the fixed sinusoids of Vaswani et al. (2017), "Attention Is All You Need", added to
    the (scaled) token embeddings: `h = E[x] * s + PE(p)`, `PE` as in `sinusoids` (Marian's layout).

    Checked against transformers' `MarianMTModel` on identical weights. Defined for every position.
    """

    summary = "fixed sinusoids added to the token embeddings (Vaswani et al., 2017)"
    kind = "absolute"

    def embed(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return inputs_embeds + sinusoids(position_ids, self.d_model).to(inputs_embeds.dtype)


class LearnedPositionEncoding(PositionEncoding):
    """`learned`: a trained absolute table of `max_position_embeddings` rows added to the embeddings,
    as in BERT and Gehring et al. (2017): `h = E[x] * s + P[p]`. Positions past the table raise."""

    summary = "a trained table of absolute positions added to the embeddings (Gehring et al., 2017)"
    kind = "absolute"
    bounded_by_max_positions = True

    def __init__(self, config, num_heads: int, causal: bool) -> None:
        super().__init__(config, num_heads, causal)
        self.embeddings = nn.Embedding(config.max_position_embeddings, config.d_model)

    def embed(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        table_size = self.embeddings.num_embeddings
        if torch.compiler.is_compiling():
            # torch.compile / torch.export trace no branch on tensor values: the check becomes an assertion in the graph
            torch._assert_async((position_ids < table_size).all(), "position past the learned table")
        elif position_ids.numel() and int(position_ids.max()) >= table_size:
            raise ValueError(
                f"position_encoding='learned' has a table of max_position_embeddings={table_size} positions, "
                f"but position {int(position_ids.max())} was requested. Shorten or split the input, or use "
                f"a model with a larger max_position_embeddings (or an encoding that extrapolates: "
                f"{', '.join(encodings_where(lambda encoding: not encoding.bounded_by_max_positions))})."
            )
        return inputs_embeds + self.embeddings(position_ids)


class HadamardPositionEncoding(PositionEncoding):
    """`hadamard`: positions multiplied element-wise into the token embeddings instead of added.

    `h = E[x] * s ⊙ (1 + g ⊙ PE(p))`, with `PE` the fixed sinusoids and `g` a learned per-feature gain
    (`d`), initialised to `config.hadamard_gain` (0.5). The multiplier then starts within
    `[1 - g, 1 + g] = [0.5, 1.5]`: it never flips a sign or zeroes a feature, keeps the embeddings'
    scale within a factor 2 of the unpositioned model (so training starts as stably as with added
    sinusoids), and carries a clear position signal from the first step. Being built on sinusoids, it
    is defined for every position.
    """

    summary = "fixed sinusoids multiplied into the token embeddings, with a learned gain per feature"
    kind = "absolute"

    @classmethod
    def check_config(cls, config) -> None:
        if not 0 <= config.hadamard_gain < 1:
            raise ValueError(
                f"hadamard_gain must be in [0, 1) so that 1 + gain*sin never reaches zero, got {config.hadamard_gain}."
            )

    def __init__(self, config, num_heads: int, causal: bool) -> None:
        super().__init__(config, num_heads, causal)
        self.gain = nn.Parameter(torch.full((config.d_model,), float(config.hadamard_gain)))

    def embed(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        multiplier = 1 + self.gain * sinusoids(position_ids, self.d_model).to(inputs_embeds.dtype)
        return inputs_embeds * multiplier

    def init_weights(self, config) -> None:
        init.constant_(self.gain, float(config.hadamard_gain))


# --------------------------------------------------------------------------------------------------
# Rotary contract
# --------------------------------------------------------------------------------------------------


class RotaryPositionEncoding(PositionEncoding):
    """`rope`: rotary position embeddings of Su et al. (2021), "RoFormer".

    Feature pairs `(i, i + D/2)` of queries and keys are rotated by `p * theta^(-2i/D)`, so that
    `<R_p q, R_r k>` depends on `p - r` only. Same convention as transformers' Llama (`rotate_half`),
    checked against `LlamaRotaryEmbedding` + `apply_rotary_pos_emb`. Self-attention only.
    """

    summary = "queries and keys rotated by their positions, so their product depends on j - i (Su et al., 2021)"
    kind = "relative"

    @classmethod
    def check_config(cls, config) -> None:
        if config.rope_theta <= 0:
            raise ValueError(f"rope_theta must be positive, got {config.rope_theta}.")
        for name in ("encoder_attention_heads", "decoder_attention_heads"):
            head_size = config.attention_head_dim(getattr(config, name))
            if head_size % 2:
                source = f"head_dim = {head_size}" if config.head_dim is not None else f"d_model / {name} = {head_size}"
                raise ValueError(
                    f"position_encoding='rope' rotates pairs of dimensions, so the head size ({source}) must be even. "
                    f"Change d_model, {name} or head_dim."
                )

    def __init__(self, config, num_heads: int, causal: bool) -> None:
        super().__init__(config, num_heads, causal)
        self.theta = float(config.rope_theta)

    def attention_positions(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> AttentionPositions:
        device = query_positions.device
        inv_freq = self.theta ** (
            -torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim
        )
        angles = query_positions.float()[..., None] * inv_freq  # (B, q, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (B, q, D)
        return AttentionPositions(rotary=(angles.cos(), angles.sin()))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """`(x1, x2) -> (-x2, x1)` on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(
    query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate `(B, H, q, D)` queries and keys by `(B, q, D)` angles: `x * cos + rotate_half(x) * sin`."""
    cos, sin = cos[:, None].to(query.dtype), sin[:, None].to(query.dtype)
    return query * cos + rotate_half(query) * sin, key * cos + rotate_half(key) * sin


# --------------------------------------------------------------------------------------------------
# Bias contract
# --------------------------------------------------------------------------------------------------


def t5_relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each `key - query` distance (Raffel et al., 2020), equal to transformers'
    `T5Attention._relative_position_bucket`.

    Half the buckets (all of them when not bidirectional, where only the past counts) hold the exact
    distances `0 .. max_exact - 1`, `max_exact = buckets / 2`; the rest cover `max_exact .. max_distance`
    logarithmically; farther distances share the last bucket. Bidirectional buckets give the future
    (`key > query`) its own half.
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    log_ratio = torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class T5PositionEncoding(PositionEncoding):
    """`t5`: a learned scalar per head and distance bucket, added to the scores (Raffel et al., 2020,
    "Exploring the Limits of Transfer Learning"). Bidirectional buckets in the encoder, causal buckets
    in the decoder; one table per stack, shared by its layers, as in T5. Defined for every distance."""

    summary = "a learned scalar per head and log-spaced distance bucket, added to the scores (Raffel et al., 2020)"
    kind = "relative"
    adds_score_bias = True

    @classmethod
    def check_config(cls, config) -> None:
        """`t5_relative_position_bucket` divides by `log(max_distance / max_exact)`, with `max_exact` the number of
        exact buckets: `t5_num_buckets // 4` in the encoder (which gives the future half the buckets) and
        `t5_num_buckets // 2` in the decoder. The encoder needs `max_exact >= 1`, so at least 4 buckets, and the
        decoder `max_distance > max_exact`: at equality the bucket of distance `max_exact` is 0/0 (NaN), below it the
        log-spaced buckets run backwards into negative (invalid) bucket ids."""
        if config.t5_num_buckets < 4:
            raise ValueError(
                f"t5_num_buckets must be at least 4 (the encoder splits them between past and future, each with at "
                f"least one exact bucket), got {config.t5_num_buckets}. T5 uses 32."
            )
        exact = config.t5_num_buckets // 2
        if config.t5_max_distance <= exact:
            raise ValueError(
                f"t5_max_distance must be greater than t5_num_buckets // 2 = {exact}, got {config.t5_max_distance}: "
                f"the decoder's first {exact} buckets hold the distances 0..{exact - 1} one by one and its log-spaced "
                f"buckets the distances from {exact} to t5_max_distance. Raise t5_max_distance above {exact} or lower "
                f"t5_num_buckets (T5 uses 32 buckets and a max distance of 128)."
            )

    def __init__(self, config, num_heads: int, causal: bool) -> None:
        super().__init__(config, num_heads, causal)
        self.num_buckets = config.t5_num_buckets
        self.max_distance = config.t5_max_distance
        self.relative_attention_bias = nn.Embedding(config.t5_num_buckets, num_heads)

    def attention_positions(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> AttentionPositions:
        buckets = t5_relative_position_bucket(
            relative_distances(query_positions, key_positions),
            bidirectional=not self.causal,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = self.relative_attention_bias(buckets)  # (B, q, k, H)
        return AttentionPositions(bias=bias.permute(0, 3, 1, 2))


def alibi_slopes(num_heads: int) -> list[float]:
    """Head slopes of Press et al. (2022), "Train Short, Test Long" (ALiBi).

    For `n` a power of two: the geometric sequence starting at and multiplied by `2^(-8/n)`. Otherwise
    the slopes of the closest smaller power of two `m`, followed by every other slope of `2m` heads.
    """
    if math.log2(num_heads).is_integer():
        start = 2 ** (-8 / num_heads)
        return [start ** (i + 1) for i in range(num_heads)]
    closest = 2 ** math.floor(math.log2(num_heads))
    return alibi_slopes(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


class AlibiPositionEncoding(PositionEncoding):
    """`alibi`: a fixed, head-specific linear penalty on distance, `bias[h, i, j] = -m_h * |j - i|`
    (Press et al., 2022). In the decoder only `j <= i` is visible, so this is the paper's causal
    `-m_h * (i - j)`; in the encoder the distance is symmetric. No parameters; any length."""

    summary = "a fixed penalty on the scores, linear in the distance, with one slope per head (Press et al., 2022)"
    kind = "relative"
    adds_score_bias = True

    def attention_positions(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> AttentionPositions:
        slopes = torch.tensor(alibi_slopes(self.num_heads), device=query_positions.device)
        distance = relative_distances(query_positions, key_positions).abs()  # (B, q, k)
        return AttentionPositions(bias=-slopes[None, :, None, None] * distance[:, None])


class FirePositionEncoding(PositionEncoding):
    """`fire`: functional interpolation for relative positions of Li et al. (2024), "Functional Interpolation
    for Relative Positions Improves Long Context Transformers": a learned function of the normalised distance,
    added to the scores,

        `bias[h, i, j] = f_h(sign(i - j) * psi(|i - j|) / (psi(max(L, i, j)) + eps))`,  `psi(x) = log(|c| x + 1)`,

    with `f(x) = W2 relu(w1 x + b1) + b2` an MLP from one input to `H` outputs, `c` a learned log scale and
    `L = |threshold_scale| * 512` a learned threshold (the paper's reparametrisation: a learned multiplier of a
    fixed 512). One function per stack, shared by its layers, as in the paper.

    In the decoder only `j <= i` is visible, so this is the paper's causal `f(psi(i - j) / psi(max(L, i)))`. The
    paper is decoder-only; for the bidirectional encoder we chose the sign, which keeps left and right apart (as
    T5's bidirectional buckets do), and the normaliser `max(L, i, j)`, which keeps every MLP input within `[-1, 1]`
    for non-negative positions. While both positions are below `L` the bias depends on `i - j` only (so shifting
    them changes nothing, the sense in which it is relative); past `L` the distance is measured against the farther
    position (progressive interpolation), so inputs longer than any seen in training are mapped into the range
    the MLP was trained on instead of past it. Any length.

    Checked against the paper's causal formula on identical weights (its MLP as two `nn.Linear` layers), values
    written out by hand with `math.log` (below and past the threshold, the encoder's sign) and its properties
    (shift invariance below `L`, equal bias for equal normalised distances past it, inputs within `[-1, 1]`).
    """

    summary = "a learned MLP of log-scaled, progressively interpolated distances, added to the scores (Li et al., 2024)"
    kind = "relative"
    adds_score_bias = True

    # the paper's hyperparameters
    MLP_WIDTH = 32
    INITIAL_C = 0.1
    INITIAL_THRESHOLD = 512.0  # L when threshold_scale = 1 (its initial value)
    EPS = 1e-6

    def __init__(self, config, num_heads: int, causal: bool) -> None:
        super().__init__(config, num_heads, causal)
        # plain parameters, not nn.Linear: transformers' `_init_weights` would give a Linear N(0, init_std) weights
        # and zero biases, under which the ReLU MLP starts (almost) constant
        self.mlp_in_weight = nn.Parameter(torch.empty(self.MLP_WIDTH))
        self.mlp_in_bias = nn.Parameter(torch.empty(self.MLP_WIDTH))
        self.mlp_out_weight = nn.Parameter(torch.empty(num_heads, self.MLP_WIDTH))
        self.mlp_out_bias = nn.Parameter(torch.empty(num_heads))
        self.c = nn.Parameter(torch.empty(()))
        self.threshold_scale = nn.Parameter(torch.empty(()))
        self.init_weights(config)

    def psi(self, distance: torch.Tensor) -> torch.Tensor:
        """The paper's log transform `psi(x) = log(|c| x + 1)` of distances `x >= 0`, in float32: it spreads
        near distances apart and draws far ones together."""
        return torch.log(self.c.float().abs() * distance + 1)

    def normaliser(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """`psi(max(L, i, j)) + eps`, `(B, q, k)`: the same for every pair up to the threshold `L`, growing with
        the farther position past it (progressive interpolation)."""
        farthest = torch.maximum(query_positions[:, :, None], key_positions[:, None, :]).float()  # (B, q, k)
        threshold = self.threshold_scale.float().abs() * self.INITIAL_THRESHOLD
        return self.psi(torch.maximum(farthest, threshold)) + self.EPS

    def attention_positions(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> AttentionPositions:
        distance = -relative_distances(query_positions, key_positions).float()  # (B, q, k): i - j
        inputs = distance.sign() * self.psi(distance.abs()) / self.normaliser(query_positions, key_positions)
        inputs = inputs.to(self.mlp_in_weight.dtype)[..., None]  # (B, q, k, 1)
        hidden = torch.relu(inputs * self.mlp_in_weight + self.mlp_in_bias)  # (B, q, k, MLP_WIDTH)
        bias = nn.functional.linear(hidden, self.mlp_out_weight, self.mlp_out_bias)  # (B, q, k, H)
        return AttentionPositions(bias=bias.permute(0, 3, 1, 2))

    def init_weights(self, config) -> None:
        # the paper's MLP is two nn.Linear layers at PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
        # weights and biases: fan_in 1, then MLP_WIDTH
        init.uniform_(self.mlp_in_weight, -1.0, 1.0)
        init.uniform_(self.mlp_in_bias, -1.0, 1.0)
        bound = 1 / math.sqrt(self.MLP_WIDTH)
        init.uniform_(self.mlp_out_weight, -bound, bound)
        init.uniform_(self.mlp_out_bias, -bound, bound)
        init.constant_(self.c, self.INITIAL_C)
        init.constant_(self.threshold_scale, 1.0)


# --------------------------------------------------------------------------------------------------
# Relative terms computed in each layer
# --------------------------------------------------------------------------------------------------


class ShawPositionEncoding(PositionEncoding):
    """`shaw`: relative position representations of Shaw et al. (2018), "Self-Attention with Relative
    Position Representations".

    Each layer learns `a^K, a^V` for the clipped distances `clip(j - i, -k, k)` (`2k + 1` vectors of size
    `D`, shared by the heads, as in the paper):
    `e_ij = q_i (k_j + a^K_ij) / sqrt(D)` and `z_i = sum_j alpha_ij (v_j + a^V_ij)`.
    The value term needs the attention probabilities, so self-attention runs on the eager path whatever
    the model's attention implementation (the results are the same). Defined for every distance.
    """

    summary = "learned key and value vectors per clipped distance, in every layer (Shaw et al., 2018)"
    kind = "relative"
    adds_score_bias = True
    needs_attention_weights = True

    @classmethod
    def check_config(cls, config) -> None:
        if config.shaw_max_distance <= 0:
            raise ValueError(f"shaw_max_distance must be a positive integer, got {config.shaw_max_distance}.")

    def __init__(self, config, num_heads: int, causal: bool) -> None:
        super().__init__(config, num_heads, causal)
        self.max_distance = config.shaw_max_distance

    def attention_positions(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> AttentionPositions:
        distance = relative_distances(query_positions, key_positions)
        return AttentionPositions(
            relative_index=distance.clamp(-self.max_distance, self.max_distance) + self.max_distance
        )

    def make_layer_term(self) -> ShawAttentionTerm:
        return ShawAttentionTerm(2 * self.max_distance + 1, self.head_dim)


class ShawAttentionTerm(RelativeAttentionTerm):
    """One layer's `a^K` (`relative_key`) and `a^V` (`relative_value`), each `(2k + 1, D)`."""

    def __init__(self, num_relative: int, head_dim: int) -> None:
        super().__init__()
        self.relative_key = nn.Embedding(num_relative, head_dim)
        self.relative_value = nn.Embedding(num_relative, head_dim)

    def score_bias(
        self, query: torch.Tensor, key: torch.Tensor, positions: AttentionPositions, scaling: float
    ) -> torch.Tensor:
        logits = torch.matmul(query, self.relative_key.weight.T)  # (B, H, q, n)
        return gather_relative(logits, positions.relative_index) * scaling

    def value_term(self, attn_weights: torch.Tensor, positions: AttentionPositions) -> torch.Tensor:
        batch, heads, q_len, k_len = attn_weights.shape
        index = positions.relative_index[:, None].expand(batch, heads, q_len, k_len)
        per_distance = attn_weights.new_zeros(batch, heads, q_len, self.relative_value.num_embeddings)
        per_distance.scatter_add_(-1, index, attn_weights)  # (B, H, q, n): probability mass per distance
        return torch.matmul(per_distance, self.relative_value.weight)


class TransformerXLPositionEncoding(PositionEncoding):
    """`transformer_xl`: relative attention of Dai et al. (2019), "Transformer-XL".

    `A_ij = (q_i + u) k_j + (q_i + v) W_R R_{i-j}`, all over `sqrt(D)`, with `R` the fixed sinusoids of the
    distance, `W_R` a per-layer projection and `u`, `v` the content and position biases (one per head,
    the same for every query position; learned per layer, as in the released Transformer-XL models).
    The stack builds `R` once for the distances that occur; each layer projects it. The content term
    `q k` runs in the attention kernel, the rest is its `position_bias`. Defined for every distance.
    """

    summary = "sinusoids of the distance projected per layer, with content and position biases (Dai et al., 2019)"
    kind = "relative"
    adds_score_bias = True

    def attention_positions(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> AttentionPositions:
        distance = query_positions[:, :, None] - key_positions[:, None, :]  # (B, q, k): i - j
        smallest = distance.min()
        count = (distance.max() - smallest + 1).item()  # data-dependent: under torch.export an unbacked size,
        torch._check(count >= 0)  # which tracing accepts once it is known not to be negative
        table = torch.arange(count, device=distance.device) + smallest
        return AttentionPositions(
            relative_index=distance - smallest, relative_embeddings=sinusoids(table, self.d_model)
        )

    def make_layer_term(self) -> TransformerXLAttentionTerm:
        return TransformerXLAttentionTerm(self.d_model, self.num_heads, self.head_dim)


class TransformerXLAttentionTerm(RelativeAttentionTerm):
    """One layer's `W_R` (`relative_proj`), `u` (`content_bias`) and `v` (`position_bias`), `(H, D)` each."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.relative_proj = nn.Linear(d_model, num_heads * head_dim, bias=False)
        self.content_bias = nn.Parameter(torch.zeros(num_heads, head_dim))
        self.position_bias = nn.Parameter(torch.zeros(num_heads, head_dim))

    def score_bias(
        self, query: torch.Tensor, key: torch.Tensor, positions: AttentionPositions, scaling: float
    ) -> torch.Tensor:
        embeddings = positions.relative_embeddings.to(query.dtype)
        relative_keys = self.relative_proj(embeddings).unflatten(-1, (self.num_heads, -1)).transpose(0, 1)
        position_logits = torch.matmul(query + self.position_bias[:, None], relative_keys.transpose(1, 2))
        content_logits = torch.matmul(self.content_bias[:, None], key.transpose(2, 3))  # (B, H, 1, k)
        return (gather_relative(position_logits, positions.relative_index) + content_logits) * scaling

    def init_weights(self, config) -> None:
        init.zeros_(self.content_bias)
        init.zeros_(self.position_bias)


POSITION_ENCODINGS: dict[str, type[PositionEncoding]] = {
    "none": NoPositionEncoding,
    "sinusoidal": SinusoidalPositionEncoding,
    "learned": LearnedPositionEncoding,
    "hadamard": HadamardPositionEncoding,
    "shaw": ShawPositionEncoding,
    "transformer_xl": TransformerXLPositionEncoding,
    "t5": T5PositionEncoding,
    "alibi": AlibiPositionEncoding,
    "rope": RotaryPositionEncoding,
    "fire": FirePositionEncoding,
}
"""Name (the config's `position_encoding`) -> class. Adding an encoding: one class and one line here."""


def encodings_where(condition: Callable[[type[PositionEncoding]], bool]) -> list[str]:
    """The registered names whose class meets `condition`, e.g. `encodings_where(lambda e: e.kind == "relative")`."""
    return [name for name, encoding in POSITION_ENCODINGS.items() if condition(encoding)]
