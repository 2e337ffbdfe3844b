"""Export: atomic writes, checkpoint averaging, the exported folder reloads with the paper's decoding and a valid
model card, and the training-curve plot."""

import json
import re

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerFast

from conftest import tiny_config
from posformer.modeling import PosformerForConditionalGeneration
from posformer.modeling.atomic_io import atomic_directory, atomic_write_text
from posformer.training.checkpoint_averaging import average_checkpoints
from posformer.training.export import export_model
from posformer.training.model_card import MODEL_CARD_TEMPLATE, render_model_card
from posformer.training.plots import plot_training_curves

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


def siblings(path):
    """Everything next to `path` besides `path` itself: leftovers of an atomic write would show up here."""
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


# ----------------------------------------------------------------------------------------------- atomic writes


def test_atomic_directory_replaces_the_previous_folder(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_directory(final) as staging:
        assert staging.parent == final.parent and staging != final
        (staging / "new.txt").write_text("new")
        assert (final / "old.txt").read_text() == "old"  # untouched until the body has finished
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert siblings(final) == []


def test_atomic_directory_keeps_the_previous_folder_when_the_body_raises(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(final) as staging:
            (staging / "half-written.bin").write_bytes(b"\0" * 10)
            raise RuntimeError("boom")
    assert sorted(p.name for p in final.iterdir()) == ["old.txt"] and (final / "old.txt").read_text() == "old"
    assert siblings(final) == []


def test_atomic_directory_creates_a_new_folder_and_refuses_a_file(tmp_path):
    with atomic_directory(tmp_path / "a" / "b") as staging:
        (staging / "x").write_text("x")
    assert (tmp_path / "a" / "b" / "x").read_text() == "x"
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="file"):
        with atomic_directory(tmp_path / "file"):
            pass


def test_atomic_write_text_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "notes.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "zweite Fassung")
    assert path.read_text(encoding="utf-8") == "zweite Fassung"
    assert siblings(path) == []


# ------------------------------------------------------------------------------------------ checkpoint averaging


def test_average_of_two_checkpoints_is_their_mean_and_reloads(tmp_path):
    tiny_model(seed=1).save_pretrained(tmp_path / "a")
    tiny_model(seed=2).save_pretrained(tmp_path / "b")
    first, second = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")

    averaged = average_checkpoints([tmp_path / "a", tmp_path / "b" / "model.safetensors"])  # a folder and a file

    assert averaged.keys() == first.keys()
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (first[name] + second[name]) / 2)
    model = tiny_model(seed=3)
    result = model.load_state_dict(averaged, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= set(model.state_dict()) - set(first)  # only weights tied to a saved one
    for name, tensor in model.state_dict().items():
        if name in averaged:
            torch.testing.assert_close(tensor, averaged[name])
    torch.testing.assert_close(model.lm_head.weight, averaged["model.shared.weight"])


def test_average_keeps_each_tensor_dtype_and_sums_in_float32(tmp_path):
    half = torch.tensor([1.0, 2.0**-8], dtype=torch.bfloat16)
    save_file({"w": half, "n": torch.tensor([2, 4])}, tmp_path / "a.safetensors")
    save_file({"w": torch.zeros(2, dtype=torch.bfloat16), "n": torch.tensor([4, 8])}, tmp_path / "b.safetensors")
    averaged = average_checkpoints([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert averaged["w"].dtype == torch.bfloat16 and averaged["n"].dtype == torch.int64
    torch.testing.assert_close(averaged["w"], half / 2)
    torch.testing.assert_close(averaged["n"], torch.tensor([3, 6]))


def save_like_accelerate_under_fsdp(state: dict[str, torch.Tensor], folder, sharded: bool) -> None:
    """The model files of Accelerate's `save_state` under FSDP: `torch.distributed.checkpoint` shards of
    `{"model": state}` (SHARDED_STATE_DICT, the default) or one `torch.save` file (FULL_STATE_DICT)."""
    folder.mkdir()
    if sharded:
        writer = dcp.FileSystemWriter(folder / "pytorch_model_fsdp_0")
        dcp.save({"model": state}, storage_writer=writer, no_dist=True)
    else:
        torch.save(state, folder / "pytorch_model_fsdp.bin")


def test_average_reads_the_checkpoints_accelerate_writes_under_fsdp(tmp_path):
    first, second = tiny_model(seed=1).state_dict(), tiny_model(seed=2).state_dict()
    save_like_accelerate_under_fsdp(first, tmp_path / "sharded", sharded=True)
    save_like_accelerate_under_fsdp(second, tmp_path / "full", sharded=False)
    averaged = average_checkpoints([tmp_path / "sharded", tmp_path / "full"])
    assert averaged.keys() == first.keys()  # the FSDP files keep tied weights under every name
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (first[name] + second[name]) / 2)
    model = tiny_model(seed=3)
    model.load_state_dict(averaged)
    torch.testing.assert_close(model.lm_head.weight, averaged["model.shared.weight"])


def test_average_names_a_damaged_sharded_checkpoint(tmp_path):
    save_like_accelerate_under_fsdp(tiny_model().state_dict(), tmp_path / "a", sharded=True)
    (shard,) = (tmp_path / "a" / "pytorch_model_fsdp_0").glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "a" / "pytorch_model_fsdp_0")) + ".*corrupt"):
        average_checkpoints([tmp_path / "a"])


def test_average_names_a_missing_checkpoint(tmp_path):
    tiny_model().save_pretrained(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty" / "model.safetensors"))):
        average_checkpoints([tmp_path / "a", tmp_path / "empty"])


def test_average_names_a_truncated_checkpoint(tmp_path):
    for name in ("a", "b"):
        tiny_model().save_pretrained(tmp_path / name)
    weights = tmp_path / "b" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=re.escape(str(weights)) + ".*truncated or corrupt"):
        average_checkpoints([tmp_path / "a", tmp_path / "b"])


@pytest.mark.parametrize(
    ("other", "message"),
    [({"w": torch.zeros(2), "extra": torch.zeros(1)}, "unexpected \\['extra'\\]"), ({"w": torch.zeros(3)}, "shape")],
)
def test_average_refuses_checkpoints_of_different_models(tmp_path, other, message):
    save_file({"w": torch.zeros(2)}, tmp_path / "a.safetensors")
    save_file(other, tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "b.safetensors")) + ".*" + message):
        average_checkpoints([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])


def test_average_needs_a_checkpoint():
    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints([])


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


# ------------------------------------------------------------------------------------------------------- plot


def test_plot_training_curves_writes_a_png(tmp_path):
    log = tmp_path / "run" / "metrics.jsonl"
    log.parent.mkdir()
    records = [
        {"step": step, "train_loss": 5.0 / (1 + step / 50), "learning_rate": 1e-4} for step in range(10, 210, 10)
    ]
    records += [
        {"step": step, "eval_loss": 4.0 / (1 + step / 60), "eval_bleu": step / 10, "eval_chrf": 20 + step / 5}
        for step in (50, 100, 150, 200)
    ]
    log.write_text("\n".join(json.dumps(record) for record in records) + "\n")
    out = plot_training_curves(log, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert siblings(out) == []


def test_plot_training_curves_names_a_bad_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "train_loss": 2.0}\n{"train_loss": 1.0}\n')
    with pytest.raises(ValueError, match=re.escape(f"{log}:2")):
        plot_training_curves(log, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
