"""Fine-tuning a posformer checkpoint with `Seq2SeqTrainer`: it learns, scores, saves reloadable checkpoints,
smooths labels exactly once, and gradient accumulation gives the update of the equivalent large batch."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    EvalPrediction,
    PreTrainedModel,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from conftest import tiny_config
from posformer.modeling import PosformerForConditionalGeneration
from posformer.training import train
from posformer.training.corpus import load_builtin_corpus
from posformer.training.finetune import main, translation_metrics

QUIET = ["--report_to", "none", "--disable_tqdm", "true", "--dataloader_pin_memory", "false"]
SHORT = ["--max_source_length", "32", "--max_target_length", "32"]
SENTENCES = ["Open the file.", "Save all documents in this folder"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny posformer pre-trained for two steps by posformer-train (dropout 0, label smoothing 0.1)."""
    out = tmp_path_factory.mktemp("pretrained")
    train.main(
        ["--model_size", "tiny", "--d_model", "32", "--encoder_ffn_dim", "64", "--decoder_ffn_dim", "64",
         "--encoder_layers", "1", "--decoder_layers", "1", "--dropout", "0", "--tokenizer_vocab_size", "300",
         "--max_train_samples", "500", "--max_tokens", "512", "--warmup_steps", "1", "--max_steps", "2",
         "--eval_steps", "100", "--save_steps", "100", "--max_eval_samples", "4", "--max_test_samples", "4",
         "--num_beams", "1", "--num_samples_to_show", "0", "--report_to", "none", "--output_dir", str(out)]
    )  # fmt: skip
    return out / "model"


def logits(model: PreTrainedModel, tokenizer) -> torch.Tensor:
    encoded = tokenizer(SENTENCES, text_target=SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**encoded).logits


def test_finetuning_lowers_the_loss_scores_and_saves_checkpoints_that_reload(checkpoint, tmp_path):
    out = tmp_path / "finetuned"
    metrics = main(
        ["--model_name_or_path", str(checkpoint), "--output_dir", str(out), *QUIET, *SHORT,
         "--max_train_samples", "200", "--max_eval_samples", "16", "--per_device_train_batch_size", "8",
         "--per_device_eval_batch_size", "16", "--gradient_accumulation_steps", "2", "--max_steps", "20",
         "--learning_rate", "3e-3", "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", "10",
         "--save_strategy", "steps", "--save_steps", "10", "--label_smoothing_factor", "0.1",
         "--predict_with_generate", "--generation_max_length", "24", "--generation_num_beams", "2"]
    )  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 20 and sum(losses[-3:]) < sum(losses[:3]) - 0.3
    evaluations = [entry for entry in history if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [10, 20]
    for scores in (*evaluations, metrics):
        assert 0 <= scores["eval_bleu"] <= 100 and 0 <= scores["eval_chrf"] <= 100
    assert metrics["train_loss"] > 0 and metrics["eval_loss"] == pytest.approx(evaluations[-1]["eval_loss"])

    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-20"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    final = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert not hasattr(final.config, "label_smoothing")  # smoothing is the recipe's, never saved with the model
    assert final.generation_config.max_new_tokens is None and final.generation_config.max_length == 24
    for folder in (out / "checkpoint-10", out / "checkpoint-20"):
        saved = load_file(folder / "model.safetensors")
        reloaded = AutoModelForSeq2SeqLM.from_pretrained(folder).state_dict()
        for name, tensor in saved.items():
            assert torch.equal(reloaded[name], tensor), name
    last = AutoModelForSeq2SeqLM.from_pretrained(out / "checkpoint-20")
    pretrained = AutoModelForSeq2SeqLM.from_pretrained(checkpoint)
    assert torch.equal(logits(last, tokenizer), logits(final, tokenizer))
    assert not torch.allclose(logits(pretrained, tokenizer), logits(final, tokenizer))


def test_metrics_decode_generations_and_labels_padded_with_minus_100(checkpoint):
    """Generations equal to the references score 100; the -100 padding the Trainer adds is never decoded."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = tokenizer(SENTENCES, padding=True, return_tensors="np")["input_ids"]
    padded = ids.copy()
    padded[ids == tokenizer.pad_token_id] = -100
    scores = translation_metrics(tokenizer)(EvalPrediction(predictions=ids, label_ids=padded))
    assert scores == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    half = translation_metrics(tokenizer)(EvalPrediction(predictions=padded[::-1].copy(), label_ids=padded))
    assert half["chrf"] < 50


@pytest.mark.parametrize("label_smoothing_factor", [0.0, 0.1])
def test_labels_are_smoothed_once_by_the_trainers_factor_only(checkpoint, tmp_path, label_smoothing_factor):
    """Smoothing is the recipe's alone: eval loss = cross-entropy smoothed by exactly --label_smoothing_factor
    (the model's own loss never smooths), computed here on the unchanged model (learning rate 0, one eval batch)."""
    metrics = main(
        ["--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path / "run"), *QUIET, *SHORT,
         "--max_train_samples", "8", "--max_eval_samples", "8", "--per_device_eval_batch_size", "8",
         "--max_steps", "1", "--learning_rate", "0", "--do_eval", "--save_strategy", "no",
         "--label_smoothing_factor", str(label_smoothing_factor)]
    )  # fmt: skip
    model = AutoModelForSeq2SeqLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    pairs = load_builtin_corpus()["validation"].select(range(8))["translation"]
    encoded = tokenizer(
        [pair["en"] for pair in pairs], text_target=[pair["de"] for pair in pairs], max_length=32, truncation=True,
        padding=True, return_tensors="pt",
    )  # fmt: skip
    labels = encoded["labels"].masked_fill(encoded["labels"] == tokenizer.pad_token_id, -100)
    with torch.no_grad():
        scores = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], labels=labels).logits
    expected = torch.nn.functional.cross_entropy(
        scores.flatten(0, 1), labels.flatten(), ignore_index=-100, label_smoothing=label_smoothing_factor
    )
    assert metrics["eval_loss"] == pytest.approx(expected.item(), rel=1e-5)


def one_sgd_step(checkpoint: Path, out: Path, batch_size: int, accumulation: int, smoothing: float) -> dict:
    """Fine-tune for one plain-SGD step (no clipping: both would hide a mis-scaled loss) on 8 training pairs."""
    main(
        ["--model_name_or_path", str(checkpoint), "--output_dir", str(out), *QUIET, *SHORT,
         "--max_train_samples", "8", "--per_device_train_batch_size", str(batch_size),
         "--gradient_accumulation_steps", str(accumulation), "--max_steps", "1", "--optim", "sgd",
         "--learning_rate", "1.0", "--max_grad_norm", "0", "--logging_steps", "1", "--save_strategy", "no",
         "--label_smoothing_factor", str(smoothing)]
    )  # fmt: skip
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {"loss": history[0]["loss"], "weights": load_file(out / "model.safetensors")}


@pytest.mark.parametrize("label_smoothing_factor", [0.0, 0.1])  # the model's loss, then the Trainer's LabelSmoother
def test_gradient_accumulation_equals_the_large_batch(checkpoint, tmp_path, label_smoothing_factor):
    """Batch 4 x 2 accumulation = batch 8: the loss of each micro-batch is divided by the target tokens of the
    whole step (`num_items_in_batch`), not averaged per micro-batch and then halved."""
    before = load_file(checkpoint / "model.safetensors")
    large = one_sgd_step(checkpoint, tmp_path / "large", 8, 1, label_smoothing_factor)
    accumulated = one_sgd_step(checkpoint, tmp_path / "accumulated", 4, 2, label_smoothing_factor)
    assert accumulated["loss"] == pytest.approx(large["loss"], rel=1e-5)
    largest_update = max((large["weights"][name] - before[name]).abs().max().item() for name in before)
    assert largest_update > 1e-2  # a loss off by the factor 2 would move the weights far beyond the tolerance
    for name, expected in large["weights"].items():
        torch.testing.assert_close(accumulated["weights"][name], expected, rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_without_a_validation_split_is_a_clear_error(checkpoint, tmp_path):
    train_file = tmp_path / "train.jsonl"
    train_file.write_text(json.dumps({"translation": {"en": "Open the file.", "de": "Öffne die Datei."}}) + "\n")
    with pytest.raises(ValueError, match=r"splits \['train'\], but this run needs \['validation'\]"):
        main(["--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path / "run"), *QUIET,
              "--train_file", str(train_file), "--eval_strategy", "steps", "--max_steps", "1"])  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_seq2seq_trainer_predicts_what_uncached_generation_gives(tmp_path, num_beams):
    """`Seq2SeqTrainer(predict_with_generate=True)` generates through the cache as the installed transformers
    drives it; on weights where attention matters (init_std 0.2) its predictions are uncached `generate`'s. Without
    generation, the Trainer leaves the cache out of what it predicts (`config.keys_to_ignore_at_inference`)."""
    model = PosformerForConditionalGeneration(tiny_config("rope", init_std=0.2)).eval()
    source = torch.randint(4, 99, (4, 9))
    target = torch.randint(4, 99, (4, 6))
    rows = Dataset.from_dict({"input_ids": source.tolist(), "decoder_input_ids": target.tolist()})
    arguments = dict(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, use_cpu=True, use_cache=True)
    arguments |= dict(per_device_eval_batch_size=4, generation_num_beams=num_beams, generation_max_length=12)
    generating = Seq2SeqTrainer(model=model, args=Seq2SeqTrainingArguments(**arguments, predict_with_generate=True))
    predicted = torch.as_tensor(generating.predict(rows.remove_columns("decoder_input_ids")).predictions)
    expected = model.generate(source, max_length=12, num_beams=num_beams, use_cache=False)
    assert expected.shape[1] > 6  # several steps decoded with the history
    assert torch.equal(predicted[:, : expected.shape[1]], expected)

    plain = Seq2SeqTrainer(model=model, args=Seq2SeqTrainingArguments(**arguments))
    predictions = plain.predict(rows).predictions  # the logits and the encoder output, as for Marian
    assert [(type(array), array.shape) for array in predictions] == [(np.ndarray, (4, 6, 99)), (np.ndarray, (4, 9, 32))]
