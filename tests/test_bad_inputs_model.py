"""Bad inputs to the config and the model (issue 14): each is a `ValueError`/`TypeError` whose message names the field
or argument and the fix, or, for a key no class knows, a warning naming it and the closest field. One table per
kind: config values, unknown config keys, model inputs, generation arguments."""

import logging
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM

from conftest import TINY, tiny_config
from posformer.configuration import PosformerConfig
from posformer.configuration.transformers_compat import CACHE_NAME
from posformer.modeling import PosformerForConditionalGeneration
from posformer.modeling.position_encodings import t5_relative_position_bucket

VOCAB = TINY["vocab_size"]

# --------------------------------------------------------------------------------------------------
# Config values
# --------------------------------------------------------------------------------------------------

BAD_CONFIG_VALUES = {
    # every float field must be finite, whatever the encoding
    "rope_theta nan": ({"position_encoding": "rope", "rope_theta": math.nan}, "rope_theta must be a finite number"),
    "rope_theta inf": ({"position_encoding": "rope", "rope_theta": math.inf}, "rope_theta must be a finite number"),
    "hadamard_gain nan, unused": ({"hadamard_gain": math.nan}, "hadamard_gain must be a finite number"),
    "init_std inf": ({"init_std": math.inf}, "init_std must be a finite number"),
    "dropout nan": ({"dropout": math.nan}, "dropout must be a finite number"),
    "attention_dropout -inf": ({"attention_dropout": -math.inf}, "attention_dropout must be a finite number"),
    "activation_dropout nan": ({"activation_dropout": math.nan}, "activation_dropout must be a finite number"),
    # token ids are rows of the embedding table
    "pad_token_id -1": ({"pad_token_id": -1}, "pad_token_id=-1 is outside the vocabulary"),
    "pad_token_id = vocab_size": ({"pad_token_id": VOCAB}, f"pad_token_id={VOCAB} is outside the vocabulary"),
    "bos_token_id too large": ({"bos_token_id": 500}, "bos_token_id=500 is outside the vocabulary"),
    "eos_token_id list": ({"eos_token_id": [2, VOCAB]}, rf"eos_token_id=\[2, {VOCAB}\] is outside the vocabulary"),
    "decoder_start_token_id -3": ({"decoder_start_token_id": -3}, "decoder_start_token_id=-3 is outside"),
    # each encoding's own fields
    "t5_num_buckets 3": ({"position_encoding": "t5", "t5_num_buckets": 3}, "t5_num_buckets must be at least 4"),
    "t5_max_distance = buckets/2": (
        {"position_encoding": "t5", "t5_num_buckets": 32, "t5_max_distance": 16},
        "t5_max_distance must be greater than t5_num_buckets // 2 = 16, got 16",
    ),
    "shaw_max_distance -1": ({"position_encoding": "shaw", "shaw_max_distance": -1}, "shaw_max_distance must be a"),
    "rope_theta negative": ({"position_encoding": "rope", "rope_theta": -1.0}, "rope_theta must be positive"),
    "hadamard_gain -0.5": ({"position_encoding": "hadamard", "hadamard_gain": -0.5}, r"hadamard_gain must be in \[0"),
    # aliases are checked as the fields they set
    "hidden_size not divisible": ({"hidden_size": 30}, "d_model=30 is not divisible by encoder_attention_heads"),
}
FIXES = {  # what each kind of config message tells the user to do
    "finite": "the default is",
    "outside the vocabulary": "Set {field} to an id of the tokenizer, or None, or raise vocab_size",
}


@pytest.mark.parametrize(("overrides", "message"), BAD_CONFIG_VALUES.values(), ids=BAD_CONFIG_VALUES)
def test_bad_config_value_raises_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        PosformerConfig(**{**TINY, **overrides})
    field = message.split(" ")[0].split("=")[0]
    for kind, fix in FIXES.items():
        if kind in message:
            assert fix.format(field=field) in str(error.value)


def buckets_are_valid(num_buckets: int, max_distance: int) -> bool:
    """Whether T5's bucket formula gives every distance (up to far past max_distance) a bucket in [0, num_buckets), in
    the bidirectional encoder and the causal decoder alike."""
    # a max_distance too small gives negative buckets only from about (buckets/2)^2 / max_distance on
    farthest = num_buckets**2 + 8 * max_distance
    distances = torch.arange(-farthest, farthest + 1)[None]
    for bidirectional in (True, False):
        buckets = t5_relative_position_bucket(distances, bidirectional, num_buckets, max_distance)
        if not ((buckets >= 0) & (buckets < num_buckets)).all():
            return False
    return True


@pytest.mark.parametrize("num_buckets", [4, 5, 8, 9, 32])
def test_t5_config_is_accepted_exactly_when_the_buckets_are_defined(num_buckets):
    """The boundary `t5_max_distance > t5_num_buckets // 2` is the bucket formula's own: at equality the decoder's
    bucket of distance `num_buckets // 2` is log(1)/log(1) (NaN), below it the buckets run negative."""
    for max_distance in range(1, num_buckets + 3):
        valid = buckets_are_valid(num_buckets, max_distance)
        assert valid == (max_distance > num_buckets // 2), (num_buckets, max_distance)
        overrides = {"t5_num_buckets": num_buckets, "t5_max_distance": max_distance}
        if valid:
            tiny_config("t5", **overrides)
        else:
            with pytest.raises(ValueError, match=r"Raise t5_max_distance above \d+ or lower t5_num_buckets"):
                tiny_config("t5", **overrides)


# --------------------------------------------------------------------------------------------------
# Unknown config keys
# --------------------------------------------------------------------------------------------------


def config_warnings(caplog) -> list[str]:
    """The warnings that PosformerConfig logged: the installed module's logger or a remote-code copy's."""
    return [
        r.getMessage() for r in caplog.records if "configuration_posformer" in r.name and r.levelno >= logging.WARNING
    ]


UNKNOWN_KEYS = {
    "typo of a field": ({"d_modle": 64}, "'d_modle'", "Did you mean 'd_model'?"),
    "typo of an encoding field": ({"rope_thet": 5.0}, "'rope_thet'", "Did you mean 'rope_theta'?"),
    "typo of an alias": ({"hidden_sise": 64}, "'hidden_sise'", "Did you mean 'hidden_size'?"),
    "nothing close": ({"zzzqqq": 1}, "'zzzqqq'", "Check its spelling against the fields of PosformerConfig"),
}


@pytest.mark.parametrize(("extra", "key", "suggestion"), UNKNOWN_KEYS.values(), ids=UNKNOWN_KEYS)
def test_unknown_key_is_kept_with_a_warning_naming_it_and_the_closest_field(caplog, extra, key, suggestion):
    with caplog.at_level(logging.WARNING):
        config = tiny_config(**extra)
    (message,) = config_warnings(caplog)
    assert f"unknown key {key}" in message and suggestion in message
    assert getattr(config, next(iter(extra))) == next(iter(extra.values()))  # kept, as transformers keeps it


KEYS_TRANSFORMERS_KNOWS = {
    "alias": {"hidden_size": 32, "num_attention_heads": 4},
    "torch_dtype of older configs": {"torch_dtype": "float32"},
    "num_labels": {"num_labels": 3},
    "generation parameters of older configs": {"max_length": 20, "num_beams": 4, "no_repeat_ngram_size": 3},
    "attn_implementation": {"attn_implementation": "eager"},
    "name_or_path": {"name_or_path": "somewhere"},
    "_commit_hash": {"_commit_hash": "abc"},
    "output_attentions": {"output_attentions": False},
    "label_smoothing of older posformer configs": {"label_smoothing": 0.1},
    "remote code entries": {"auto_map": {"AutoConfig": "configuration_posformer.PosformerConfig"}},
}


@pytest.mark.parametrize("extra", KEYS_TRANSFORMERS_KNOWS.values(), ids=KEYS_TRANSFORMERS_KNOWS)
def test_keys_that_transformers_knows_log_nothing(caplog, extra):
    with caplog.at_level(logging.WARNING):
        tiny_config(**extra)
    assert config_warnings(caplog) == []


def test_a_saved_checkpoint_reloads_without_a_warning(caplog, tmp_path):
    """Every way back from what save_pretrained writes: the config alone, its full `to_dict`, the model, and the
    model as remote code."""
    model = PosformerForConditionalGeneration(tiny_config("t5"))
    with caplog.at_level(logging.WARNING):
        model.save_pretrained(tmp_path)
        config = AutoConfig.from_pretrained(tmp_path)
        PosformerConfig.from_dict(config.to_dict())
        config.save_pretrained(tmp_path / "config_only")
        AutoConfig.from_pretrained(tmp_path / "config_only")
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
        AutoModelForSeq2SeqLM.from_pretrained(tmp_path, trust_remote_code=True)
    assert config_warnings(caplog) == []


# --------------------------------------------------------------------------------------------------
# Model inputs
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> PosformerForConditionalGeneration:
    torch.manual_seed(0)
    return PosformerForConditionalGeneration(tiny_config()).eval()


SRC = torch.randint(4, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
TGT = torch.randint(4, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
MASK = torch.ones(2, 7, dtype=torch.long)

# name -> (forward kwargs, error, what the message must say: the argument, the shapes/values, the fix)
BAD_MODEL_INPUTS = {
    "labels shorter than decoder_input_ids": (
        dict(input_ids=SRC, decoder_input_ids=TGT, labels=TGT[:, :3]),
        ValueError,
        ["labels of shape (2, 3) do not match the decoder inputs of shape (2, 5)", "or pass only labels"],
    ),
    "labels with fewer rows": (
        dict(input_ids=SRC, decoder_input_ids=TGT, labels=TGT[:1]),
        ValueError,
        ["labels of shape (1, 5) do not match", "Pad labels and decoder_input_ids"],
    ),
    "labels outside the vocabulary": (
        dict(input_ids=SRC, labels=TGT + VOCAB),
        ValueError,
        ["labels holds", f"outside [0, {VOCAB})", "or -100, which the loss ignores"],
    ),
    "labels -1 as padding": (
        dict(input_ids=SRC, labels=TGT.masked_fill(TGT > 50, -1)),
        ValueError,
        ["labels holds -1", "or -100, which the loss ignores"],
    ),
    "float labels": (dict(input_ids=SRC, labels=TGT.float()), TypeError, ["labels must hold integer", "labels.long()"]),
    "attention_mask with more rows": (
        dict(input_ids=SRC, attention_mask=torch.ones(3, 7, dtype=torch.long), decoder_input_ids=TGT),
        ValueError,
        ["attention_mask of shape (3, 7)", "shape (2, 7)", "Pass the attention_mask that the tokenizer returned"],
    ),
    "attention_mask too long": (
        dict(input_ids=SRC, attention_mask=torch.ones(2, 9, dtype=torch.long), decoder_input_ids=TGT),
        ValueError,
        ["attention_mask of shape (2, 9)", "shape (2, 7)"],
    ),
    "attention_mask 3D": (
        dict(input_ids=SRC, attention_mask=torch.ones(2, 1, 7), decoder_input_ids=TGT),
        ValueError,
        ["attention_mask must be a (batch, length) padding mask or a 4D", "(2, 1, 7)"],
    ),
    "4D attention_mask that fits no cross-attention": (
        dict(input_ids=SRC, attention_mask=torch.ones(2, 1, 7, 7, dtype=torch.bool), decoder_input_ids=TGT),
        ValueError,
        ["attention_mask (the source's, which the decoder's cross-attention also reads)", "(2, 7) padding mask"],
    ),
    "decoder_attention_mask too short": (
        dict(input_ids=SRC, decoder_input_ids=TGT, decoder_attention_mask=torch.ones(2, 3, dtype=torch.long)),
        ValueError,
        ["decoder_attention_mask of shape (2, 3)", "shape (2, 5)"],
    ),
    "decoder_attention_mask with more rows": (
        dict(input_ids=SRC, decoder_input_ids=TGT, decoder_attention_mask=torch.ones(4, 5, dtype=torch.long)),
        ValueError,
        ["decoder_attention_mask of shape (4, 5)", "shape (2, 5)"],
    ),
    "4D decoder_attention_mask of the wrong length": (
        dict(input_ids=SRC, decoder_input_ids=TGT, decoder_attention_mask=torch.ones(2, 1, 5, 6, dtype=torch.bool)),
        ValueError,
        ["decoder_attention_mask of shape (2, 1, 5, 6)", "(2 or 1, heads or 1, 5, 5)"],
    ),
    "input_ids outside the vocabulary": (
        dict(input_ids=SRC + VOCAB, decoder_input_ids=TGT),
        ValueError,
        ["input_ids holds", f"outside [0, {VOCAB})", "Encode the text with the tokenizer this model was trained with"],
    ),
    "negative input_ids": (dict(input_ids=-SRC, decoder_input_ids=TGT), ValueError, ["input_ids holds -", "[0, 99)"]),
    "decoder_input_ids outside the vocabulary": (
        dict(input_ids=SRC, decoder_input_ids=TGT + VOCAB),
        ValueError,
        ["decoder_input_ids holds", f"vocab_size={VOCAB}"],
    ),
    "empty source": (
        dict(input_ids=SRC[:, :0], decoder_input_ids=TGT),
        ValueError,
        ["input_ids of shape (2, 0) is empty", "an empty text still encodes to its end-of-sequence token"],
    ),
    "empty target": (dict(input_ids=SRC, decoder_input_ids=TGT[:, :0]), ValueError, ["decoder_input_ids of shape"]),
    "a batch of zero rows": (
        dict(input_ids=SRC[:0], decoder_input_ids=TGT[:0]),
        ValueError,
        ["input_ids of shape (0, 7) is empty", "at least one row"],
    ),
    "float input_ids": (
        dict(input_ids=SRC.float(), decoder_input_ids=TGT),
        TypeError,
        ["input_ids must hold integer token ids", "input_ids.long()"],
    ),
    "input_ids without a batch dimension": (
        dict(input_ids=SRC[0], decoder_input_ids=TGT),
        ValueError,
        ["input_ids must be (batch, length), got shape (7,)", "input_ids[None]"],
    ),
    "inputs_embeds of another width": (
        dict(inputs_embeds=torch.randn(2, 7, 16), decoder_input_ids=TGT),
        ValueError,
        ["inputs_embeds has 16 features per position, but d_model=32", "model.get_input_embeddings()(input_ids)"],
    ),
    "integer inputs_embeds": (
        dict(inputs_embeds=torch.ones(2, 7, 32, dtype=torch.long), decoder_input_ids=TGT),
        TypeError,
        ["inputs_embeds must be floating point"],
    ),
    "both input_ids and inputs_embeds": (
        dict(input_ids=SRC, inputs_embeds=torch.randn(2, 7, 32), decoder_input_ids=TGT),
        ValueError,
        ["Pass exactly one of input_ids and inputs_embeds"],
    ),
    "more source rows than target rows": (
        dict(input_ids=SRC, decoder_input_ids=TGT[:1]),
        ValueError,
        ["encoder states", "have shape (2, 7, 32)", "pass sources and targets of the same sentence pairs"],
    ),
    "one source row for two targets": (
        dict(input_ids=SRC[:1], decoder_input_ids=TGT),
        ValueError,
        ["have shape (1, 7, 32), but the decoder needs (2, source length, d_model=32)"],
    ),
    "position_ids of the wrong length": (
        dict(input_ids=SRC, position_ids=torch.arange(9)[None], decoder_input_ids=TGT),
        ValueError,
        ["position_ids of shape (1, 9)", "shape (2, 7), or (1, 7)", "Leave it out"],
    ),
    "decoder_position_ids with more rows": (
        dict(input_ids=SRC, decoder_input_ids=TGT, decoder_position_ids=torch.arange(5)[None].repeat(3, 1)),
        ValueError,
        ["decoder_position_ids of shape (3, 5)"],
    ),
}


@pytest.mark.parametrize(("inputs", "error", "fragments"), BAD_MODEL_INPUTS.values(), ids=BAD_MODEL_INPUTS)
def test_bad_model_input_raises_naming_the_argument_and_the_fix(model, inputs, error, fragments):
    with pytest.raises(error) as raised:
        model(**inputs)
    for fragment in fragments:
        assert fragment in str(raised.value)


@pytest.mark.parametrize(
    ("stack", "inputs", "fragment"),
    [
        ("encoder", dict(input_ids=SRC + VOCAB), "input_ids holds"),
        ("encoder", dict(input_ids=SRC, attention_mask=MASK[:, :3]), "attention_mask of shape (2, 3)"),
        ("decoder", dict(input_ids=TGT + VOCAB), "decoder_input_ids holds"),
        ("decoder", dict(input_ids=TGT[:, :0]), "decoder_input_ids of shape (2, 0) is empty"),
    ],
    ids=["encoder ids", "encoder mask", "decoder ids", "decoder empty"],
)
def test_the_stacks_called_directly_check_their_inputs(model, stack, inputs, fragment):
    with pytest.raises(ValueError) as raised:
        getattr(model.model, stack)(**inputs)
    assert fragment in str(raised.value)


@torch.no_grad()
def test_inputs_that_worked_still_work(model):
    """Custom 4D masks, int32 ids, the encoder's 4D mask when it is called alone, and a 2D decoder mask over the cached
    and new tokens, as generation passes it."""
    padded = torch.ones(2, 7, dtype=torch.long)
    padded[1, -2:] = 0
    expected = model(input_ids=SRC, attention_mask=padded, decoder_input_ids=TGT).logits
    torch.testing.assert_close(
        model(input_ids=SRC.int(), attention_mask=padded, decoder_input_ids=TGT.int()).logits, expected
    )
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None].expand(2, 1, 5, 5)
    with_4d = model(input_ids=SRC, attention_mask=padded, decoder_input_ids=TGT, decoder_attention_mask=causal)
    torch.testing.assert_close(with_4d.logits, expected)
    keep = padded.bool()[:, None, None, :].expand(2, 1, 7, 7)
    encoder = model.get_encoder()
    torch.testing.assert_close(
        encoder(input_ids=SRC, attention_mask=keep).last_hidden_state,
        encoder(input_ids=SRC, attention_mask=padded).last_hidden_state,
    )
    first = model(input_ids=SRC, attention_mask=padded, decoder_input_ids=TGT[:, :3], use_cache=True)
    step = model(
        input_ids=SRC,
        attention_mask=padded,
        decoder_input_ids=TGT[:, 3:],
        decoder_attention_mask=torch.ones(2, 5, dtype=torch.long),
        cache=getattr(first, CACHE_NAME),
    )
    torch.testing.assert_close(step.logits, expected[:, 3:], atol=1e-5, rtol=1e-4)


def test_labels_all_ignored_give_a_zero_loss_and_zero_gradients(model):
    """A defined loss, not NaN (see `seq2seq_loss`): the sum over no target tokens, which is also what such a batch
    adds to an accumulated batch."""
    model.zero_grad()
    loss = model(input_ids=SRC, labels=torch.full_like(TGT, -100)).loss
    loss.backward()
    assert loss.item() == 0.0
    assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())
    model.zero_grad()
    with_tokens = model(input_ids=SRC, labels=TGT.masked_fill(TGT > 50, -100)).loss
    assert with_tokens.isfinite() and with_tokens > 0


def test_labels_need_pad_and_start_ids_to_build_the_decoder_inputs():
    model = PosformerForConditionalGeneration(tiny_config(pad_token_id=None))
    with pytest.raises(
        ValueError, match=r"config.pad_token_id is None.*Set config.pad_token_id, or pass decoder_input_ids"
    ):
        model(input_ids=SRC, labels=TGT)
    model(input_ids=SRC, decoder_input_ids=TGT, labels=TGT)  # given decoder inputs need neither


# --------------------------------------------------------------------------------------------------
# Generation arguments
# --------------------------------------------------------------------------------------------------

# name -> (generate kwargs, error, what the message must say); only what transformers 5.20-5.24 let through
BAD_GENERATION_ARGUMENTS = {
    "num_beams 0": (dict(num_beams=0), ValueError, ["num_beams must be an integer of at least 1", "beam search"]),
    "num_beams -1": (dict(num_beams=-1), ValueError, ["num_beams must be an integer of at least 1", "got -1"]),
    "num_beams a string": (dict(num_beams="2"), TypeError, ["num_beams must be an integer", "got '2'"]),
    "num_return_sequences 0": (dict(num_return_sequences=0), ValueError, ["num_return_sequences must be", "got 0"]),
    "max_new_tokens a float": (dict(max_new_tokens=3.5), TypeError, ["max_new_tokens must be an integer", "3.5"]),
    "min_new_tokens -1": (dict(min_new_tokens=-1), ValueError, ["min_new_tokens must be an integer of at least 0"]),
    "no_repeat_ngram_size -1": (dict(no_repeat_ngram_size=-1), ValueError, ["no_repeat_ngram_size", "at least 0"]),
    "top_p above 1": (dict(do_sample=True, top_p=1.5), ValueError, ["top_p must be in [0, 1], got 1.5"]),
    "top_p nan": (dict(do_sample=True, top_p=math.nan), ValueError, ["top_p must be in [0, 1], got nan"]),
    "length_penalty nan": (dict(num_beams=2, length_penalty=math.nan), ValueError, ["length_penalty must be a finite"]),
    "eos_token_id outside": (dict(eos_token_id=500), ValueError, ["eos_token_id=500 is outside the vocabulary"]),
    "eos_token_id list": (dict(eos_token_id=[2, -5]), ValueError, ["eos_token_id=[2, -5] is outside"]),
    "pad_token_id outside": (dict(pad_token_id=VOCAB), ValueError, [f"pad_token_id={VOCAB} is outside"]),
    "decoder_start_token_id -1": (dict(decoder_start_token_id=-1), ValueError, ["decoder_start_token_id=-1"]),
}


@pytest.mark.parametrize(
    ("arguments", "error", "fragments"), BAD_GENERATION_ARGUMENTS.values(), ids=BAD_GENERATION_ARGUMENTS
)
def test_bad_generation_argument_raises_naming_it(model, arguments, error, fragments):
    with pytest.raises(error) as raised:
        model.generate(SRC, **{"max_new_tokens": 4, **arguments})
    message = str(raised.value)
    assert message.startswith("generate: ")
    for fragment in fragments:
        assert fragment in message
    if "outside the vocabulary" in message:
        assert "Pass an id of the tokenizer" in message


def test_generation_arguments_are_also_checked_in_the_generation_config(model):
    model.generation_config.num_beams = 0
    try:
        with pytest.raises(ValueError, match="num_beams must be an integer of at least 1"):
            model.generate(SRC, max_new_tokens=4)
        model.generate(SRC, max_new_tokens=4, num_beams=2)  # the argument wins over the generation config
    finally:
        model.generation_config.num_beams = 1
