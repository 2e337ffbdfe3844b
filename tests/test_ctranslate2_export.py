"""The CTranslate2 export: CTranslate2's translations equal posformer's `generate`, token for token, for every
exportable encoding (random models whose positions matter, and briefly trained ones); what cannot be exported is
refused by name; the folder is complete, atomic and loads with CTranslate2 and transformers."""

import re
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

from conftest import FAST_RUN, TINY_RUN, siblings, tiny_config, toy_data_arguments, toy_pairs
from posformer.modeling import PosformerForConditionalGeneration
from posformer.training.ctranslate2_export import (
    EXPORTABLE,
    CTranslate2NotInstalledError,
    export_ctranslate2,
    exportable_encodings,
)
from posformer.training.export_cli import cli, export_run
from posformer.training.train import main

ctranslate2 = pytest.importorskip("ctranslate2")

EXPORTABLE_NAMES = "none, sinusoidal, learned, shaw, t5, rope"
CT2_FILES = {"model.bin", "config.json", "shared_vocabulary.json"}
HF_FILES = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}
MAX_NEW_TOKENS = 24


def word_tokenizer(size: int = 99) -> PreTrainedTokenizerFast:
    """`<pad> <s> </s> <unk> w4 ... w{size-1}`, one token per word."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"w{i}": i for i in range(4, size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def random_sources(count: int = 12, vocab_size: int = 99) -> list[list[int]]:
    """Source ids of 3-19 random words, each ended by `</s>` as posformer's tokenizers end them."""
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 20, (count,), generator=generator)
    return [torch.randint(4, vocab_size, (int(n),), generator=generator).tolist() + [2] for n in lengths]


def posformer_translation(model, source: list[int], num_beams: int) -> tuple[list[int], float]:
    """posformer's `generate` without the start token, padding and end token; and its score: the log-probability
    divided by `length ** length_penalty` (the end token counted), which beam search returns and CTranslate2 also
    gives a greedy search."""
    out = model.generate(
        torch.tensor([source]),
        num_beams=num_beams,
        length_penalty=0.6,
        early_stopping=True,
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        output_scores=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, 1:].tolist()  # padded after the end token when a batch's beams end apart
    tokens = tokens[: tokens.index(2) + 1] if 2 in tokens else tokens
    if num_beams > 1:
        score = out.sequences_scores[0].item()
    else:
        steps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
        score = steps[steps.isfinite()].sum().item() / steps.isfinite().sum().item() ** 0.6
    return tokens[:-1] if tokens and tokens[-1] == 2 else tokens, score


def ct2_translation(translator, tokenizer, source: list[int], num_beams: int) -> tuple[list[int], float]:
    """CTranslate2's translation of the same source, with transformers' settings: the same beams, length penalty and
    budget of new tokens, the end token allowed at the first step (CTranslate2's default `min_decoding_length` is 1)."""
    (result,) = translator.translate_batch(
        [tokenizer.convert_ids_to_tokens(source)],
        beam_size=num_beams,
        length_penalty=0.6,
        max_decoding_length=MAX_NEW_TOKENS,
        min_decoding_length=0,
        return_scores=True,
    )
    return tokenizer.convert_tokens_to_ids(result.hypotheses[0]), result.scores[0]


# Two greedy choices this close in log-probability are decided by the order of float operations, which differs
# between the engines (seen once: a random t5 model's two best tokens 5.7e-6 apart, at the 24th step).
FLOAT_ORDERING_TIE = 1e-4


def greedy_tie_at_first_difference(model, source: list[int], expected: list[int], tokens: list[int]) -> bool:
    """Whether greedy decoding's first differing token was a near-tie for posformer: the log-probabilities of both
    engines' choices at that step within `FLOAT_ORDERING_TIE`."""
    ours, theirs = [*expected, 2], [*tokens, 2]  # each ended by `</s>`
    step = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
    prefix = torch.tensor([[model.config.decoder_start_token_id, *expected[:step]]])
    with torch.no_grad():
        scores = model(input_ids=torch.tensor([source]), decoder_input_ids=prefix).logits[0, -1].log_softmax(-1)
    return abs(scores[ours[step]] - scores[theirs[step]]).item() < FLOAT_ORDERING_TIE


def assert_same_translations(model, folder: Path, sources: list[list[int]], num_beams: int) -> None:
    """CTranslate2 translates every source as `generate` does, token for token and score within float tolerance;
    greedy decoding may part at a near-tie (`greedy_tie_at_first_difference`), for at most one source in ten."""
    translator, tokenizer = ctranslate2.Translator(str(folder)), AutoTokenizer.from_pretrained(folder)
    ties = 0
    for source in sources:
        expected, expected_score = posformer_translation(model, source, num_beams)
        tokens, score = ct2_translation(translator, tokenizer, source, num_beams)
        if tokens != expected and num_beams == 1 and greedy_tie_at_first_difference(model, source, expected, tokens):
            ties += 1
            continue
        assert tokens == expected, f"source {source}"
        assert score == pytest.approx(expected_score, rel=5e-4, abs=2e-4), f"source {source}"  # rope: ~2e-4
    assert ties <= len(sources) // 10, f"{ties} of {len(sources)} greedy translations parted at near-ties"


# (encoding, config overrides): each exportable encoding on the default options, and the other options on a few
VARIANTS = [(name, {}) for name in EXPORTABLE] + [
    ("sinusoidal", dict(normalize_before=True, activation_function="gelu", scale_embedding=False)),
    ("rope", dict(decoder_attention_heads=2, tie_word_embeddings=False, activation_function="silu")),
    ("t5", dict(normalize_before=True, encoder_layers=3, decoder_layers=1)),
    # BART's and mBART's options (`convert_from_transformers`), the logits bias made random in `random_export`
    ("learned", dict(layernorm_embedding=True, final_logits_bias=True, activation_function="gelu")),
    ("learned", dict(layernorm_embedding=True, final_logits_bias=True, normalize_before=True)),
    # T5's (v1.0: tied and rescaled head; v1.1: gated GELU, untied head), also with a rotary encoding
    ("t5", dict(normalize_before=True, norm_type="rms_norm", layer_norm_eps=1e-6, projection_bias=False,
                scale_attention_scores=False, scale_embedding=False, scale_decoder_output=True)),
    ("t5", dict(normalize_before=True, norm_type="rms_norm", projection_bias=False, scale_attention_scores=False,
                gated_feed_forward=True, activation_function="gelu_new", tie_word_embeddings=False)),
    ("rope", dict(normalize_before=True, norm_type="rms_norm", projection_bias=False, gated_feed_forward=True,
                  activation_function="silu")),
]  # fmt: skip


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v[0] + "".join(f"-{k}" for k in v[1]))
def random_export(request, tmp_path_factory):
    """A random model with large weights (init_std 0.7: attention and positions decide the output) and its export."""
    name, overrides = request.param
    torch.manual_seed(0)
    model = PosformerForConditionalGeneration(tiny_config(name, init_std=0.7, **overrides)).eval()
    if model.final_logits_bias is not None:
        model.final_logits_bias.normal_(std=2.0)
    folder = export_ctranslate2(model, word_tokenizer(), tmp_path_factory.mktemp("ct2") / name)
    return model, folder


@pytest.mark.parametrize("num_beams", [1, 4], ids=["greedy", "beam4"])
def test_ctranslate2_translates_as_generate_on_random_models(random_export, num_beams):
    model, folder = random_export
    assert_same_translations(model, folder, random_sources(), num_beams)


def test_the_folder_holds_ctranslate2s_files_the_tokenizer_and_the_generation_config(tmp_path):
    model = PosformerForConditionalGeneration(tiny_config("rope")).eval()
    tokenizer = word_tokenizer()
    generation = GenerationConfig(num_beams=5, length_penalty=0.8, max_new_tokens=33, decoder_start_token_id=1)
    folder = export_ctranslate2(model, tokenizer, tmp_path / "ct2", generation_config=generation)
    assert CT2_FILES | HF_FILES <= {path.name for path in folder.iterdir()}
    assert siblings(folder) == []  # no staging folder left
    loaded = AutoTokenizer.from_pretrained(folder)
    assert loaded("w5 w7").input_ids == tokenizer("w5 w7").input_ids
    saved = GenerationConfig.from_pretrained(folder)
    assert (saved.num_beams, saved.length_penalty, saved.max_new_tokens) == (5, 0.8, 33)
    assert ctranslate2.Translator(str(folder)).translate_batch([["w5", "</s>"]], max_decoding_length=5)[0].hypotheses


@pytest.mark.parametrize("quantization", ["int8", "int16", "bfloat16"])
def test_a_quantized_export_translates(tmp_path, quantization):
    model = PosformerForConditionalGeneration(tiny_config("t5")).eval()
    folder = export_ctranslate2(model, word_tokenizer(), tmp_path / "ct2", quantization=quantization)
    # "auto": the fastest type this machine computes for the stored weights (int16 needs CPU support)
    translator = ctranslate2.Translator(str(folder), compute_type="auto")
    assert translator.translate_batch([["w5", "w9", "</s>"]], max_decoding_length=5)[0].hypotheses[0]


def test_a_vocabulary_padded_past_the_tokenizer_gets_placeholders(tmp_path):
    model = PosformerForConditionalGeneration(tiny_config("learned", vocab_size=104)).eval()
    folder = export_ctranslate2(model, word_tokenizer(99), tmp_path / "ct2")
    assert ctranslate2.Translator(str(folder)).translate_batch([["w5", "</s>"]], max_decoding_length=5)[0].hypotheses


UNEXPORTABLE = [
    (dict(position_encoding="hadamard"), "position_encoding='hadamard'", "multiplies"),
    (dict(position_encoding="transformer_xl"), "position_encoding='transformer_xl'", "content and position biases"),
    (dict(position_encoding="alibi"), "position_encoding='alibi'", "decoders only"),
    (dict(position_encoding="fire"), "position_encoding='fire'", "MLP"),
    (dict(activation_function="mish"), "activation_function='mish'", "relu, gelu"),
    (dict(eos_token_id=[2, 3]), "eos_token_id=[2, 3]", "one id"),
    (dict(decoder_start_token_id=None), "decoder_start_token_id is None", "Set it"),
    (dict(share_encoder_decoder_embeddings=False, head_dim=4), "share_encoder_decoder_embeddings=False, head_dim=4",
     "ct2-transformers-converter"),
    (dict(head_dim=4), "head_dim=4", "does not map this option yet"),
    (dict(share_encoder_decoder_embeddings=False), "share_encoder_decoder_embeddings=False", "option yet"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "named", "fix"), UNEXPORTABLE, ids=[u[1] for u in UNEXPORTABLE])
def test_what_ctranslate2_cannot_compute_is_refused_by_name_and_nothing_is_written(tmp_path, overrides, named, fix):
    model = PosformerForConditionalGeneration(tiny_config(**overrides)).eval()
    with pytest.raises(ValueError, match=r"(?s)" + "".join(f"(?=.*{part})" for part in map(re.escape, (named, fix)))):
        export_ctranslate2(model, word_tokenizer(), tmp_path / "ct2")
    assert list(tmp_path.iterdir()) == []


def test_an_unexportable_encoding_lists_the_exportable_ones():
    model = PosformerForConditionalGeneration(tiny_config("alibi")).eval()
    assert ", ".join(exportable_encodings()) == EXPORTABLE_NAMES
    with pytest.raises(ValueError, match=f"Encodings that export: {EXPORTABLE_NAMES}"):
        export_ctranslate2(model, word_tokenizer(), "unused")


def test_an_unknown_quantization_and_a_larger_tokenizer_are_refused(tmp_path):
    model = PosformerForConditionalGeneration(tiny_config("rope")).eval()
    with pytest.raises(ValueError, match=r"quantization='int4'.*int8, int8_float32"):
        export_ctranslate2(model, word_tokenizer(), tmp_path / "ct2", quantization="int4")
    with pytest.raises(ValueError, match=r"tokenizer has 120 tokens but the model's embedding only 99 rows"):
        export_ctranslate2(model, word_tokenizer(120), tmp_path / "ct2")
    assert list(tmp_path.iterdir()) == []


def test_without_ctranslate2_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` raises ImportError
    model = PosformerForConditionalGeneration(tiny_config()).eval()
    with pytest.raises(CTranslate2NotInstalledError, match=r'pip install "posformer\[ctranslate2\]"') as error:
        export_ctranslate2(model, word_tokenizer(), tmp_path / "ct2")
    assert isinstance(error.value, ImportError)
    assert list(tmp_path.iterdir()) == []


class ClobberingTokenizer(PreTrainedTokenizerFast):
    """A tokenizer that also writes a `config.json`, which would replace CTranslate2's."""

    def save_pretrained(self, save_directory, **kwargs):
        (Path(save_directory) / "config.json").write_text("{}")
        return super().save_pretrained(save_directory, **kwargs)


def test_nothing_replaces_ctranslate2s_files_and_a_failed_export_leaves_the_old_folder(tmp_path):
    model = PosformerForConditionalGeneration(tiny_config()).eval()
    old = tmp_path / "ct2"
    old.mkdir()
    (old / "kept.txt").write_text("previous export")
    tokenizer = ClobberingTokenizer(tokenizer_object=word_tokenizer().backend_tokenizer)
    with pytest.raises(FileExistsError, match="config.json would replace CTranslate2's file"):
        export_ctranslate2(model, tokenizer, old)
    assert [path.name for path in old.iterdir()] == ["kept.txt"] and siblings(old) == []


# ---------------------------------------------------------------------------------------------------------------
# Briefly trained models, through posformer-export
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=list(EXPORTABLE))
def trained_run(request, tmp_path_factory) -> Path:
    """A 40-step tiny run on the toy pairs with each exportable encoding."""
    root = tmp_path_factory.mktemp(f"run-{request.param}")
    out = root / "run"
    main([*TINY_RUN, *FAST_RUN, *toy_data_arguments(root), "--output_dir", str(out), "--max_steps", "40",
          "--save_steps", "40", "--eval_steps", "1000", "--position_encoding", request.param])  # fmt: skip
    return out


@pytest.mark.slow
@pytest.mark.parametrize("num_beams", [1, 4], ids=["greedy", "beam4"])
def test_posformer_export_to_ctranslate2_translates_the_test_split_as_generate(trained_run, tmp_path, num_beams):
    folder = tmp_path / "ct2"
    cli([str(trained_run), str(folder), "--format", "ctranslate2"])
    model = AutoModelForSeq2SeqLM.from_pretrained(trained_run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sources = [tokenizer(pair["translation"]["en"]).input_ids for pair in toy_pairs(10, 900)]
    assert_same_translations(model, folder, sources, num_beams)
    assert GenerationConfig.from_pretrained(folder).num_beams == 4  # the paper's decoding, as the safetensors export


@pytest.mark.slow
def test_posformer_export_quantizes_and_refuses_quantization_without_ctranslate2(trained_run, tmp_path, capsys):
    folder = export_run(trained_run, tmp_path / "int8", export_format="ctranslate2", quantization="int8")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    source = tokenizer.convert_ids_to_tokens(tokenizer("open the file").input_ids)
    assert ctranslate2.Translator(str(folder), compute_type="int8").translate_batch([source])[0].hypotheses
    with pytest.raises(SystemExit, match="--quantization int8 applies to CTranslate2's weights only"):
        cli([str(trained_run), str(tmp_path / "other"), "--quantization", "int8"])
