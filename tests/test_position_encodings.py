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
    biases and Transformer-XL's u, v not 0, T5/Shaw tables not near 0), so that position terms show."""
    config = tiny_config(position_encoding, **overrides)
    model = PosformerForConditionalGeneration._from_config(config, attn_implementation=attn_implementation)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm.weight" in name:
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
