"""posformer with `position_encoding="sinusoidal"` and Marian's options is transformers' `MarianMTModel`.

Oracle: a randomly initialised `MarianMTModel` of an unusual size (width 40, 5 heads of 8, 3+2 layers,
FFN 52/44, vocabulary 101, GELU) whose weights are copied into `PosformerForConditionalGeneration`
by an explicit name map. Marian in eager mode is the reference; posformer is checked under eager and
sdpa: encoder output, logits on a right-padded batch, greedy and beam-search generation.
"""

import copy

import pytest
import torch
from transformers import GenerationConfig, MarianConfig, MarianMTModel

from conftest import tiny_config
from posformer.configuration.transformers_compat import CACHE_NAME
from posformer.modeling import PosformerForConditionalGeneration

SIZES = dict(
    vocab_size=101,
    d_model=40,
    encoder_layers=3,
    decoder_layers=2,
    encoder_attention_heads=5,
    decoder_attention_heads=5,
    encoder_ffn_dim=52,
    decoder_ffn_dim=44,
    max_position_embeddings=64,
    activation_function="gelu",
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    scale_embedding=True,  # as in every released opus-mt model (MarianConfig's default is False)
    tie_word_embeddings=True,
)
# Marian's conventions: the last vocabulary row is the pad token, which also starts the decoder.
SPECIAL_TOKENS = dict(pad_token_id=100, decoder_start_token_id=100, eos_token_id=0, bos_token_id=None)
# Marian's sinusoid tables: posformer computes the same values from the positions in each forward.
SINUSOID_TABLES = ("model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")


def posformer_name(marian_name: str) -> str | None:
    """Name of the posformer parameter that takes Marian's `marian_name`; None for the sinusoid tables."""
    if marian_name in SINUSOID_TABLES:
        return None
    return marian_name  # posformer keeps BART/Marian's names: shared, self_attn, encoder_attn, fc1/fc2, ...


def randomize_(model: torch.nn.Module) -> None:
    """Weights far from their init (LayerNorms not 1/0, biases not 0), so that a mis-mapped or unused
    parameter changes the outputs; the frozen sinusoid tables keep their values."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name in SINUSOID_TABLES:
                continue
            if "layer_norm.weight" in name:
                parameter.copy_(1 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.copy_(0.2 * torch.randn_like(parameter))


@pytest.fixture(scope="module")
def marian() -> MarianMTModel:
    torch.manual_seed(1234)
    config = MarianConfig(**SIZES, **SPECIAL_TOKENS, forced_eos_token_id=None)
    model = MarianMTModel._from_config(config, attn_implementation="eager").eval()
    randomize_(model)
    return model


def load_marian_weights(posformer: PosformerForConditionalGeneration, marian: MarianMTModel) -> None:
    """Copy every Marian parameter through `posformer_name`; fail on any gap in either direction."""
    targets = dict(posformer.named_parameters())
    used, assigned = set(), set()
    with torch.no_grad():
        for name, parameter in marian.named_parameters():
            target = posformer_name(name)
            if target is None:
                continue
            assert target in targets, f"Marian's {name} has no posformer counterpart {target}"
            assert targets[target].shape == parameter.shape, name
            targets[target].copy_(parameter)
            used.add(name)
            assigned.add(target)
    assert assigned == set(targets), f"posformer parameters left unset: {sorted(set(targets) - assigned)}"
    marian_names = {name for name, _ in marian.named_parameters()}
    assert used == marian_names - set(SINUSOID_TABLES), f"unused: {sorted(marian_names - used)}"
    # Marian's only buffer is a logits bias that posformer does not have: it must be zero to drop it.
    assert [name for name, _ in marian.named_buffers()] == ["final_logits_bias"]
    assert torch.equal(marian.final_logits_bias, torch.zeros_like(marian.final_logits_bias))


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def posformer(request, marian) -> PosformerForConditionalGeneration:
    config = tiny_config("sinusoidal", **SIZES, **SPECIAL_TOKENS, normalize_before=False)
    model = PosformerForConditionalGeneration._from_config(config, attn_implementation=request.param).eval()
    assert model.config._attn_implementation == request.param
    load_marian_weights(model, marian)
    # tied embeddings, as in Marian: one matrix for source, target and output
    assert model.lm_head.weight is model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is model.model.shared.weight
    for name in ("pad_token_id", "decoder_start_token_id", "eos_token_id", "bos_token_id"):
        assert getattr(model.config, name) == getattr(marian.config, name), name
    return model


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    """Two right-padded sources (7 and 4 tokens, no pad inside) and decoder inputs behind the start token."""
    generator = torch.Generator().manual_seed(7)
    input_ids = torch.randint(1, 100, (2, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, 4:] = SPECIAL_TOKENS["pad_token_id"]
    attention_mask[1, 4:] = 0
    decoder_input_ids = torch.randint(1, 100, (2, 5), generator=generator)
    decoder_input_ids[:, 0] = SPECIAL_TOKENS["decoder_start_token_id"]
    return dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)


@torch.no_grad()
def test_encoder_output_matches_marian(marian, posformer, batch):
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    expected = marian.get_encoder()(**inputs).last_hidden_state
    actual = posformer.get_encoder()(**inputs).last_hidden_state
    assert expected.abs().max() > 0.1  # a real signal, not a collapsed output
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


@torch.no_grad()
def test_logits_match_marian_on_a_right_padded_batch(marian, posformer, batch):
    expected = marian(**batch, use_cache=False).logits
    actual = posformer(**batch, use_cache=False).logits
    assert actual.shape == (2, 5, 101)
    assert expected.std() > 1.0  # logits spread enough that a small mistake would show
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


@torch.no_grad()
def test_cached_decoding_matches_marian_step_by_step(marian, posformer, batch):
    """Feeding the decoder inputs one token at a time through the cache gives Marian's logits too."""
    encoder_inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    caches = {}
    for step in range(batch["decoder_input_ids"].shape[1]):
        token = batch["decoder_input_ids"][:, step : step + 1]
        logits = {}
        for name, model in (("marian", marian), ("posformer", posformer)):
            # under the installed transformers' name for the cache, as its `generate` passes it
            out = model(**encoder_inputs, decoder_input_ids=token, use_cache=True, **{CACHE_NAME: caches.get(name)})
            caches[name] = getattr(out, CACHE_NAME)
            logits[name] = out.logits
        torch.testing.assert_close(logits["posformer"], logits["marian"], atol=1e-4, rtol=0)


def generation_config(**overrides) -> GenerationConfig:
    """One explicit configuration for both models: no forced EOS, no banned words, no length tricks."""
    settings = dict(
        max_new_tokens=10,
        do_sample=False,
        num_beams=1,
        num_return_sequences=1,
        decoder_start_token_id=SPECIAL_TOKENS["decoder_start_token_id"],
        pad_token_id=SPECIAL_TOKENS["pad_token_id"],
        eos_token_id=SPECIAL_TOKENS["eos_token_id"],
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        bad_words_ids=None,
        min_length=0,
        no_repeat_ngram_size=0,
        repetition_penalty=1.0,
        length_penalty=1.0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    return GenerationConfig(**{**settings, **overrides})


@pytest.mark.parametrize("overrides", [dict(), dict(num_beams=4, num_return_sequences=4)], ids=["greedy", "beam4"])
@torch.no_grad()
def test_generation_matches_marian(marian, posformer, batch, overrides):
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    settings = generation_config(**overrides)
    expected = marian.generate(**inputs, generation_config=copy.deepcopy(settings))
    actual = posformer.generate(**inputs, generation_config=copy.deepcopy(settings))
    assert expected.sequences.shape[0] == 2 * settings.num_return_sequences
    assert expected.sequences.shape[1] > 5  # generation ran for several steps, not straight to EOS
    torch.testing.assert_close(actual.sequences, expected.sequences, atol=0, rtol=0)
    if settings.num_beams > 1:
        torch.testing.assert_close(actual.sequences_scores, expected.sequences_scores, atol=1e-4, rtol=0)
    for actual_scores, expected_scores in zip(actual.scores, expected.scores, strict=True):
        finite = expected_scores.isfinite()
        assert torch.equal(actual_scores.isfinite(), finite)
        torch.testing.assert_close(actual_scores[finite], expected_scores[finite], atol=1e-4, rtol=0)
