"""Export: the exported folder reloads with equal logits, the paper's decoding and a valid model card."""

import re

import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerFast

from conftest import siblings, tiny_config
from posformer.modeling import PosformerForConditionalGeneration
from posformer.training.export import export_model
from posformer.training.model_card import MODEL_CARD_TEMPLATE, render_model_card

SENTENCES = [
    "The file could not be opened.",
    "Die Datei konnte nicht geöffnet werden.",
    "Do you want to save the changes?",
    "Möchten Sie die Änderungen speichern?",
]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0-3: tiny_config's pad 0, bos/decoder start 1, eos 2
RUN_CARD = {
    "model_name": "posformer-tiny-sinusoidal-en-de",
    "model_id": "posformer/tiny-sinusoidal-en-de",
    "license": "apache-2.0",
    "source_language": "en",
    "target_language": "de",
    "dataset": "posformer-builtin-en-de",
    "dataset_name": "Debian gettext catalogs, English-German",
    "dataset_description": "Four sentences: a test fixture.",
    "tokenizer_description": "word-level, trained on the fixture",
    "test_split": "test",
    "train_steps": 100,
    "tokens_per_batch": 4096,
    "optimizer": "Adam (0.9, 0.98, 1e-9), inverse square root decay",
    "learning_rate": 7e-4,
    "warmup_steps": 10,
    "label_smoothing": 0.1,
    "checkpoint_averaging": "mean of the last 2 checkpoints",
    "seed": 0,
    "hardware": "CPU",
    "training_time": "1 s",
    "bleu": 27.314,
    "chrf": 55.5,
    "bleu_signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
    "chrf_signature": "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0",
}


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on four sentences; appends `</s>` like Marian's."""
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def tiny_model(seed: int = 0) -> PosformerForConditionalGeneration:
    torch.manual_seed(seed)
    return PosformerForConditionalGeneration(tiny_config()).eval()


# ---------------------------------------------------------------------------------------------------- export


def front_matter(readme: str) -> dict:
    header = re.match(r"---\n(.*?\n)---\n", readme, flags=re.DOTALL)
    assert header, "the model card has no YAML front matter"
    return yaml.safe_load(header.group(1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    model = tiny_model()
    out = export_model(model, tokenizer, tmp_path_factory.mktemp("export") / "model", RUN_CARD)
    return model, out


def test_export_writes_every_file_and_nothing_else(exported):
    _, out = exported
    names = {path.name for path in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json"} <= names
    assert "tokenizer_config.json" in names
    assert siblings(out) == []


def test_exported_model_and_tokenizer_reload_with_equal_logits(exported, tokenizer):
    model, out = exported
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(out)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
    assert isinstance(reloaded, PosformerForConditionalGeneration)
    batch = reloaded_tokenizer(SENTENCES[::2], return_tensors="pt", padding=True)
    assert (
        batch["input_ids"].tolist()
        == tokenizer(SENTENCES[::2], return_tensors="pt", padding=True)["input_ids"].tolist()
    )
    decoder_input_ids = torch.tensor([[1, 5, 6], [1, 7, 8]])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        expected = model(**inputs, decoder_input_ids=decoder_input_ids).logits
        torch.testing.assert_close(reloaded(**inputs, decoder_input_ids=decoder_input_ids).logits, expected)


def test_exported_generation_config_is_the_papers_beam_search(exported):
    _, out = exported
    generation = AutoModelForSeq2SeqLM.from_pretrained(out).generation_config
    assert (generation.num_beams, generation.length_penalty, generation.early_stopping) == (4, 0.6, True)
    assert generation.max_new_tokens == 256
    config = tiny_config()
    assert (generation.bos_token_id, generation.eos_token_id) == (config.bos_token_id, config.eos_token_id)
    assert (generation.pad_token_id, generation.decoder_start_token_id) == (0, config.decoder_start_token_id)


def test_exported_model_card_metadata_parses(exported):
    _, out = exported
    readme = (out / "README.md").read_text(encoding="utf-8")
    metadata = front_matter(readme)
    assert metadata["pipeline_tag"] == "translation" and metadata["library_name"] == "transformers"
    assert metadata["language"] == ["en", "de"] and metadata["metrics"] == ["bleu", "chrf"]
    assert "position-encoding-sinusoidal" in metadata["tags"]
    (result,) = metadata["model-index"][0]["results"]
    scores = {metric["type"]: metric["value"] for metric in result["metrics"]}
    assert scores == {"bleu": RUN_CARD["bleu"], "chrf": RUN_CARD["chrf"]}
    assert result["dataset"]["split"] == "test"
    assert "$" not in readme  # every placeholder was filled
    assert "Vaswani" in readme and "| 27.31 | 55.5 |" in readme and RUN_CARD["bleu_signature"] in readme


def test_exported_model_card_usage_example_runs(exported, monkeypatch):
    _, out = exported
    (code,) = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(encoding="utf-8"), flags=re.DOTALL)
    code = code.replace(RUN_CARD["model_id"], str(out))
    namespace: dict = {}
    with torch.no_grad():
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["output_ids"].shape[0] == 1


def test_export_with_a_missing_card_value_writes_nothing(tmp_path, tokenizer):
    card = {key: value for key, value in RUN_CARD.items() if key not in {"bleu", "hardware"}}
    with pytest.raises(ValueError, match=r"\['bleu', 'hardware'\]"):
        export_model(tiny_model(), tokenizer, tmp_path / "model", card)
    assert list(tmp_path.iterdir()) == []


def test_model_card_header_stays_valid_yaml_whatever_the_strings(tmp_path, tokenizer):
    nasty = 'a "quoted": name # not a comment\n- [x]'
    values = {**RUN_CARD, "model_name": nasty, "dataset": "{ready: yes}", "license": "no"}
    model_values = {key: "x" for key in re.findall(r"\$\{(\w+)\}", MODEL_CARD_TEMPLATE.read_text())}
    metadata = front_matter(render_model_card({**model_values, **values}))
    assert metadata["model-index"][0]["name"] == nasty
    assert metadata["datasets"] == ["{ready: yes}"] and metadata["license"] == "no"


def test_model_card_template_ships_next_to_the_export_module():
    assert MODEL_CARD_TEMPLATE.name == "model_card.md" and MODEL_CARD_TEMPLATE.parent.name == "training"
    assert MODEL_CARD_TEMPLATE.read_text(encoding="utf-8").startswith("---\n")
