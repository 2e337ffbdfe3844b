"""`posformer-translate` end to end on both engines: files and standard input, empty and very long lines, order
across token batches, decoding overrides, scores against a reference, and the errors a user can meet.

The oracle is transformers' own `generate`, and for CTranslate2 the same weights converted by CTranslate2's own
`TransformersConverter`: a tiny BART (learned positions: a table to truncate to) trained for a few steps on toy
pairs, so that translations end at different lengths and depend on their source.
"""

import io
import logging
import re
import shutil
import subprocess
import sys

import pytest
import sacrebleu
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BartConfig, BartForConditionalGeneration

from conftest import tiny_config, toy_pairs
from posformer.modeling import PosformerForConditionalGeneration
from posformer.training.ctranslate2_export import export_ctranslate2
from posformer.training.data import special_token_ids, train_bpe_tokenizer
from posformer.training.translate_cli import (
    INSTALL_CTRANSLATE2,
    Decoding,
    TorchEngine,
    main,
    token_batches,
    translate_lines,
)

ctranslate2 = pytest.importorskip("ctranslate2")

TABLE = 64  # BART's learned positions
SOURCES = [pair["translation"]["en"] for pair in toy_pairs(12, 300)]
REFERENCES = [pair["translation"]["de"] for pair in toy_pairs(12, 300)]


def _trained_bart(tokenizer) -> BartForConditionalGeneration:
    """A 1+1-layer BART trained for a few steps on toy pairs: its translations end, at lengths of their own."""
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=TABLE,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
        normalize_before=False,
        **special_token_ids(tokenizer),
    )  # fmt: skip  (normalize_before: CTranslate2's BART converter reads it, transformers 5 no longer sets it)
    model = BartForConditionalGeneration(config)
    pairs = toy_pairs(200)
    encoded = tokenizer(
        [p["translation"]["en"] for p in pairs], text_target=[p["translation"]["de"] for p in pairs],
        padding=True, return_tensors="pt",
    )  # fmt: skip
    labels = encoded["labels"].masked_fill(encoded["labels"] == tokenizer.pad_token_id, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(40):
        rows = torch.arange(step * 16, step * 16 + 16) % len(pairs)
        model(
            input_ids=encoded["input_ids"][rows], attention_mask=encoded["attention_mask"][rows], labels=labels[rows]
        ).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.generation_config.update(num_beams=2, early_stopping=True, max_new_tokens=40)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """{"torch": a transformers model folder, "ctranslate2": the same weights as a CTranslate2 folder with the
    tokenizer (its model_max_length the position table, as the export writes it) and generation config}."""
    root = tmp_path_factory.mktemp("models")
    texts = [text for pair in toy_pairs(200) for text in pair["translation"].values()]
    tokenizer = train_bpe_tokenizer(texts, 120)
    model = _trained_bart(tokenizer)
    model.save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    ctranslate2.converters.TransformersConverter(str(root / "hf")).convert(str(root / "ct2"))
    tokenizer.model_max_length = TABLE
    tokenizer.save_pretrained(root / "ct2")
    model.generation_config.save_pretrained(root / "ct2")
    return {"torch": str(root / "hf"), "ctranslate2": str(root / "ct2")}


def _write(path, lines: list[str]) -> str:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return str(path)


def _translate_files(tmp_path, models, engine: str, lines: list[str], *options: str) -> list[str]:
    output = tmp_path / f"{engine}.out"
    source = _write(tmp_path / "in.txt", lines)
    main([models[engine], "--engine", engine, "--input", source, "--output", str(output), *options])
    return output.read_text(encoding="utf-8").split("\n")[:-1]


def _generate_one_by_one(folder: str, sources: list[str], num_beams: int, length_penalty: float) -> list[str]:
    """The oracle: transformers' generate on each sentence alone, with the command's budget for it."""
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    texts = []
    for source in sources:
        ids = tokenizer(source, return_tensors="pt")["input_ids"]
        budget = min(int(ids.shape[1] * 1.5) + 10, 40)  # generation_budget, capped by the config's max_new_tokens
        generated = model.generate(ids, num_beams=num_beams, length_penalty=length_penalty, max_new_tokens=budget)
        texts.append(tokenizer.decode(generated[0], skip_special_tokens=True))
    return texts


# ---------------------------------------------------------------------------------------------------------------
# Translations
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, num_beams, length_penalty",
    [([], 2, 1.0), (["--num_beams", "1"], 1, 1.0), (["--num_beams", "4", "--length_penalty", "0.6"], 4, 0.6)],
    ids=["generation-config", "greedy-override", "beam4-penalty-override"],
)
def test_both_engines_equal_generate_sentence_by_sentence(tmp_path, models, options, num_beams, length_penalty):
    expected = _generate_one_by_one(models["torch"], SOURCES, num_beams, length_penalty)
    assert len(set(expected)) > 3 and all(expected), "the oracle model should translate, differently per sentence"
    for engine in ("torch", "ctranslate2"):
        assert _translate_files(tmp_path, models, engine, SOURCES, "--max_tokens", "40", *options) == expected, engine


def test_both_engines_may_end_at_the_first_step(tmp_path, models):
    """A model whose first token is the end token translates to empty lines on both engines (CTranslate2's own
    default, min_decoding_length=1, would emit a token first)."""
    model = AutoModelForSeq2SeqLM.from_pretrained(models["torch"])
    with torch.no_grad():
        model.final_logits_bias[0, model.config.eos_token_id] = 100.0
    ending = {"torch": str(tmp_path / "hf"), "ctranslate2": str(tmp_path / "ct2")}
    model.save_pretrained(ending["torch"])
    AutoTokenizer.from_pretrained(models["torch"]).save_pretrained(ending["torch"])
    ctranslate2.converters.TransformersConverter(ending["torch"]).convert(ending["ctranslate2"])
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(f"{models['ctranslate2']}/{name}", ending["ctranslate2"])
    for engine in ("torch", "ctranslate2"):
        assert _translate_files(tmp_path, ending, engine, SOURCES[:3]) == ["", "", ""], engine


def test_beam_override_changes_the_decoding(tmp_path, models):
    """The generation config's beams are the default, the command line's replace them (some sentence differs)."""
    default = _translate_files(tmp_path, models, "torch", SOURCES)
    assert default != _translate_files(tmp_path, models, "torch", SOURCES, "--num_beams", "1", "--length_penalty", "-2")


def test_order_preserved_across_token_batches(models):
    engine = TorchEngine(models["torch"], "cpu")
    decoding = Decoding(num_beams=2, length_penalty=1.0, max_new_tokens=None)
    lengths = [len(engine.tokenizer(source)["input_ids"]) for source in SOURCES]
    batches = token_batches(lengths, 24)
    assert len(batches) > 2 and [index for batch in batches for index in batch] != list(range(len(SOURCES)))
    one_by_one = [translate_lines(engine, [source], decoding, 24)[0] for source in SOURCES]
    assert translate_lines(engine, SOURCES, decoding, 24) == one_by_one


@pytest.mark.parametrize(
    "lengths, max_tokens, expected",
    [
        ([3, 1, 2], 100, [[1, 2, 0]]),
        ([3, 1, 2, 3], 6, [[1, 2], [0, 3]]),  # 2 x 2 fits 6, then 3 x 3 does not
        ([10, 2], 4, [[1], [0]]),  # longer than max_tokens: a batch alone
        ([], 8, []),
    ],
    ids=["one-batch", "cut-by-padded-tokens", "too-long-alone", "empty"],
)
def test_token_batches(lengths, max_tokens, expected):
    assert token_batches(lengths, max_tokens) == expected


@pytest.mark.parametrize("engine", ["torch", "ctranslate2"])
def test_stdin_to_stdout_keeps_empty_lines(models, monkeypatch, engine):
    lines = [SOURCES[0], "", SOURCES[1], "   ", SOURCES[2]]
    stdout = io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\n".join(lines).encode()), encoding="utf-8"))
    monkeypatch.setattr(sys, "stdout", stdout)
    main([models[engine], "--engine", engine])
    output = stdout.getvalue().split("\n")
    assert len(output) == len(lines) + 1 and output[-1] == ""
    assert output[1] == output[3] == "" and all(output[i] for i in (0, 2, 4))


@pytest.mark.parametrize("engine", ["torch", "ctranslate2"])
def test_long_lines_truncated_with_one_warning(tmp_path, models, caplog, engine):
    long_line = " ".join(["file open save"] * 60)  # far more tokens than the 64 positions
    lines = [long_line, SOURCES[0], long_line + " close"]
    with caplog.at_level(logging.WARNING, logger="posformer"):
        output = _translate_files(tmp_path, models, engine, lines)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 of 3" in warnings[0] and f"truncated to {TABLE} tokens" in warnings[0]
    assert len(output) == 3
    assert output == _translate_files(tmp_path, models, "torch" if engine == "ctranslate2" else "ctranslate2", lines)


def test_no_progress_bar_in_a_pipe(tmp_path, models):
    command = [sys.executable, "-m", "posformer.training.translate_cli", models["torch"], "--input", "-"]
    run = subprocess.run(command, input="\n".join(SOURCES[:3]) + "\n", capture_output=True, text=True, check=True)
    assert len(run.stdout.splitlines()) == 3
    assert "sentences/s" not in run.stderr and "\r" not in run.stderr


def test_progress_bar_on_a_terminal(tmp_path, models, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    _translate_files(tmp_path, models, "torch", SOURCES[:3])
    assert "sentences/s" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------------------


def test_reference_scores_equal_sacrebleu(tmp_path, models):
    lines, references = [*SOURCES[:6], ""], [*REFERENCES[:6], ""]
    output = tmp_path / "out.txt"
    scores = main([models["torch"], "--input", _write(tmp_path / "in.txt", lines), "--output", str(output),
                   "--reference", _write(tmp_path / "ref.txt", references)])  # fmt: skip
    translations = output.read_text(encoding="utf-8").split("\n")[:-1]
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(translations, [references]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(translations, [references]).score)


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


def test_reference_with_other_line_count(tmp_path, models):
    argv = [models["torch"], "--input", _write(tmp_path / "in.txt", SOURCES[:4]),
            "--reference", _write(tmp_path / "ref.txt", REFERENCES[:3])]  # fmt: skip
    with pytest.raises(ValueError, match=r"--reference .*ref.txt has 3 lines but the input has 4; pass one reference"):
        main(argv)


@pytest.mark.parametrize(
    "engine, model, error, message",
    [
        ("torch", "missing/folder/here", FileNotFoundError, "MODEL missing/folder/here: no such folder"),
        ("torch", "ctranslate2", ValueError, "is a CTranslate2 model folder; pass --engine ctranslate2"),
        ("ctranslate2", "missing", FileNotFoundError, "MODEL missing: no such folder; pass a CTranslate2 model"),
        ("ctranslate2", "torch", ValueError, "holds no model.bin.*pass --engine torch"),
        ("ctranslate2", "ct2-without-generation-config", FileNotFoundError, "holds no generation_config.json"),
    ],
    ids=["torch-missing", "torch-given-ct2", "ct2-missing", "ct2-given-torch", "ct2-no-generation-config"],
)
def test_bad_model(tmp_path, models, engine, model, error, message):
    if model == "ct2-without-generation-config":
        model = str(shutil.copytree(models["ctranslate2"], tmp_path / model, ignore=shutil.ignore_patterns("gen*")))
    model = models.get(model, model)
    with pytest.raises(error, match=message):
        main([model, "--engine", engine, "--input", _write(tmp_path / "in.txt", SOURCES[:1])])


def test_ctranslate2_not_installed(tmp_path, models, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` raises ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match=f"needs the ctranslate2 package.*{re.escape(INSTALL_CTRANSLATE2)}"):
        main([models["ctranslate2"], "--engine", "ctranslate2", "--input", _write(tmp_path / "in.txt", SOURCES[:1])])


def test_input_not_utf8(tmp_path, models):
    (tmp_path / "in.txt").write_bytes(b"ok\n\xff\xfe bad\n")
    with pytest.raises(ValueError, match=r"--input .*in.txt is not UTF-8 text \(byte 3\); convert it"):
        main([models["torch"], "--input", str(tmp_path / "in.txt")])


def test_missing_input(tmp_path, models):
    with pytest.raises(FileNotFoundError, match=r"--input .*nope.txt does not exist; pass a text file"):
        main([models["torch"], "--input", str(tmp_path / "nope.txt")])


# ---------------------------------------------------------------------------------------------------------------
# posformer end to end: the export's folder on one engine, the model folder on the other
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["learned", "rope"])
def test_a_posformer_model_and_its_ctranslate2_export_translate_a_file_alike(tmp_path, encoding, caplog):
    """posformer -> `export_ctranslate2` -> `posformer-translate --engine ctranslate2` gives the torch engine's text
    line for line, with beams and a length penalty; a learned table's end truncates both alike (the export saves the
    tokenizer's model_max_length as the table)."""
    texts = [text for pair in toy_pairs(200) for text in pair["translation"].values()]
    tokenizer = train_bpe_tokenizer(texts, 120)
    torch.manual_seed(0)
    config = tiny_config(encoding, vocab_size=len(tokenizer), init_std=0.5, max_position_embeddings=24,
                         **special_token_ids(tokenizer))  # fmt: skip
    model = PosformerForConditionalGeneration(config).eval()
    model.generation_config.update(num_beams=3, length_penalty=0.6, early_stopping=True, max_new_tokens=12)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    export_ctranslate2(model, tokenizer, tmp_path / "ct2")
    folders = {"torch": str(tmp_path / "model"), "ctranslate2": str(tmp_path / "ct2")}
    lines = [*SOURCES[:6], "", " ".join(SOURCES)]  # an empty line, and one past the learned table's 24 positions
    with caplog.at_level(logging.WARNING):
        outputs = {engine: _translate_files(tmp_path, folders, engine, lines) for engine in folders}
    assert outputs["torch"] == outputs["ctranslate2"] and outputs["torch"][6] == ""
    assert len(set(outputs["torch"])) > 2  # the translations depend on their source
    truncated = [record for record in caplog.records if "truncated" in record.getMessage()]
    assert len(truncated) == (2 if encoding == "learned" else 0)  # one warning per engine
