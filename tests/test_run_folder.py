"""A run folder loses nothing and says what it does: no silent overwrite, no resume as another run, no training
lost to a failing evaluation, damaged state files and stray folders named, a metrics log that stays one run's."""

import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import FAST_RUN, TINY_RUN, toy_data_arguments, write_jsonl
from posformer.training.arguments import parse_args
from posformer.training.loop import TrainingRun
from posformer.training.run_folder import STATE_FILE, checkpoints, read_metrics
from posformer.training.train import main

RUN = [*TINY_RUN, *FAST_RUN, "--eval_steps", "100"]


@pytest.fixture()
def data(tmp_path) -> list[str]:
    return toy_data_arguments(tmp_path)


def steps_logged(run_dir: Path) -> list[int]:
    return [record["step"] for record in read_metrics(run_dir / "metrics.jsonl") if "train_loss" in record]


def test_a_finished_run_is_not_overwritten_without_overwrite_output_dir(tmp_path, data):
    out = tmp_path / "run"
    main([*RUN, *data, "--output_dir", str(out), "--max_steps", "2"])
    results = (out / "results.json").read_text()
    with pytest.raises(ValueError, match=r"already holds a run: a finished run .*--overwrite_output_dir"):
        main([*RUN, *data, "--output_dir", str(out), "--max_steps", "3"])
    assert (out / "results.json").read_text() == results and steps_logged(out) == [1, 2]
    main([*RUN, *data, "--output_dir", str(out), "--max_steps", "3", "--overwrite_output_dir", "--save_steps", "3"])
    assert steps_logged(out) == [1, 2, 3]  # the new run's log only
    assert [path.name for path in checkpoints(out)] == ["checkpoint-3"]


def test_an_attempt_that_saved_no_checkpoint_is_started_over_with_a_warning(tmp_path, data, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 7, "train_loss": 1.0}) + "\n")
    (out / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="posformer"):
        main([*RUN, *data, "--output_dir", str(out), "--max_steps", "2"])
    assert "metrics.jsonl of an earlier attempt that saved no checkpoint" in caplog.text
    assert steps_logged(out) == [1, 2] and (out / "notes.txt").read_text() == "mine"


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, data):
    (tmp_path / "run").write_text("")
    with pytest.raises(ValueError, match=r"--output_dir .*run is a file, not a folder; pass a folder"):
        main([*RUN, *data, "--output_dir", str(tmp_path / "run"), "--max_steps", "2"])


@pytest.fixture(scope="module")
def interrupted_once(tmp_path_factory) -> tuple[list[str], Path]:
    folder = tmp_path_factory.mktemp("interrupted")
    arguments = [*RUN, *toy_data_arguments(folder), "--save_steps", "2"]
    main([*arguments, "--output_dir", str(folder / "run"), "--max_steps", "4"])
    return arguments, folder / "run"


@pytest.fixture()
def interrupted(interrupted_once, tmp_path) -> tuple[list[str], Path]:
    """A run stopped at step 4 with checkpoints 2 and 4 (a copy of one, for each test)."""
    arguments, original = interrupted_once
    shutil.copytree(original, tmp_path / "run")
    return [*arguments, "--output_dir", str(tmp_path / "run")], tmp_path / "run"


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        (["--position_encoding", "rope"], r"--position_encoding 'sinusoidal' -> 'rope'"),  # no parameter differs
        (
            ["--d_model", "16", "--encoder_attention_heads", "2", "--decoder_attention_heads", "2"],
            r"--d_model 32 -> 16",
        ),  # fmt: skip
        (["--learning_rate", "1e-4"], r"--learning_rate 0.003 -> 0.0001"),  # the optimizer state would ignore it
        (["--label_smoothing", "0.2"], r"--label_smoothing 0.1 -> 0.2"),
        (["--tokenizer_vocab_size", "200"], r"--tokenizer_vocab_size 300 -> 200"),
    ],
    ids=["position-encoding", "model-size", "learning-rate", "label-smoothing", "data"],
)
def test_a_resume_with_other_model_data_or_recipe_arguments_is_refused(interrupted, changed, named):
    arguments, out = interrupted
    with pytest.raises(ValueError, match=rf"Cannot resume from .*checkpoint-4 with other arguments: {named}.*"
                       r"Pass the checkpoint's values"):  # fmt: skip
        main([*arguments, *changed, "--max_steps", "6", "--resume_from_checkpoint"])
    assert [path.name for path in checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]


def test_a_resume_may_change_when_the_run_ends_evaluates_and_saves(interrupted):
    arguments, out = interrupted
    main([*arguments, "--max_steps", "6", "--eval_steps", "3", "--num_beams", "1", "--save_total_limit", "5",
          "--resume_from_checkpoint"])  # fmt: skip
    assert [path.name for path in checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]


def test_a_resume_drops_what_was_logged_after_its_checkpoint(interrupted):
    """Steps 3-4 were logged after checkpoint-2 (and a kill can cut a line in half): resuming from checkpoint-2 logs
    them again, once."""
    arguments, out = interrupted
    with open(out / "metrics.jsonl", "a") as log:
        log.write('{"step": 5, "train_lo')
    main([*arguments, "--max_steps", "4", "--resume_from_checkpoint", str(out / "checkpoints" / "checkpoint-2")])
    assert steps_logged(out) == [1, 2, 3, 4]


def test_a_copied_checkpoint_folder_is_not_taken_for_the_latest(interrupted):
    arguments, out = interrupted
    copy = out / "checkpoints" / "checkpoint-4-backup"
    copy.mkdir()
    (copy / STATE_FILE).write_text("{}")
    assert [path.name for path in checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert main([*arguments, "--max_steps", "5", "--resume_from_checkpoint"])["step"] == 5


@pytest.mark.parametrize("content", ["{not json", "[]", '{"data_order": {}}'], ids=["not-json", "list", "no-step"])
def test_a_damaged_state_file_names_itself_and_an_earlier_checkpoint(interrupted, content):
    arguments, out = interrupted
    (out / "checkpoints" / "checkpoint-4" / STATE_FILE).write_text(content)
    with pytest.raises(ValueError, match=rf"checkpoint-4/{STATE_FILE} is damaged .*--resume_from_checkpoint "
                       rf"{out / 'checkpoints' / 'checkpoint-2'}"):  # fmt: skip
        main([*arguments, "--max_steps", "6", "--resume_from_checkpoint"])


@pytest.mark.parametrize(
    ("folder", "hint"),
    [("run", r"It is a run folder: pass --output_dir .*run --resume_from_checkpoint latest"),
     ("run/model", r"It is a model folder: continue training a model with posformer-finetune")],
    ids=["run-folder", "model-folder"],
)  # fmt: skip
def test_resume_from_a_folder_that_is_not_a_checkpoint_says_what_it_is(interrupted, tmp_path, folder, hint):
    arguments, _ = interrupted
    with pytest.raises(ValueError, match=rf"not a complete checkpoint \(no {STATE_FILE}\)\. {hint}"):
        main([*arguments, "--max_steps", "6", "--resume_from_checkpoint", str(tmp_path / folder)])


@pytest.mark.parametrize("split", ["validation", "test"])
def test_an_evaluation_split_with_no_pair_within_the_limits_is_an_error_before_training(tmp_path, data, split):
    long_pairs = [{"translation": {"en": "file " * 40, "de": "Datei " * 40}}] * 3
    files = dict(zip(data[::2], data[1::2], strict=True))
    files[f"--{split}_file"] = write_jsonl(tmp_path / f"long-{split}.jsonl", long_pairs)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"No {split} pair fits the length limits .*16/16.* --{split}_file"):
        main([*RUN, *[item for pair in files.items() for item in pair], "--output_dir", str(out),
              "--max_source_length", "16", "--max_target_length", "16", "--max_steps", "2"])  # fmt: skip
    assert not (out / "checkpoints").exists()


def test_a_failure_after_training_keeps_the_weights_and_a_resume_finishes_the_run(tmp_path, data, monkeypatch, caplog):
    out = tmp_path / "run"
    arguments = [*RUN, *data, "--output_dir", str(out), "--max_steps", "3", "--save_steps", "100",
                 "--eval_steps", "3"]  # fmt: skip
    original = TrainingRun.evaluate

    def failing_test_split(self, model, split, max_samples):
        if split == "test":
            raise RuntimeError("the metric's server is down")
        return original(self, model, split, max_samples)

    monkeypatch.setattr(TrainingRun, "evaluate", failing_test_split)
    with pytest.raises(RuntimeError, match="server is down"), caplog.at_level(logging.ERROR, logger="posformer"):
        main(arguments)
    assert re.search(r"trained weights are safe in .*checkpoint-3\..*--resume_from_checkpoint latest", caplog.text)
    assert [path.name for path in checkpoints(out)] == ["checkpoint-3"] and not (out / "model").exists()
    monkeypatch.setattr(TrainingRun, "evaluate", original)
    assert main([*arguments, "--resume_from_checkpoint"])["step"] == 3
    assert (out / "model" / "model.safetensors").is_file()


def test_averaging_more_checkpoints_than_the_run_saves_is_refused_before_training():
    with pytest.raises(ValueError, match=r"--average_last_checkpoints 3 .* --max_steps 10 with --save_steps 5 saves 2"):
        parse_args(["--average_last_checkpoints", "3", "--max_steps", "10", "--save_steps", "5"])


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_latest_ends_bit_identical_to_an_uninterrupted_run(tmp_path, data):
    """SIGKILL leaves no chance to clean up: a half-written checkpoint (`.checkpoint-N.partial`), a half-written
    metrics line. Killed twice, at a checkpoint and between two, the resumed run still ends with the same weights
    and the same logged losses as one that ran straight through."""
    arguments = [*RUN, *data, "--max_steps", "12", "--save_steps", "3", "--dropout", "0.1"]
    main([*arguments, "--output_dir", str(tmp_path / "straight")])
    out = tmp_path / "killed"
    for wait_for, resume in (("checkpoint-3", []), ("checkpoint-6", ["--resume_from_checkpoint", "latest"])):
        command = [sys.executable, "-m", "posformer.training", *arguments, "--output_dir", str(out), *resume]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (out / "checkpoints" / wait_for).is_dir() and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
    main([*arguments, "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    for name in ("straight", "killed"):
        assert steps_logged(tmp_path / name) == list(range(1, 13)), name
    losses = [
        [record["train_loss"] for record in read_metrics(tmp_path / name / "metrics.jsonl") if "train_loss" in record]
        for name in ("straight", "killed")
    ]
    assert losses[0] == losses[1]
    expected = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    actual = load_file(out / "model" / "model.safetensors")
    assert expected.keys() == actual.keys() and all(torch.equal(expected[k], actual[k]) for k in expected)
