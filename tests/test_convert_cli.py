"""`posformer-convert` end to end: an opus-mt-style Marian checkpoint in a Hub cache, converted offline, translates
through `pipeline("translation")` exactly as the source model does, names its source and licence, and trains further
with posformer-finetune on the built-in corpus, with its own or another position encoding."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, MarianConfig, MarianMTModel, pipeline

from posformer.modeling import PosformerForConditionalGeneration
from posformer.training.convert_cli import cli, convert
from posformer.training.corpus import load_builtin_corpus
from posformer.training.data import train_bpe_tokenizer
from posformer.training.finetune import main as finetune

REPO_ID = "Helsinki-NLP/opus-mt-en-de"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SOURCE_CARD = "---\nlicense: cc-by-4.0\nlanguage:\n- en\n- de\n---\n\n# opus-mt-en-de\n\nA Marian model.\n"
SENTENCES = ["Open the file.", "Save all documents in this folder", "The printer is not connected."]
QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """HF_HOME holding `REPO_ID` as a Hub snapshot: a random Marian model of opus-mt's layout (swish, scaled
    embeddings, pad = decoder start = the last row) at a tiny size, a BPE of the built-in corpus, and a card."""
    hf_home = tmp_path_factory.mktemp("hf_home")
    corpus = load_builtin_corpus()["train"].select(range(2000))["translation"]
    tokenizer = train_bpe_tokenizer([text for pair in corpus for text in pair.values()], vocab_size=400)
    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
        activation_function="swish", scale_embedding=True, pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        init_std=0.3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_(std=0.5)
    model.generation_config.bad_words_ids = [[tokenizer.pad_token_id]]  # as every opus-mt model
    model.generation_config.num_beams = 3
    repository = hf_home / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    snapshot = repository / "snapshots" / COMMIT
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (snapshot / "README.md").write_text(SOURCE_CARD)
    (repository / "refs").mkdir(parents=True)
    (repository / "refs" / "main").write_text(COMMIT)
    return hf_home


def offline_environment(hf_home: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def converted(hub_cache, tmp_path_factory) -> Path:
    """`posformer-convert REPO_ID OUT` run as a user runs it: another process, offline, from the Hub cache."""
    out = tmp_path_factory.mktemp("converted") / "opus-mt-en-de-posformer"
    completed = subprocess.run(
        [sys.executable, "-m", "posformer.training.convert_cli", REPO_ID, str(out)],
        env=offline_environment(hub_cache), capture_output=True, text=True,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "largest logit difference" in completed.stderr
    return out


def source_model(hub_cache: Path) -> MarianMTModel:
    snapshot = next((hub_cache / "hub").glob("models--*/snapshots/*"))
    return MarianMTModel.from_pretrained(snapshot).eval()


def test_the_converted_checkpoint_translates_as_the_source_through_the_pipeline(hub_cache, converted):
    source = source_model(hub_cache)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    expected = tokenizer.batch_decode(source.generate(**batch, max_new_tokens=12), skip_special_tokens=True)
    assert any(expected)  # the random model says something
    translate = pipeline("translation", model=str(converted), trust_remote_code=True)  # posformer's pipeline code
    assert [row["translation_text"] for row in translate(SENTENCES, max_new_tokens=12)] == expected
    model = AutoModelForSeq2SeqLM.from_pretrained(converted)
    assert isinstance(model, PosformerForConditionalGeneration)
    generation = model.generation_config
    assert generation.num_beams == 3 and generation.bad_words_ids == [[source.config.pad_token_id]]


def test_the_folder_is_a_complete_checkpoint_with_a_card_naming_source_and_licence(converted):
    names = {path.name for path in converted.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
            "modeling_posformer.py", "configuration_posformer.py"} <= names  # fmt: skip
    assert "lm_head.weight" not in load_file(converted / "model.safetensors")  # tied, stored once
    assert json.loads((converted / "config.json").read_text())["auto_map"]  # loads without posformer
    card = ModelCard.load(converted / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.base_model == REPO_ID
    assert card.data.language == ["en", "de"]
    assert f"This is `{REPO_ID}` (MarianMTModel)" in card.text and "A Marian model." in card.text


def test_errors_name_what_is_wrong(hub_cache, converted, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="OUT_DIR .* exists and is not empty; pass --overwrite_output_dir"):
        cli([str(converted), str(converted)])
    posformer_folder = converted  # a posformer model is no source family
    with pytest.raises(SystemExit, match="converts MarianMTModel, .*got PosformerForConditionalGeneration"):
        cli([str(posformer_folder), str(tmp_path / "again")])
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit, match="SOURCE Helsinki-NLP/opus-mt-xx-yy: no such folder, and not in the Hugging"):
        cli(["Helsinki-NLP/opus-mt-xx-yy", str(tmp_path / "missing")])
    assert not (tmp_path / "again").exists() and not (tmp_path / "missing").exists()


def test_a_source_without_card_or_licence_says_so(hub_cache, tmp_path):
    folder = tmp_path / "local-marian"
    source_model(hub_cache).save_pretrained(folder)
    AutoTokenizer.from_pretrained(next((hub_cache / "hub").glob("models--*/snapshots/*"))).save_pretrained(folder)
    card = ModelCard.load(convert(str(folder), tmp_path / "out") / "README.md")
    assert card.data.license == "other" and card.data.base_model is None  # a local path is no Hub model id
    assert "names no licence: check the source model's terms" in card.text


FINETUNE = ["--max_steps", "3", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",
            "--max_train_samples", "64", "--max_source_length", "32", "--max_target_length", "32",
            "--save_strategy", "no", *QUIET]  # fmt: skip


def test_posformer_finetune_continues_training_the_converted_model_on_the_builtin_corpus(converted, tmp_path):
    metrics = finetune(["--model_name_or_path", str(converted), "--output_dir", str(tmp_path / "run"), *FINETUNE])
    assert metrics["train_loss"] > 0
    before, after = load_file(converted / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert before.keys() == after.keys()
    assert not torch.equal(before["model.shared.weight"], after["model.shared.weight"])  # it trained


def test_changing_the_position_encoding_on_the_way_in_is_a_new_model_from_the_old_weights(converted, tmp_path, caplog):
    finetune(["--model_name_or_path", str(converted), "--output_dir", str(tmp_path / "run"), "--position_encoding",
              "rope", *FINETUNE, "--learning_rate", "0"])  # fmt: skip
    assert "a new model initialised from its weights, not the same function" in caplog.text
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run")
    assert model.config.position_encoding == "rope" and model.config.final_logits_bias  # the rest is kept
    before, after = load_file(converted / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert torch.equal(before["model.encoder.layers.0.fc1.weight"], after["model.encoder.layers.0.fc1.weight"])
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'nope' (choose from ...)"
        finetune(["--model_name_or_path", str(converted), "--output_dir", str(tmp_path / "x"),
                  "--position_encoding", "nope", *FINETUNE])  # fmt: skip


def test_a_converted_opus_mt_model_deploys_on_ctranslate2_translating_as_the_source(hub_cache, converted, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from posformer.training.ctranslate2_export import export_ctranslate2

    source = source_model(hub_cache)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    folder = export_ctranslate2(AutoModelForSeq2SeqLM.from_pretrained(converted), tokenizer, tmp_path / "ct2")
    translator = ctranslate2.Translator(str(folder))
    for sentence in SENTENCES:
        ids = tokenizer(sentence, return_tensors="pt").input_ids
        expected = source.generate(ids, num_beams=1, max_new_tokens=12, bad_words_ids=None, forced_eos_token_id=None)[
            0, 1:
        ].tolist()
        expected = [token for token in expected if token not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
        (result,) = translator.translate_batch(
            [tokenizer.convert_ids_to_tokens(ids[0])], beam_size=1, max_decoding_length=12, min_decoding_length=0
        )
        assert tokenizer.convert_tokens_to_ids(result.hypotheses[0]) == expected
