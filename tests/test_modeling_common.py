"""The common suite: every check runs for every registered position encoding (and attention backend),
so an encoding added to the registry is covered without new test code."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import Seq2SeqLMOutput, Seq2SeqModelOutput

from conftest import enable_activation_checkpointing, tiny_config
from posformer.configuration.transformers_compat import CACHE_NAME
from posformer.modeling import POSITION_ENCODINGS, PosformerForConditionalGeneration, PosformerModel, modeling_posformer
from posformer.modeling.modeling_posformer import LinearCrossEntropy, TokenCrossEntropy

ENCODINGS = sorted(POSITION_ENCODINGS)
BACKENDS = ["eager", "sdpa"]

# Encoding x backend pairs that cannot run, with the reason. Everything else must.
UNSUPPORTED = {
    (name, backend): "the encoding adds a score bias, which flash-attention cannot apply"
    for name, cls in POSITION_ENCODINGS.items()
    if cls.adds_score_bias
    for backend in ("flash_attention_2", "flash_attention_3")
} | {
    (name, "flex_attention"): "the relative value term needs the attention probabilities"
    for name, cls in POSITION_ENCODINGS.items()
    if cls.needs_attention_weights
}


# The architecture options besides the paper's (what Marian, BART, mBART and T5 need: `from_transformers.py`), each
# set checked with every encoding by the tests parametrized over ARCHITECTURES.
ARCHITECTURES = {
    "paper": {},
    "bart": {
        "layernorm_embedding": True, "final_logits_bias": True, "scale_embedding": False, "activation_function": "gelu",
    },
    "separate_vocabularies": {"share_encoder_decoder_embeddings": False, "decoder_vocab_size": 120},
    "t5": {
        "normalize_before": True, "norm_type": "rms_norm", "layer_norm_eps": 1e-6, "projection_bias": False,
        "scale_attention_scores": False, "gated_feed_forward": True, "activation_function": "gelu_new",
        "head_dim": 6, "scale_decoder_output": True, "scale_embedding": False,
    },
}  # fmt: skip


def build(position_encoding: str, attn_implementation: str = "sdpa", **overrides) -> PosformerForConditionalGeneration:
    """A tiny model; a `final_logits_bias` gets random values (its init is zeros), so that it shows in the logits."""
    config = tiny_config(position_encoding, **overrides)
    config._attn_implementation = attn_implementation
    model = PosformerForConditionalGeneration(config)
    if model.final_logits_bias is not None:
        model.final_logits_bias.normal_(std=0.5)
    return model.eval()


# Weights under which attention moves the residual stream. At the default init_std (0.02) a decoder that lost its
# history still scores like one that kept it (random `rope` and `t5` models within 1e-7 of each other: only what
# enters the residual stream directly, like `sinusoidal`'s positions, shows), so the cache tests use 0.2, where
# dropping the history moves every encoding's scores by 1 or more (`test_the_cache_tests_see_a_lost_history`).
ATTENTION_MATTERS = {"init_std": 0.2}


def batch(batch_size: int = 3, src_len: int = 9, tgt_len: int = 7):
    """Right-padded sources (row 1 has 3 pads, row 2 has 1) and targets, ids 4..98 (0-3 are special)."""
    src = torch.randint(4, 99, (batch_size, src_len))
    mask = torch.ones_like(src)
    mask[1, -3:] = 0
    mask[2 % batch_size, -1:] = 0
    src = src.masked_fill(mask == 0, 0)
    tgt = torch.randint(4, 99, (batch_size, tgt_len))
    return src, mask, tgt


GREEDY, BEAM, SAMPLING = {"num_beams": 1}, {"num_beams": 3}, {"do_sample": True, "top_k": 0}


def assert_cached_generation_equals_uncached(
    model: PosformerForConditionalGeneration, cache_implementation: str | None = None, **generation
) -> None:
    """`generate` with and without the cache (as the installed transformers drives it: `cache=` from 5.24 on,
    `past_key_values=` before; a dynamic cache, or the `cache_implementation` given) gives the same tokens and the
    same per-step scores; beam search reorders the cache after every step, so its scores also check the reordering."""
    src, mask, _ = batch()
    results = []
    for use_cache in (True, False):
        implementation = {"cache_implementation": cache_implementation} if use_cache and cache_implementation else {}
        torch.manual_seed(3)  # the same draws for sampling
        out = model.generate(
            src,
            attention_mask=mask,
            max_new_tokens=8,
            min_new_tokens=8,
            use_cache=use_cache,
            output_scores=True,
            return_dict_in_generate=True,
            **implementation,
            **generation,
        )
        results.append((out.sequences, torch.stack(out.scores)))
    (cached, cached_scores), (uncached, uncached_scores) = results
    assert torch.equal(cached, uncached), generation
    torch.testing.assert_close(cached_scores, uncached_scores, atol=1e-4, rtol=1e-4, msg=str(generation))


def decode_step_by_step(model: PosformerForConditionalGeneration, argument: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(full forward logits, logits of the target fed one token at a time through the cache)`, the cache passed back
    as `argument` and read from the output field of the installed transformers' name."""
    src, mask, tgt = batch()
    with torch.no_grad():
        full = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        encoder_outputs = model.get_encoder()(input_ids=src, attention_mask=mask)
        cache, steps = None, []
        for t in range(tgt.shape[1]):
            out = model(
                encoder_outputs=encoder_outputs,
                attention_mask=mask,
                decoder_input_ids=tgt[:, t : t + 1],
                use_cache=True,
                **{argument: cache},
            )
            cache = getattr(out, CACHE_NAME)
            steps.append(out.logits)
    return full, torch.cat(steps, dim=1)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_cached_generation_equals_uncached(encoding, backend, architecture):
    model = build(encoding, backend, **ARCHITECTURES[architecture], **ATTENTION_MATTERS)
    for generation in (GREEDY, BEAM):
        assert_cached_generation_equals_uncached(model, **generation)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_static_cache_generation_equals_uncached(encoding, architecture):
    """A static cache holds `max_length` slots from the start: the keys of its empty slots get positions after the
    last token (and are masked), so relative encodings see a key length that matches."""
    model = build(encoding, **ARCHITECTURES[architecture], **ATTENTION_MATTERS)
    for generation in (GREEDY, BEAM):
        assert_cached_generation_equals_uncached(model, cache_implementation="static", **generation)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sampling_with_cache_equals_sampling_without(encoding):
    assert_cached_generation_equals_uncached(build(encoding, **ATTENTION_MATTERS), **SAMPLING)


@pytest.mark.parametrize("argument", ["cache", "past_key_values"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_cached_step_logits_equal_full_forward(encoding, argument):
    """Feeding the target one token at a time through the cache gives the full forward's logits, whichever name
    the cache is passed under (`cache`, transformers 5.24's, or `past_key_values`, earlier releases' and older
    user code's)."""
    model = build(encoding, **ATTENTION_MATTERS)
    if argument == "past_key_values" and CACHE_NAME == "cache":  # warns from 5.24 on, as transformers' models do
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
            full, steps = decode_step_by_step(model, argument)
    else:
        full, steps = decode_step_by_step(model, argument)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", [name for name in ARCHITECTURES if name != "paper"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_cached_step_logits_equal_full_forward_in_every_architecture(encoding, architecture):
    full, steps = decode_step_by_step(build(encoding, **ARCHITECTURES[architecture], **ATTENTION_MATTERS), "cache")
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-4)


def test_the_cache_is_passed_under_one_name_only():
    model = build("sinusoidal")
    src, mask, tgt = batch()
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with pytest.raises(ValueError, match="`cache` or as `past_key_values`, not both"):
        model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, cache=cache, past_key_values=cache)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_cache_tests_see_a_lost_history(encoding, monkeypatch):
    """With the decoder handed no cache (what transformers 5.24's `cache=` did to a forward that only knew
    `past_key_values`: it decoded every step without its history), each cache test above fails for every encoding."""
    model = build(encoding, **ATTENTION_MATTERS)
    monkeypatch.setattr(modeling_posformer, "resolve_cache", lambda cache, past_key_values: None)
    for generation in (GREEDY, BEAM, SAMPLING):
        with pytest.raises(AssertionError):
            assert_cached_generation_equals_uncached(model, **generation)
    full, steps = decode_step_by_step(model, CACHE_NAME)
    assert (steps - full).abs().max() > 0.1


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_beam_search_test_sees_a_cache_left_unordered(encoding, monkeypatch):
    """Beam search reorders the cache after every step (`_reorder_cache`); skipping that fails the cached = uncached
    beam-search check for every encoding."""
    monkeypatch.setattr(PosformerForConditionalGeneration, "_reorder_cache", lambda self, cache, beam_idx: cache)
    with pytest.raises(AssertionError):
        assert_cached_generation_equals_uncached(build(encoding, **ATTENTION_MATTERS), **BEAM)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_decoder_alone_skips_cross_attention_and_caches_like_it_runs_uncached(encoding):
    """Without encoder states the decoder is a causal language model: its cross-attention sub-layers are skipped
    (their weights change nothing, and they write nothing into the cache), and decoding it token by token through
    the cache gives its full forward."""
    decoder = build(encoding, **ATTENTION_MATTERS).get_decoder()
    _, _, tgt = batch()
    with torch.no_grad():
        full = decoder(input_ids=tgt).last_hidden_state
        cache, steps = None, []
        for t in range(tgt.shape[1]):
            out = decoder(input_ids=tgt[:, t : t + 1], use_cache=True, **{CACHE_NAME: cache})
            cache = getattr(out, CACHE_NAME)
            steps.append(out.last_hidden_state)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
        assert cache.self_attention_cache.get_seq_length() == tgt.shape[1]
        assert cache.cross_attention_cache.get_seq_length() == 0
        for layer in decoder.layers:
            layer.encoder_attn.out_proj.weight.add_(1.0)
        torch.testing.assert_close(decoder(input_ids=tgt).last_hidden_state, full, atol=0, rtol=0)


def test_logits_to_keep_projects_only_the_kept_positions():
    """What `generate` asks for (`logits_to_keep=1`), as transformers' causal models do it: the last positions'
    logits, or those at listed positions, equal to the full forward's; with labels every logit is needed."""
    model = build("rope")
    src, mask, tgt = batch()
    inputs = dict(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
    with torch.no_grad():
        full = model(**inputs).logits
        torch.testing.assert_close(model(**inputs, logits_to_keep=1).logits, full[:, -1:])
        torch.testing.assert_close(model(**inputs, logits_to_keep=3).logits, full[:, -3:])
        torch.testing.assert_close(model(**inputs, logits_to_keep=torch.tensor([0, 4])).logits, full[:, [0, 4]])
        torch.testing.assert_close(model(**inputs, logits_to_keep=0).logits, full)
    assert model._supports_logits_to_keep()
    with pytest.raises(ValueError, match="logits_to_keep=1 drops logits that the loss"):
        model(input_ids=src, attention_mask=mask, labels=tgt, logits_to_keep=1)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_eager_equals_sdpa(encoding, architecture):
    eager = build(encoding, "eager", **ARCHITECTURES[architecture])
    sdpa = build(encoding, "sdpa", **ARCHITECTURES[architecture])
    sdpa.load_state_dict(eager.state_dict())
    src, mask, tgt = batch()
    dec_mask = torch.ones_like(tgt)
    dec_mask[0, -2:] = 0
    with torch.no_grad():
        for kwargs in ({}, {"decoder_attention_mask": dec_mask}):
            expected = eager(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, **kwargs).logits
            actual = sdpa(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, **kwargs).logits
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
        # an unpadded batch: sdpa then relies on `is_causal`, which must be False in the encoder
        full = torch.ones_like(mask)
        expected = eager(input_ids=src, attention_mask=full, decoder_input_ids=tgt).logits
        torch.testing.assert_close(sdpa(input_ids=src, decoder_input_ids=tgt).logits, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_padded_row_equals_row_alone(encoding, backend, architecture):
    model = build(encoding, backend, **ARCHITECTURES[architecture])
    src, mask, tgt = batch()
    dec_mask = torch.ones_like(tgt)
    dec_mask[1, -2:] = 0
    with torch.no_grad():
        padded = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, decoder_attention_mask=dec_mask)
        alone = model(input_ids=src[1:2, :-3], decoder_input_ids=tgt[1:2, :-2])
    torch.testing.assert_close(padded.logits[1, :-2], alone.logits[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        padded.encoder_last_hidden_state[1, :-3], alone.encoder_last_hidden_state[0], atol=1e-5, rtol=1e-4
    )
    generated_padded = model.generate(src, attention_mask=mask, max_new_tokens=6, min_new_tokens=6)
    generated_alone = model.generate(src[1:2, :-3], max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(generated_padded[1:2], generated_alone)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_decoder_is_causal(encoding, backend):
    model = build(encoding, backend)
    src, mask, tgt = batch()
    changed = tgt.clone()
    changed[:, 4] = (changed[:, 4] + 1 - 4) % 95 + 4
    with torch.no_grad():
        before = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        after = model(input_ids=src, attention_mask=mask, decoder_input_ids=changed).logits
    torch.testing.assert_close(after[:, :4], before[:, :4], atol=1e-6, rtol=0)
    assert not torch.allclose(after[:, 4:], before[:, 4:], atol=1e-4)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_save_reload_gives_equal_logits(encoding, architecture, tmp_path):
    model = build(encoding, **ARCHITECTURES[architecture])
    with torch.no_grad():  # make every parameter matter, including zero-initialised ones
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "generation_config.json").exists()
    src, mask, tgt = batch()
    for backend in BACKENDS:
        again, info = AutoModelForSeq2SeqLM.from_pretrained(
            tmp_path, attn_implementation=backend, output_loading_info=True
        )
        assert type(again) is PosformerForConditionalGeneration
        assert again.config._attn_implementation == backend
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
        with torch.no_grad():
            expected = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
            actual = again.eval()(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


TIED_EMBEDDING_NAMES = (
    "model.shared.weight",
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
)


@pytest.mark.parametrize("stored_as", TIED_EMBEDDING_NAMES)
def test_a_tied_checkpoint_loads_from_whichever_tied_name_holds_the_embedding(tmp_path, stored_as):
    """The encoder's, decoder's and head's tables are one tied matrix: a checkpoint holding it under any of their
    names (other tools keep `lm_head.weight`) loads complete, tied, and with the same function."""
    model = build("sinusoidal")
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights[stored_as] = weights.pop("model.shared.weight")
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    again, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name in TIED_EMBEDDING_NAMES:
        assert again.get_parameter(name) is again.model.shared.weight
    src, mask, tgt = batch()
    with torch.no_grad():
        expected = model.eval()(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        actual = again.eval()(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("tie_word_embeddings", [True, False])
def test_a_checkpoint_without_the_shared_embedding_reports_it_missing(tmp_path, tie_word_embeddings):
    """Missing under every tied name, the embedding is reported missing and initialised, as any missing weight is
    (transformers 5.24 used to drop it from the missing keys and leave it on the meta device), and stays tied."""
    build("sinusoidal", tie_word_embeddings=tie_word_embeddings).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.shared.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    again, info = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    assert "model.shared.weight" in info["missing_keys"]
    assert again.model.shared.weight.device.type == "cpu" and torch.isfinite(again.model.shared.weight).all()
    assert again.model.encoder.embed_tokens.weight is again.model.shared.weight
    assert again.model.decoder.embed_tokens.weight is again.model.shared.weight
    assert (again.lm_head.weight is again.model.shared.weight) == tie_word_embeddings


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_loss_is_finite_and_gradients_reach_every_parameter(encoding, architecture):
    model = build(encoding, dropout=0.1, attention_dropout=0.1, **ARCHITECTURES[architecture]).train()
    src, mask, tgt = batch()
    labels = tgt.clone()
    labels[0, -2:] = -100
    out = model(input_ids=src, attention_mask=mask, labels=labels)
    assert isinstance(out, Seq2SeqLMOutput) and torch.isfinite(out.loss)
    out.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_output_attentions_and_hidden_states(encoding):
    model = build(encoding, "eager")
    src, mask, tgt = batch()
    with torch.no_grad():
        out = model(
            input_ids=src, attention_mask=mask, decoder_input_ids=tgt, output_attentions=True, output_hidden_states=True
        )
    assert len(out.encoder_hidden_states) == len(out.decoder_hidden_states) == 3  # embeddings + 2 layers
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    batch_size, src_len, tgt_len, heads = src.shape[0], src.shape[1], tgt.shape[1], 4
    expected = {
        "encoder_attentions": (2, (batch_size, heads, src_len, src_len)),
        "decoder_attentions": (2, (batch_size, heads, tgt_len, tgt_len)),
        "cross_attentions": (2, (batch_size, heads, tgt_len, src_len)),
    }
    for field, (count, shape) in expected.items():
        maps = getattr(out, field)
        assert len(maps) == count, field
        for weights in maps:
            assert weights.shape == shape, field
            torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1]))
    # padding gets no attention; the decoder attends to no future token
    assert out.encoder_attentions[0][1, :, :, -3:].abs().max() == 0
    assert out.cross_attentions[0][1, :, :, -3:].abs().max() == 0
    assert torch.triu(out.decoder_attentions[0], diagonal=1).abs().max() == 0


def test_model_returns_seq2seq_model_output():
    model = PosformerModel(tiny_config()).eval()
    src, mask, tgt = batch()
    out = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
    assert isinstance(out, Seq2SeqModelOutput)
    assert out.last_hidden_state.shape == (3, tgt.shape[1], 32)
    assert out.encoder_last_hidden_state.shape == (3, src.shape[1], 32)
    as_tuple = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state)


def test_labels_are_shifted_into_decoder_inputs_and_minus_100_is_ignored():
    model = build("sinusoidal")
    src, mask, tgt = batch()
    labels = tgt.clone()
    labels[:, -2:] = -100
    decoder_input_ids = torch.cat([torch.full((3, 1), model.config.decoder_start_token_id), tgt[:, :-1]], dim=1)
    decoder_input_ids[:, -1] = model.config.pad_token_id  # the -100 at position -2 becomes pad
    with torch.no_grad():
        out = model(input_ids=src, attention_mask=mask, labels=labels)
        explicit = model(input_ids=src, attention_mask=mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(out.logits, explicit.logits)
    log_probs = explicit.logits.log_softmax(-1)
    kept = labels != -100
    expected = -log_probs[kept].gather(-1, labels[kept][:, None]).mean()
    torch.testing.assert_close(out.loss, expected)


def test_the_loss_is_unsmoothed_cross_entropy_and_num_items_in_batch_sums():
    model = build("sinusoidal")
    src, mask, tgt = batch()
    with torch.no_grad():
        out = model(input_ids=src, attention_mask=mask, labels=tgt)
        expected = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), tgt.flatten())
        torch.testing.assert_close(out.loss, expected)
        summed = model(input_ids=src, attention_mask=mask, labels=tgt, num_items_in_batch=torch.tensor(1))
        torch.testing.assert_close(summed.loss, expected * tgt.numel())


def test_a_checkpoint_that_stored_label_smoothing_loads_and_does_not_smooth(tmp_path):
    """Checkpoints saved while the config held the recipe's `label_smoothing` (0.1 by default) still load; the key
    is dropped, so the model's loss stays plain cross-entropy and a new save no longer writes it."""
    build("sinusoidal").save_pretrained(tmp_path / "old")
    config_file = tmp_path / "old" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "label_smoothing": 0.1}))
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "old").eval()
    src, mask, tgt = batch()
    with torch.no_grad():
        out = model(input_ids=src, attention_mask=mask, labels=tgt)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), tgt.flatten()))
    model.save_pretrained(tmp_path / "new")
    assert "label_smoothing" not in json.loads((tmp_path / "new" / "config.json").read_text())


@pytest.fixture(params=["one chunk", "chunks of 8 rows"])
def loss_chunks(request, monkeypatch):
    """The fused losses in one chunk (these sizes' default) and in chunks of 8 rows, the last one partial."""
    if request.param != "one chunk":
        monkeypatch.setattr(modeling_posformer, "rows_per_chunk", lambda rows, vocab_size: 8)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_fused_token_cross_entropy_equals_torch_in_value_and_gradient(label_smoothing, loss_chunks):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 11, dtype=torch.float64, generator=generator, requires_grad=True)
    labels = torch.randint(0, 11, (37,), generator=generator)
    labels[::5] = -100
    fused = TokenCrossEntropy.apply(logits, labels, label_smoothing)
    (fused_grad,) = torch.autograd.grad(fused * 1.7, logits)
    reference = torch.nn.functional.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing)
    (reference_grad,) = torch.autograd.grad(reference * 1.7, logits)
    torch.testing.assert_close(fused, reference)
    torch.testing.assert_close(fused_grad, reference_grad)
    assert fused_grad[::5].abs().max() == 0  # ignored tokens get no gradient
    assert torch.autograd.gradcheck(lambda x: TokenCrossEntropy.apply(x, labels, label_smoothing), (logits,))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_fused_linear_cross_entropy_equals_the_projection_then_torch_in_value_and_gradients(
    label_smoothing, loss_chunks
):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(11, 6, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, 11, (37,), generator=generator)
    labels[::5] = -100
    fused = LinearCrossEntropy.apply(hidden, weight, bias, labels, label_smoothing)
    fused_grads = torch.autograd.grad(fused * 1.7, (hidden, weight))
    reference = torch.nn.functional.cross_entropy(
        hidden @ weight.T + bias, labels, reduction="sum", label_smoothing=label_smoothing
    )
    reference_grads = torch.autograd.grad(reference * 1.7, (hidden, weight))
    torch.testing.assert_close(fused, reference)
    for fused_grad, reference_grad in zip(fused_grads, reference_grads, strict=True):
        torch.testing.assert_close(fused_grad, reference_grad)
    assert fused_grads[0][::5].abs().max() == 0  # ignored tokens get no gradient
    assert torch.autograd.gradcheck(
        lambda x, w: LinearCrossEntropy.apply(x, w, bias, labels, label_smoothing), (hidden, weight)
    )


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_word_embeddings": False, "scale_decoder_output": True}, {"final_logits_bias": True}],
    ids=["tied", "untied-scaled-output", "final-logits-bias"],
)
def test_the_loss_without_logits_is_the_loss_of_the_logits_with_the_same_gradients(overrides, loss_chunks):
    torch.manual_seed(0)
    model = build("rope", init_std=0.2, **overrides).train()
    model.config.dropout = 0.0  # the two forwards must see the same network
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    src, mask, tgt = batch()
    tgt[0, -2:] = -100
    results = []
    for return_logits in (True, False):
        model.zero_grad()
        out = model(input_ids=src, attention_mask=mask, labels=tgt, loss_smoothing=0.1, return_logits=return_logits)
        out.loss.backward()
        results.append((out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}))
    (with_logits, with_logits_grads), (fused, fused_grads) = results
    assert fused.logits is None and with_logits.logits is not None
    assert fused.loss.dtype == torch.float32
    torch.testing.assert_close(fused.loss, with_logits.loss)
    torch.testing.assert_close(
        with_logits.loss,
        torch.nn.functional.cross_entropy(with_logits.logits.flatten(0, 1), tgt.flatten(), label_smoothing=0.1),
    )
    assert fused_grads.keys() == with_logits_grads.keys()
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, with_logits_grads[name], msg=name)


def test_the_loss_without_logits_under_bf16_autocast_is_a_float32_loss_near_the_float32_one():
    torch.manual_seed(0)
    model = build("sinusoidal", init_std=0.2)
    src, mask, tgt = batch()
    with torch.no_grad():
        full = model(input_ids=src, attention_mask=mask, labels=tgt, loss_smoothing=0.1, return_logits=False).loss
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(input_ids=src, attention_mask=mask, labels=tgt, loss_smoothing=0.1, return_logits=False).loss
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=2e-2, atol=0)


def test_no_logits_without_labels_is_refused():
    src, mask, tgt = batch()
    with pytest.raises(ValueError, match="return_logits=False computes the loss over `labels`"):
        build("sinusoidal")(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, return_logits=False)


def test_lm_head_is_tied_to_shared_embeddings_and_untied_on_request(tmp_path):
    tied = build("sinusoidal")
    shared = tied.model.shared.weight
    assert tied.lm_head.weight is shared
    assert tied.model.encoder.embed_tokens.weight is shared and tied.model.decoder.embed_tokens.weight is shared
    untied = build("sinusoidal", tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.shared.weight
    assert untied.model.encoder.embed_tokens.weight is untied.model.shared.weight
    for model, name in ((tied, "tied"), (untied, "untied")):
        model.save_pretrained(tmp_path / name)
        again = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / name)
        assert (again.lm_head.weight is again.model.shared.weight) == (name == "tied")
        torch.testing.assert_close(again.lm_head.weight, model.lm_head.weight)
        torch.testing.assert_close(again.model.shared.weight, model.model.shared.weight)


def test_resize_token_embeddings_keeps_everything_tied_and_updates_the_config():
    model = build("rope")
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120
    for module in (model.model.encoder.embed_tokens, model.model.decoder.embed_tokens, model.lm_head):
        assert module.weight is model.model.shared.weight
    src, mask, tgt = batch()
    src[0, 0] = 119
    assert model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits.shape[-1] == 120


def test_resizing_keeps_the_logits_bias_and_both_vocabulary_sizes_and_refuses_separate_vocabularies(tmp_path):
    model = build("sinusoidal", **ARCHITECTURES["bart"])
    bias = model.final_logits_bias.clone()
    model.resize_token_embeddings(120)
    assert model.final_logits_bias.shape == (1, 120) and torch.equal(model.final_logits_bias[:, :99], bias)
    assert (model.config.vocab_size, model.config.decoder_vocab_size) == (120, 120)
    model.save_pretrained(tmp_path)  # the resized config is a valid one
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path).final_logits_bias.shape == (1, 120)
    with pytest.raises(NotImplementedError, match="separate source and target vocabularies"):
        build("sinusoidal", **ARCHITECTURES["separate_vocabularies"]).resize_token_embeddings(120)


def test_get_encoder_and_decoder():
    model = build("t5")
    assert model.get_encoder() is model.model.encoder
    assert model.get_decoder() is model.model.decoder


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(encoding, use_reentrant, architecture):
    """Also with torch's reentrant checkpoint, which sees only positional tensors (the stack's score bias among
    them, which `t5` learns: kept as a keyword it broke the backward pass)."""
    model = build(encoding, **ARCHITECTURES[architecture]).train()
    src, mask, tgt = batch()
    model(input_ids=src, attention_mask=mask, labels=tgt).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    enable_activation_checkpointing(model, use_reentrant=use_reentrant)
    assert all(layer.gradient_checkpointing for layer in model.model.encoder.layers)
    model(input_ids=src, attention_mask=mask, labels=tgt).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], msg=name)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_gradient_checkpointing_drops_a_cache_passed_in_training(encoding):
    """A checkpointed layer runs again in the backward pass, which would extend a cache twice; transformers'
    `GradientCheckpointingLayer` clears it from the layer's keywords under the installed release's name (`cache`
    from 5.24 on, `past_key_values` before), so the decoder must hand it on under that name. Training with a cache
    passed in then gives the gradients of training without one, and leaves the cache empty."""
    model = build(encoding, **ATTENTION_MATTERS).train()
    src, mask, tgt = batch()
    model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits.sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    enable_activation_checkpointing(model)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    inputs = dict(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, use_cache=True)
    model(**inputs, **{CACHE_NAME: cache}).logits.sum().backward()
    assert cache.get_seq_length() == 0
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name], msg=name)


@pytest.mark.parametrize("normalize_before", [False, True])
def test_pre_and_post_layer_norm(normalize_before):
    model = build("sinusoidal", normalize_before=normalize_before)
    assert (model.model.encoder.layer_norm is not None) == normalize_before
    src, mask, tgt = batch()
    out = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
    assert torch.isfinite(out.logits).all()
    if not normalize_before:  # post-LN: every layer's output is normalised
        hidden = out.encoder_last_hidden_state
        torch.testing.assert_close(hidden.mean(-1), torch.zeros(hidden.shape[:-1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("encoding", "backend"), sorted(UNSUPPORTED))
def test_impossible_backend_is_a_clear_error_at_load(encoding, backend, tmp_path):
    build(encoding).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"position_encoding='{encoding}'.*attn_implementation='sdpa'"):
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path, attn_implementation=backend)
    with pytest.raises(ValueError, match=f"position_encoding='{encoding}'"):
        build(encoding).set_attn_implementation(backend)


def test_shaw_under_sdpa_says_once_that_self_attention_runs_eagerly(caplog):
    from transformers.utils import logging

    logging.warning_once.cache_clear()  # another test may have logged it already
    logging.enable_propagation()
    try:
        model = build("shaw", "sdpa")
        src, mask, tgt = batch()
        with caplog.at_level("WARNING"):
            model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
            model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt)
    finally:
        logging.disable_propagation()
    assert sum("runs on the eager path" in r.getMessage() for r in caplog.records) == 1


def test_cross_attention_keys_and_values_are_projected_once_per_sequence():
    model = build("t5")
    calls = []
    for layer in model.model.decoder.layers:
        layer.encoder_attn.k_proj.register_forward_hook(lambda *_: calls.append("k"))
        layer.encoder_attn.v_proj.register_forward_hook(lambda *_: calls.append("v"))
    src, mask, _ = batch()
    model.generate(src, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, num_beams=2)
    assert len(calls) == 2 * len(model.model.decoder.layers)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_torch_export_computes_what_eager_does(encoding):
    model = build(encoding)
    src, mask, tgt = batch()
    inputs = dict(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, use_cache=False)
    exported = torch.export.export(model, args=(), kwargs=inputs)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-4)


def test_an_exported_learned_model_refuses_positions_past_its_table():
    """Under torch.export the table check is an assertion in the graph (no branch on tensor values)."""
    model = build("learned")
    src, _, tgt = batch()
    source_length = torch.export.Dim("source_length", min=2, max=200)
    inputs = dict(input_ids=src, decoder_input_ids=tgt, use_cache=False)
    shapes = {"input_ids": {1: source_length}, "decoder_input_ids": None, "use_cache": None}
    exported = torch.export.export(model, args=(), kwargs=inputs, dynamic_shapes=shapes).module()
    exported(**inputs)
    with pytest.raises(RuntimeError, match="position past the learned table"):
        exported(input_ids=torch.randint(4, 99, (3, 70)), decoder_input_ids=tgt, use_cache=False)


@pytest.mark.slow
@pytest.mark.parametrize("encoding", [name for name in ENCODINGS if (name, "flex_attention") not in UNSUPPORTED])
def test_flex_attention_equals_eager(encoding):
    """flex_attention compiles on first use (tens of seconds on CPU), hence slow."""
    eager = build(encoding, "eager")
    flex = build(encoding, "flex_attention")
    flex.load_state_dict(eager.state_dict())
    src, mask, tgt = batch()
    with torch.no_grad():
        expected = eager(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
        actual = flex(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
