"""The maths of each position encoding, and the properties the model inherits from it.

Oracles, strongest first: transformers' reference implementations (T5's buckets and bias, Llama's
rotary embedding, Marian's sinusoid table, Bloom's ALiBi slopes), the papers' formulas written out
here independently, and model-level properties: relative encodings are invariant to a shift of all
positions, `none` makes the encoder permutation-equivariant, every encoding but `learned` runs past
`max_position_embeddings`. Each property has a control showing that it can fail.
"""

import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, T5Config
from transformers.models.bloom.modeling_bloom import build_alibi_tensor
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding
from transformers.models.t5.modeling_t5 import T5Attention

from conftest import tiny_config
from posformer.configuration.transformers_compat import CACHE_NAME
from posformer.modeling import POSITION_ENCODINGS, PosformerForConditionalGeneration
from posformer.modeling.position_encodings import (
    AlibiPositionEncoding,
    FirePositionEncoding,
    RotaryPositionEncoding,
    T5PositionEncoding,
    alibi_slopes,
    apply_rotary,
    encodings_where,
    sinusoids,
    t5_relative_position_bucket,
)

# What each encoding declares about itself (its class attributes), so that a new encoding is covered here
# by what it says it is; `test_every_encoding_declares_what_it_is` checks that the declarations are complete.
ABSOLUTE = tuple(encodings_where(lambda encoding: encoding.kind == "absolute"))
SHIFT_INVARIANT = tuple(encodings_where(lambda encoding: encoding.kind != "absolute"))
ORDER_AWARE = tuple(encodings_where(lambda encoding: encoding.kind != "none"))
EXTRAPOLATING = tuple(encodings_where(lambda encoding: not encoding.bounded_by_max_positions))

PAD = 0  # tiny_config's pad_token_id


def build(position_encoding: str, attn_implementation: str = "eager", **overrides):
    """A tiny model in eval mode whose every weight is random and far from its init (LayerNorm gains not 1,
    biases and Transformer-XL's u, v not 0, T5/Shaw tables not near 0), so that position terms show. FIRE's threshold
    scale stays near 1 (L near 512, past every position here, where FIRE is shift invariant)."""
    config = tiny_config(position_encoding, **overrides)
    model = PosformerForConditionalGeneration._from_config(config, attn_implementation=attn_implementation)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm.weight" in name or name.endswith("threshold_scale"):
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.copy_(0.3 * torch.randn_like(parameter))
    return model.eval()


def right_padded_source(length: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """`(2, length)` ids, the second row padded after 5 tokens, and its mask."""
    input_ids = torch.randint(3, 99, (2, length))
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, 5:], attention_mask[1, 5:] = PAD, 0
    return input_ids, attention_mask


@pytest.mark.parametrize("name", sorted(POSITION_ENCODINGS))
def test_every_encoding_declares_what_it_is(name):
    """A kind, a one-line summary that names its paper (the model card and `--help` show it), and a docstring
    that opens with its registry name."""
    encoding = POSITION_ENCODINGS[name]
    assert encoding.kind in ("absolute", "relative", "none")
    assert encoding.summary and "\n" not in encoding.summary and len(encoding.summary) <= 110
    assert encoding.summary[0].islower() and not encoding.summary.endswith(".")  # reads after "name: "
    assert encoding.__doc__.startswith(f"`{name}`: ")
    assert (name == "none") == (encoding.kind == "none")


# --------------------------------------------------------------------------------------------------
# T5 buckets and bias
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (16, 50), (9, 30), (64, 256), (4, 7)])
def test_t5_bucket_matches_transformers(bidirectional, num_buckets, max_distance):
    distances = torch.arange(-300, 301)[None].expand(3, -1).clone()  # (3, 601), a batch dimension too
    expected = T5Attention._relative_position_bucket(distances, bidirectional, num_buckets, max_distance)
    actual = t5_relative_position_bucket(distances, bidirectional, num_buckets, max_distance)
    assert actual.dtype == torch.long
    assert torch.equal(actual, expected)
    # every bucket is reached, except, as in T5, when bidirectional: the future half's "distance 0" bucket
    # (0 is in the past half) and, for an odd count, the last one (each half has num_buckets // 2)
    half = num_buckets // 2
    used = [b for b in range(2 * half) if b != half] if bidirectional else list(range(num_buckets))
    assert actual.unique().tolist() == used


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("past", [0, 5])
def test_t5_bias_matches_transformers_compute_bias(causal, past):
    """The bias for queries at `past .. past+q-1` and keys at `0 .. past+q-1` is T5's `compute_bias` on the
    same table: bidirectional buckets in the encoder, causal ones in the decoder."""
    config = tiny_config("t5", t5_num_buckets=10, t5_max_distance=12)
    encoding = T5PositionEncoding(config, num_heads=4, causal=causal)
    torch.nn.init.normal_(encoding.relative_attention_bias.weight)
    t5_config = T5Config(
        d_model=32,
        d_kv=8,
        num_heads=4,
        relative_attention_num_buckets=10,
        relative_attention_max_distance=12,
        is_decoder=causal,
    )
    reference = T5Attention(t5_config, has_relative_attention_bias=True, layer_idx=0)
    reference.relative_attention_bias.weight.data.copy_(encoding.relative_attention_bias.weight.data)

    query_length = 30
    queries = torch.arange(past, past + query_length)[None]
    keys = torch.arange(past + query_length)[None]
    actual = encoding.attention_positions(queries, keys).bias
    expected = reference.compute_bias(query_length, past + query_length, past_seen_tokens=past)
    assert actual.shape == (1, 4, query_length, past + query_length)
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)


# --------------------------------------------------------------------------------------------------
# ALiBi slopes and bias
# --------------------------------------------------------------------------------------------------


def paper_alibi_slopes(n: int) -> list[float]:
    """Press et al. (2022): for a power of two `n`, head `i` (from 0) gets `2^(-8(i+1)/n)`. Otherwise the `m`
    slopes of the largest power of two `m < n`, then the odd-numbered slopes `2^(-8(2j+1)/(2m))` of `2m` heads."""
    m = 2 ** int(math.log2(n))
    slopes = [2 ** (-8 * (i + 1) / m) for i in range(m)]
    return slopes + [2 ** (-8 * (2 * j + 1) / (2 * m)) for j in range(n - m)]


@pytest.mark.parametrize("num_heads", range(1, 17))
def test_alibi_slopes_follow_the_paper(num_heads):
    slopes = alibi_slopes(num_heads)
    assert len(slopes) == num_heads
    assert slopes == pytest.approx(paper_alibi_slopes(num_heads), rel=1e-12, abs=0)
    # transformers' implementation (public in every supported release), in float32: slope * position, position 1
    bloom = build_alibi_tensor(torch.ones(1, 2), num_heads, torch.float32)[:, 0, 1]
    assert slopes == pytest.approx(bloom.tolist(), rel=1e-6, abs=0)


def test_alibi_slopes_spot_values():
    assert alibi_slopes(8) == pytest.approx([1 / 2**k for k in range(1, 9)], rel=1e-12)
    assert alibi_slopes(1) == pytest.approx([2**-8], rel=1e-12)
    assert alibi_slopes(2) == pytest.approx([2**-4, 2**-8], rel=1e-12)
    # 6 heads: the 4-head slopes (1/4, 1/16, 1/64, 1/256), then the 1st and 3rd of the 8-head ones (1/2, 1/8)
    assert alibi_slopes(6) == pytest.approx([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8], rel=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
def test_alibi_bias_is_minus_slope_times_distance(causal):
    encoding = AlibiPositionEncoding(tiny_config("alibi"), num_heads=4, causal=causal)
    queries = torch.tensor([[3, 4, 9], [0, 1, 2]])
    keys = torch.tensor([[0, 3, 4, 9, 20], [0, 1, 2, 5, 7]])
    bias = encoding.attention_positions(queries, keys).bias
    slopes = paper_alibi_slopes(4)
    expected = torch.tensor(
        [
            [[[-slopes[h] * abs(int(k) - int(q)) for k in keys[b]] for q in queries[b]] for h in range(4)]
            for b in range(2)
        ]
    )
    torch.testing.assert_close(bias, expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# FIRE
# --------------------------------------------------------------------------------------------------


def fire_encoding(causal: bool, identity: bool = False, threshold: float = 512.0, c: float = 0.1):
    """A 4-head FIRE encoding whose MLP gives every head `relu(x)` of its input `x` (one hidden unit) or, with
    `identity`, `relu(x) - relu(-x) = x` (two), so that the bias shows the input; `threshold` is `L`, `c` the scale."""
    encoding = FirePositionEncoding(tiny_config("fire"), num_heads=4, causal=causal)
    with torch.no_grad():
        for parameter in (encoding.mlp_in_weight, encoding.mlp_in_bias, encoding.mlp_out_weight, encoding.mlp_out_bias):
            parameter.zero_()
        encoding.mlp_in_weight[0], encoding.mlp_out_weight[:, 0] = 1.0, 1.0
        if identity:
            encoding.mlp_in_weight[1], encoding.mlp_out_weight[:, 1] = -1.0, -1.0
        encoding.threshold_scale.fill_(threshold / 512)
        encoding.c.fill_(c)
    return encoding


def fire_bias(encoding: FirePositionEncoding, queries: list[int], keys: list[int]) -> torch.Tensor:
    """The `(q, k)` bias for one row of query and key positions, checked to be `(1, H, q, k)` and the same in every
    head (as `fire_encoding`'s MLP makes it)."""
    bias = encoding.attention_positions(torch.tensor([queries]), torch.tensor([keys])).bias
    assert bias.shape == (1, 4, len(queries), len(keys))
    torch.testing.assert_close(bias, bias[:, :1].expand_as(bias), atol=0, rtol=0)
    return bias[0, 0]


@torch.no_grad()
def test_fire_decoder_bias_by_hand():
    """Below the threshold L = 512 every visible pair (j <= i) gets relu(psi(i - j) / (psi(L) + eps)), psi(x) =
    log(0.1 x + 1)."""
    bias = fire_bias(fire_encoding(causal=True), [5, 7], [0, 2, 5])
    normaliser = math.log(0.1 * 512 + 1) + 1e-6
    expected = [[math.log(1.5), math.log(1.3), 0.0], [math.log(1.7), math.log(1.5), math.log(1.2)]]
    torch.testing.assert_close(bias, torch.tensor(expected) / normaliser, atol=1e-7, rtol=1e-6)


@torch.no_grad()
def test_fire_bias_past_the_threshold_by_hand():
    """L = 4: a query below it is normalised by psi(4), one past it by psi(i), its own position (progressive
    interpolation); the future key of the first row (masked in the decoder) gets relu of a negative input, 0."""
    bias = fire_bias(fire_encoding(causal=True, threshold=4.0), [3, 10], [0, 1, 3, 10])
    psi_4, psi_10 = math.log(1.4) + 1e-6, math.log(2.0) + 1e-6
    expected = [
        [math.log(1.3) / psi_4, math.log(1.2) / psi_4, 0.0, 0.0],
        [math.log(2.0) / psi_10, math.log(1.9) / psi_10, math.log(1.7) / psi_10, 0.0],
    ]
    torch.testing.assert_close(bias, torch.tensor(expected), atol=1e-7, rtol=1e-6)


@torch.no_grad()
def test_fire_encoder_bias_keeps_left_and_right_apart_by_hand():
    """Bidirectional, f(x) = x: keys after the query get the negated input of keys as far before it, and the
    normaliser is psi of the farther of the two positions (L = 4): psi(max(L, i, j))."""
    bias = fire_bias(fire_encoding(causal=False, identity=True, threshold=4.0), [2, 6], [0, 2, 6, 10])
    psi_4, psi_6, psi_10 = math.log(1.4) + 1e-6, math.log(1.6) + 1e-6, math.log(2.0) + 1e-6
    expected = [
        [math.log(1.2) / psi_4, 0.0, -math.log(1.4) / psi_6, -math.log(1.8) / psi_10],
        [math.log(1.6) / psi_6, math.log(1.4) / psi_6, 0.0, -math.log(1.4) / psi_10],
    ]
    torch.testing.assert_close(bias, torch.tensor(expected), atol=1e-7, rtol=1e-6)
    positions = [0, 3, 9, 40, 700]
    square = fire_bias(fire_encoding(causal=False, identity=True, threshold=4.0), positions, positions)
    torch.testing.assert_close(square, -square.T, atol=0, rtol=0)


def papers_causal_fire(length: int, mlp: nn.Module, c: torch.Tensor, threshold_scale: torch.Tensor) -> torch.Tensor:
    """Li et al. (2024)'s decoder bias for positions `0 .. length-1`, `(1, H, length, length)`, computed the way the
    paper's reference code computes it: the normaliser is the query position thresholded at `|scale * 512|`, the
    MLP two `nn.Linear` layers, and the future half (masked there) is the mirror image of the past."""
    positions = torch.arange(length, dtype=torch.float32)
    distance = torch.log(torch.abs(c * (positions[:, None] - positions[None, :])) + 1)
    normaliser = torch.log(torch.abs(c * torch.max(positions, torch.abs(threshold_scale * 512.0))[:, None]) + 1) + 1e-6
    return mlp((distance / normaliser)[..., None]).permute(2, 0, 1)[None]


@pytest.mark.parametrize("c, threshold_scale", [(0.1, 1.0), (0.7, 0.2), (-0.3, -0.02)], ids=["init", "L=102", "L=10"])
@torch.no_grad()
def test_fire_decoder_bias_matches_the_papers_formula_on_identical_weights(c, threshold_scale):
    encoding = FirePositionEncoding(tiny_config("fire"), num_heads=4, causal=True)
    encoding.c.fill_(c)
    encoding.threshold_scale.fill_(threshold_scale)
    mlp = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 4))
    mlp[0].weight.copy_(encoding.mlp_in_weight[:, None])
    mlp[0].bias.copy_(encoding.mlp_in_bias)
    mlp[2].weight.copy_(encoding.mlp_out_weight)
    mlp[2].bias.copy_(encoding.mlp_out_bias)
    length = 300
    positions = torch.arange(length)[None]
    actual = encoding.attention_positions(positions, positions).bias
    expected = papers_causal_fire(length, mlp, encoding.c, encoding.threshold_scale)
    visible = torch.ones(length, length, dtype=torch.bool).tril()
    torch.testing.assert_close(actual[..., visible], expected[..., visible], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
@torch.no_grad()
def test_fire_bias_below_the_threshold_depends_on_i_minus_j_only(causal):
    """With every position below L = 512, shifting them all leaves the bias (of a randomly initialised MLP)
    unchanged to the bit."""
    encoding = FirePositionEncoding(tiny_config("fire"), num_heads=4, causal=causal)
    queries, keys = torch.tensor([[0, 3, 4, 9, 30], [1, 2, 3, 4, 5]]), torch.arange(40)[None].repeat(2, 1)
    bias = encoding.attention_positions(queries, keys).bias
    assert bias.std(dim=-1).min() > 1e-3  # it does vary with the distance
    for offset in (1, 100, 471):  # 471: the farthest key at 510
        shifted = encoding.attention_positions(queries + offset, keys + offset).bias
        torch.testing.assert_close(shifted, bias, atol=0, rtol=0)


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
@torch.no_grad()
def test_fire_bias_past_the_threshold_depends_on_the_normalised_distance(causal):
    """Past L (here 4) pairs at equal psi(|i - j|) / psi(max(i, j)) get equal bias however far apart they are: with
    c = 1, psi(x) = log(x + 1), every pair (i, i - d) with d + 1 = sqrt(i + 1) is at 1/2. Control: pairs at the
    same distance d = 4 but different positions do not."""
    encoding = FirePositionEncoding(tiny_config("fire"), num_heads=4, causal=causal)
    encoding.c.fill_(1.0)
    encoding.threshold_scale.fill_(4 / 512)
    queries = torch.tensor([[8, 24, 99, 120, 9800, 24, 120]])
    keys = torch.tensor([[6, 20, 90, 110, 9702, 20, 116]])
    bias = encoding.attention_positions(queries, keys).bias[0].diagonal(dim1=-2, dim2=-1)  # (H, pairs)
    halves = bias[:, :5]
    torch.testing.assert_close(halves, halves[:, :1].expand_as(halves), atol=1e-5, rtol=0)
    assert (bias[:, 5] - bias[:, 6]).abs().max() > 1e-3  # d = 4 at positions 24 and 120
    if not causal:  # the same pairs the other way round: equal among themselves, apart from the forward ones
        backward = encoding.attention_positions(keys, queries).bias[0].diagonal(dim1=-2, dim2=-1)[:, :5]
        torch.testing.assert_close(backward, backward[:, :1].expand_as(backward), atol=1e-5, rtol=0)
        assert (backward - halves).abs().max() > 1e-3


def fire_input_range(causal: bool, threshold: float) -> tuple[float, float]:
    """The smallest and largest MLP input (f(x) = x) over query and key positions 0 .. 5000, every 7th and 5000."""
    positions = torch.cat([torch.arange(0, 5000, 7), torch.tensor([5000])])[None]
    inputs = fire_encoding(causal, identity=True, threshold=threshold).attention_positions(positions, positions).bias
    return inputs.min().item(), inputs.max().item()


@pytest.mark.parametrize("threshold", [512.0, 4.0])
@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
@torch.no_grad()
def test_fire_inputs_stay_within_minus_one_and_one_at_any_length(causal, threshold):
    """Up to ten times the threshold and past, every MLP input is in [-1, 1], and the whole range is used (5000 and
    0 are at +-1): lengths never seen in training are interpolated into the inputs it saw, not extrapolated."""
    smallest, largest = fire_input_range(causal, threshold)
    assert -1 <= smallest < -0.99 and 0.99 < largest <= 1


@torch.no_grad()
def test_fire_inputs_leave_minus_one_and_one_with_a_fixed_normaliser(monkeypatch):
    """Control: with the normaliser fixed at its value below the threshold, psi(L) + eps (no progressive
    interpolation), distances past L = 512 give inputs beyond [-1, 1] (psi(5000) / psi(512) = 1.58)."""
    monkeypatch.setattr(
        FirePositionEncoding,
        "normaliser",
        lambda self, queries, keys: self.psi(self.threshold_scale.abs() * self.INITIAL_THRESHOLD) + self.EPS,
    )
    smallest, largest = fire_input_range(causal=False, threshold=512.0)
    assert smallest < -1.5 and largest > 1.5


def test_fire_starts_at_the_papers_init_and_reloads_exactly(tmp_path):
    """The model's `_init_weights` leaves FIRE at the paper's init (c = 0.1, L = 512, the MLP at PyTorch's
    nn.Linear default rather than transformers' N(0, init_std) weights and zero biases, under which it would start
    dead), and save -> reload gives back every FIRE parameter to the bit."""
    model = PosformerForConditionalGeneration(tiny_config("fire"))
    encodings = {"encoder": model.model.encoder.position_encoding, "decoder": model.model.decoder.position_encoding}
    for encoding in encodings.values():
        assert encoding.c.item() == pytest.approx(0.1, rel=1e-7) and encoding.threshold_scale.item() == 1.0
        assert 0.2 < encoding.mlp_in_weight.abs().max() <= 1 and 0.2 < encoding.mlp_in_bias.abs().max() <= 1
        bound = 1 / math.sqrt(32)
        assert 0.05 < encoding.mlp_out_weight.abs().max() <= bound and 0 < encoding.mlp_out_bias.abs().max() <= bound
        positions = torch.arange(20)[None]
        assert encoding.attention_positions(positions, positions).bias.std() > 1e-3  # not dead: it varies

    with torch.no_grad():  # away from the init, so that a reload which re-initialised would show
        for encoding in encodings.values():
            for parameter in encoding.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    again = PosformerForConditionalGeneration.from_pretrained(tmp_path)
    reloaded = dict(again.named_parameters())
    saved = {name: p for name, p in model.named_parameters() if ".position_encoding." in name}
    assert len(saved) == 12  # 6 per stack
    for name, parameter in saved.items():
        assert torch.equal(reloaded[name], parameter), name


# --------------------------------------------------------------------------------------------------
# Rotary
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d_model, heads, theta", [(32, 2, 10000.0), (24, 2, 500.0), (48, 4, 1_000_000.0)])
def test_rotary_matches_llama(d_model, heads, theta):
    config = tiny_config(
        "rope", d_model=d_model, encoder_attention_heads=heads, decoder_attention_heads=heads, rope_theta=theta
    )
    head_dim = d_model // heads
    encoding = RotaryPositionEncoding(config, heads, causal=False)
    positions = torch.stack([torch.arange(12), torch.tensor([0, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377])])
    query, key = torch.randn(2, heads, 12, head_dim), torch.randn(2, heads, 12, head_dim)

    cos, sin = encoding.attention_positions(positions, positions).rotary
    actual_query, actual_key = apply_rotary(query, key, cos, sin)

    llama_config = LlamaConfig(
        hidden_size=d_model,
        num_attention_heads=heads,
        head_dim=head_dim,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    llama_cos, llama_sin = LlamaRotaryEmbedding(llama_config)(query, positions)
    expected_query, expected_key = apply_rotary_pos_emb(query, key, llama_cos, llama_sin)

    # float32 angles up to 377 rad: theta^(-x) and Llama's 1 / theta^x differ in the last bit, so allow ~1e-4
    torch.testing.assert_close(cos, llama_cos, atol=5e-5, rtol=0)
    torch.testing.assert_close(sin, llama_sin, atol=5e-5, rtol=0)
    torch.testing.assert_close(actual_query, expected_query, atol=2e-4, rtol=0)
    torch.testing.assert_close(actual_key, expected_key, atol=2e-4, rtol=0)
    assert not torch.allclose(actual_query[:, :, 1:], query[:, :, 1:], atol=1e-2)  # it does rotate


# --------------------------------------------------------------------------------------------------
# Sinusoids
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [16, 17, 32, 33])
def test_sinusoids_match_marian_table(dim):
    num_positions = 200
    expected = MarianSinusoidalPositionalEmbedding(num_positions, dim).create_weight()
    actual = sinusoids(torch.arange(num_positions), dim)
    assert actual.shape == (num_positions, dim) and actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# Shift invariance of the relative encodings, at the model level
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("encoding", SHIFT_INVARIANT)
@torch.no_grad()
def test_encoder_output_is_invariant_to_a_shift_of_positions(encoding, attn_implementation):
    encoder = build(encoding, attn_implementation).get_encoder()
    input_ids, attention_mask = right_padded_source()
    positions = torch.arange(input_ids.shape[1])[None]
    default = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    explicit = encoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    shifted = encoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions + 37).last_hidden_state
    torch.testing.assert_close(explicit, default, atol=0, rtol=0)
    torch.testing.assert_close(shifted, default, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoding", ABSOLUTE)
@torch.no_grad()
def test_absolute_encodings_are_not_shift_invariant(encoding):
    """Control: the same shift does change the encoder output of an absolute encoding."""
    encoder = build(encoding).get_encoder()
    input_ids, attention_mask = right_padded_source()
    positions = torch.arange(input_ids.shape[1])[None]
    default = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    shifted = encoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions + 37).last_hidden_state
    assert (shifted - default).abs().max() > 0.1


@pytest.mark.parametrize(
    "source_shift, target_shift", [(37, 37), (37, 0), (0, 23)], ids=["both", "source-only", "target-only"]
)
@pytest.mark.parametrize("encoding", SHIFT_INVARIANT)
@torch.no_grad()
def test_logits_and_attentions_are_invariant_to_a_shift_of_positions(encoding, source_shift, target_shift):
    """Shifting all source and target positions by the same constant changes nothing. Shifting one side
    alone changes nothing either: cross-attention gets no position term, so it cannot see the offset
    between source and target positions."""
    model = build(encoding)
    input_ids, attention_mask = right_padded_source()
    decoder_input_ids = torch.randint(3, 99, (2, 6))
    positions = torch.arange(input_ids.shape[1])[None]
    decoder_positions = torch.arange(decoder_input_ids.shape[1])[None]
    inputs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        decoder_input_ids=decoder_input_ids,
        use_cache=False,
        output_attentions=True,
    )
    default = model(**inputs)
    shifted = model(
        **inputs, position_ids=positions + source_shift, decoder_position_ids=decoder_positions + target_shift
    )
    torch.testing.assert_close(shifted.logits, default.logits, atol=1e-4, rtol=1e-5)
    for kind in ("encoder_attentions", "decoder_attentions", "cross_attentions"):
        expected, actual = getattr(default, kind), getattr(shifted, kind)
        assert len(actual) == len(expected) == 2, kind
        for layer_actual, layer_expected in zip(actual, expected, strict=True):
            torch.testing.assert_close(layer_actual, layer_expected, atol=1e-5, rtol=1e-5, msg=kind)


@pytest.mark.parametrize("encoding", sorted(POSITION_ENCODINGS))
@torch.no_grad()
def test_cached_decoding_with_shifted_positions_matches_uncached(encoding):
    """Decoder positions 37..41 given explicitly: three tokens, then two through the cache, equal one
    uncached forward over all five."""
    model = build(encoding)
    input_ids, attention_mask = right_padded_source()
    decoder_input_ids = torch.randint(3, 99, (2, 5))
    positions = torch.arange(5)[None] + 37
    source = dict(input_ids=input_ids, attention_mask=attention_mask)
    uncached = model(**source, decoder_input_ids=decoder_input_ids, decoder_position_ids=positions, use_cache=False)
    prefix = model(
        **source, decoder_input_ids=decoder_input_ids[:, :3], decoder_position_ids=positions[:, :3], use_cache=True
    )
    step = model(
        **source,
        decoder_input_ids=decoder_input_ids[:, 3:],
        decoder_position_ids=positions[:, 3:],
        use_cache=True,
        **{CACHE_NAME: getattr(prefix, CACHE_NAME)},
    )
    torch.testing.assert_close(prefix.logits, uncached.logits[:, :3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step.logits, uncached.logits[:, 3:], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Order: `none` sees none, every other encoding does
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_none_encoder_is_permutation_equivariant():
    encoder = build("none").get_encoder()
    input_ids = torch.randint(3, 99, (2, 9))
    permutation = torch.randperm(9)
    output = encoder(input_ids=input_ids).last_hidden_state
    permuted = encoder(input_ids=input_ids[:, permutation]).last_hidden_state
    torch.testing.assert_close(permuted, output[:, permutation], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("encoding", ORDER_AWARE)
@torch.no_grad()
def test_other_encoders_are_not_permutation_equivariant(encoding):
    """Control for `none`, and a check that each encoding gives the encoder some position signal."""
    encoder = build(encoding).get_encoder()
    input_ids = torch.randint(3, 99, (2, 9))
    permutation = torch.randperm(9)
    output = encoder(input_ids=input_ids).last_hidden_state
    permuted = encoder(input_ids=input_ids[:, permutation]).last_hidden_state
    assert (permuted - output[:, permutation]).abs().max() > 0.05


# --------------------------------------------------------------------------------------------------
# Lengths past max_position_embeddings
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", EXTRAPOLATING)
@torch.no_grad()
def test_runs_past_max_position_embeddings(encoding):
    """A 40-token source and 30 generated tokens with max_position_embeddings=16: finite logits, and the
    cached generation step by step agrees with one uncached forward over the generated sequence."""
    model = build(encoding, max_position_embeddings=16)
    input_ids = torch.randint(3, 99, (2, 40))
    generated = model.generate(
        input_ids=input_ids,
        max_new_tokens=30,
        min_new_tokens=30,
        do_sample=False,
        num_beams=1,
        output_logits=True,
        return_dict_in_generate=True,
    )
    assert generated.sequences.shape == (2, 31)
    step_logits = torch.stack(generated.logits, dim=1)  # (B, 30, V), before any logits processor
    assert step_logits.isfinite().all()
    forward_logits = model(input_ids=input_ids, decoder_input_ids=generated.sequences[:, :-1], use_cache=False).logits
    assert forward_logits.isfinite().all()
    torch.testing.assert_close(step_logits, forward_logits, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_learned_raises_past_max_position_embeddings():
    model = build("learned", max_position_embeddings=16)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(input_ids=torch.randint(3, 99, (2, 40)), decoder_input_ids=torch.randint(3, 99, (2, 3)))
    # within the table on the source side, but the target grows past it during generation
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.generate(input_ids=torch.randint(3, 99, (2, 8)), max_new_tokens=30, min_new_tokens=30, do_sample=False)
    # control: up to the last row of the table it runs
    model.generate(input_ids=torch.randint(3, 99, (2, 16)), max_new_tokens=16, min_new_tokens=16, do_sample=False)
