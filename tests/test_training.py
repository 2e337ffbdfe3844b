"""The training job end to end at tiny sizes: export that loads, exact resume, two processes, bad input."""

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from conftest import FAST_RUN, TINY_RUN, free_port, toy_data_arguments, toy_pairs, write_jsonl
from posformer.training.export_cli import export_run
from posformer.training.loop import TrainingDivergedError, TrainingStoppedError
from posformer.training.plots import LOSS_SERIES, SCORE_SERIES
from posformer.training.run_folder import checkpoints
from posformer.training.train import main

TINY_MODEL, FAST = TINY_RUN, FAST_RUN


@pytest.fixture()
def toy_files(tmp_path) -> list[str]:
    return toy_data_arguments(tmp_path)


def losses(output_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return {record["step"]: record["train_loss"] for record in records if "train_loss" in record}


def test_tiny_run_on_the_builtin_corpus_exports_a_model_that_loads_and_translates(tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="posformer"):
        results = main(
            [*TINY_MODEL, *FAST, "--output_dir", str(out), "--max_train_samples", "2000", "--max_steps", "12",
             "--eval_steps", "6", "--save_steps", "6", "--position_encoding", "alibi"]
        )  # fmt: skip
    printed = caplog.text
    assert "Test BLEU" in printed and "translation:" in printed
    assert 0 <= results["test_bleu"] <= 100 and results["test_chrf"] > 0 and len(results["samples"]) == 2
    model_dir = out / "model"
    for name in ("model.safetensors", "config.json", "generation_config.json", "README.md", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.position_encoding == "alibi" and model.generation_config.num_beams == 4
    encoded = tokenizer(["Open the file.", "Save all"], padding=True, return_tensors="pt")
    generated = model.generate(**encoded, max_new_tokens=8)
    assert len(tokenizer.batch_decode(generated, skip_special_tokens=True)) == 2
    assert (out / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evaluations = [record for record in records if "eval_loss" in record]
    assert [record["step"] for record in evaluations] == [6, 12]
    for record in evaluations:  # every series the plot draws is in the log
        assert set(LOSS_SERIES) | set(SCORE_SERIES) <= set(record) | {"train_loss"}
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-6"]
    steps = losses(out)
    assert sorted(steps) == list(range(1, 13)) and all(torch.isfinite(torch.tensor(list(steps.values()))))


def test_resume_continues_exactly(tmp_path, toy_files, caplog):
    common = [*TINY_MODEL, *FAST, *toy_files, "--max_steps", "8", "--save_steps", "4", "--eval_steps", "100",
              "--dropout", "0.1", "--gradient_accumulation_steps", "2", "--max_tokens", "128"]  # fmt: skip
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    main([*common, "--output_dir", str(straight)])
    main([*common, "--output_dir", str(interrupted), "--max_steps", "4"])
    with pytest.raises(ValueError, match="already holds a run.*--resume_from_checkpoint latest"):
        main([*common, "--output_dir", str(interrupted)])
    with caplog.at_level(logging.WARNING, logger="posformer"):
        main([*common, "--output_dir", str(interrupted), "--resume_from_checkpoint"])  # no value: the latest
    assert not [record for record in caplog.records if "another data order" in record.getMessage()]
    assert losses(interrupted) == pytest.approx(losses(straight), rel=0, abs=0)
    expected = load_file(straight / "checkpoints" / "checkpoint-8" / "model.safetensors")
    actual = load_file(interrupted / "checkpoints" / "checkpoint-8" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_resuming_with_another_batch_size_warns_that_the_data_order_changes(tmp_path, toy_files, caplog):
    common = [*TINY_MODEL, *FAST, *toy_files, "--save_steps", "2", "--eval_steps", "100"]
    out = tmp_path / "run"
    main([*common, "--output_dir", str(out), "--max_steps", "2", "--max_tokens", "128"])
    with caplog.at_level(logging.WARNING, logger="posformer"):
        main([*common, "--output_dir", str(out), "--max_steps", "3", "--max_tokens", "256", "--resume_from_checkpoint"])
    warned = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(re.search(r"another data order \(max_tokens 128 -> 256\).* after step 2 are not", m) for m in warned)
    assert sorted(losses(out)) == [1, 2, 3]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, toy_files):
    """Two gloo processes with one batch each equal one process accumulating two batches (dropout off,
    so both see the same computation; only the order of float reductions differs: tolerance 1e-5)."""
    common = [*TINY_MODEL, *FAST, *toy_files, "--max_steps", "6", "--save_steps", "100", "--eval_steps", "100",
              "--dropout", "0", "--max_tokens", "128"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    main([*common, "--output_dir", str(one), "--gradient_accumulation_steps", "2"])
    # `accelerate launch --cpu` starts one process; data parallelism on CPUs (gloo) is asked for like this:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--main_process_port", str(free_port()),
         "-m", "posformer.training", *common, "--output_dir", str(two)],
        check=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert sorted(losses(two)) == list(range(1, 7))
    assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    expected, actual = (load_file(run / "model" / "model.safetensors") for run in (one, two))
    for name in expected:
        if name.endswith("k_proj.bias"):
            # softmax ignores a bias added to every key: its true gradient is zero, so Adam turns float noise
            # (which differs with the reduction order) into full-size steps
            continue
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


def launch_fsdp_on_cpu(arguments: list[str], cwd: Path, *options: str) -> subprocess.CompletedProcess:
    """`accelerate launch` two gloo processes under FSDP2 (see `fsdp_on_cpu.py` for why a launcher is needed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--use_fsdp",
         "--main_process_port", str(free_port()),
         "--fsdp_version", "2", *options, str(Path(__file__).with_name("fsdp_on_cpu.py")), *arguments],
        env=env, cwd=cwd, capture_output=True, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_fsdp_matches_one_process_resumes_exactly_and_averages_its_sharded_checkpoints(tmp_path, toy_files):
    """FSDP2 over two processes accumulating two batches each, one unit per layer (`_no_split_modules`), the tied
    embeddings and T5's bias tables (computed once per stack) outside them, computes what one process accumulating
    the same four batches computes; its
    sharded checkpoints resume exactly and average into the exported model; evaluation and export run on weights
    gathered from the shards."""
    common = [*TINY_MODEL, *FAST, *toy_files, "--max_steps", "6", "--save_steps", "3", "--eval_steps", "3",
              "--dropout", "0", "--max_tokens", "128", "--average_last_checkpoints", "2",
              "--gradient_accumulation_steps", "2", "--position_encoding", "t5"]  # fmt: skip
    one, fsdp, resumed = tmp_path / "one", tmp_path / "fsdp", tmp_path / "resumed"
    reference = main([*common, "--output_dir", str(one), "--gradient_accumulation_steps", "4"])
    first_half = [*common, "--output_dir", str(resumed), "--max_steps", "3", "--average_last_checkpoints", "1"]
    for arguments in ([*common, "--output_dir", str(fsdp)], first_half,
                      [*common, "--output_dir", str(resumed), "--resume_from_checkpoint"]):  # fmt: skip
        run = launch_fsdp_on_cpu(arguments, tmp_path, "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP")
        assert run.returncode == 0, run.stderr[-3000:]
    checkpoint = fsdp / "checkpoints" / "checkpoint-6"
    assert (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file()  # FSDP really ran: its own layout
    assert not (checkpoint / "model.safetensors").exists()
    assert losses(fsdp) == pytest.approx(losses(one), rel=1e-5)
    results = json.loads((fsdp / "results.json").read_text())
    assert results["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-5)
    assert results["averaged_checkpoints"] == 2
    expected, actual = (load_file(run / "model" / "model.safetensors") for run in (one, fsdp))
    assert expected.keys() == actual.keys()
    for name in expected:
        if not name.endswith("k_proj.bias"):  # see test_two_processes_match_one_process_with_the_same_global_batch
            torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    assert losses(resumed) == pytest.approx(losses(fsdp), rel=0, abs=0)
    for name, tensor in load_file(resumed / "model" / "model.safetensors").items():
        assert torch.equal(tensor, actual[name]), name
    exported = export_run(fsdp, tmp_path / "export", average_last=2)  # `posformer-export` joins the shards too
    for name, tensor in load_file(exported / "model.safetensors").items():
        assert torch.equal(tensor, actual[name]), name
    translator = AutoModelForSeq2SeqLM.from_pretrained(fsdp / "model")
    tokenizer = AutoTokenizer.from_pretrained(fsdp / "model")
    generated = translator.generate(**tokenizer(["Open the file."], return_tensors="pt"), max_new_tokens=4)
    assert generated.shape[0] == 1


@pytest.mark.slow
def test_fsdp_bf16_logs_float32_losses_that_follow_the_float32_run(tmp_path, toy_files):
    """Accelerate's FSDP2 bf16 policy computes in bf16 and casts the model's outputs to bf16; the loop takes the
    loss from the logits itself, so the logged losses keep float32 resolution and stay near those of one float32
    process with the same batches. A loss returned by the model would reach the loop in bf16: each process's
    share (between 1 and 4 here) on bf16's grid of 1/128 or coarser, and so their sum."""
    common = [*TINY_MODEL, *FAST, *toy_files, "--max_steps", "4", "--save_steps", "100", "--eval_steps", "100",
              "--dropout", "0", "--max_tokens", "128"]  # fmt: skip
    main([*common, "--output_dir", str(tmp_path / "fp32"), "--gradient_accumulation_steps", "2"])
    run = launch_fsdp_on_cpu([*common, "--output_dir", str(tmp_path / "bf16")], tmp_path, "--mixed_precision", "bf16")
    assert run.returncode == 0, run.stderr[-3000:]
    full, half = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert half == pytest.approx(full, rel=2e-2) and half != pytest.approx(full, rel=1e-5)  # bf16 did compute
    assert any((loss * 128) % 1 for loss in half.values())


@pytest.mark.slow
def test_fsdp_full_state_dict_checkpoints_that_could_not_resume_are_refused_before_training(tmp_path, toy_files):
    out = tmp_path / "run"
    arguments = [*TINY_MODEL, *FAST, *toy_files, "--max_steps", "2", "--output_dir", str(out)]
    run = launch_fsdp_on_cpu(arguments, tmp_path, "--fsdp_state_dict_type", "FULL_STATE_DICT")
    assert run.returncode != 0
    assert "FULL_STATE_DICT saves checkpoints that cannot be resumed" in run.stderr
    assert "SHARDED_STATE_DICT" in run.stderr
    assert not (out / "checkpoints").exists() and not (out / "model").exists()


def test_a_step_the_fp16_loss_scaler_skips_does_not_advance_the_schedule(tmp_path, toy_files, monkeypatch):
    """Under fp16 Accelerate's scaler skips an optimizer step whose gradients overflowed; the warmup then waits
    for a real step (as transformers' Trainer does). Step 2 is reported skipped here."""
    from accelerate import Accelerator

    calls = {"n": 0}

    def skipped(self) -> bool:
        calls["n"] += 1
        return calls["n"] == 2

    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(skipped))
    out = tmp_path / "run"
    main([*TINY_MODEL, *FAST, *toy_files, "--output_dir", str(out), "--max_steps", "4", "--eval_steps", "100",
          "--warmup_steps", "10", "--learning_rate", "1e-3"])  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [record["learning_rate"] for record in records if "learning_rate" in record]
    assert rates == pytest.approx([1e-4, 1e-4, 2e-4, 3e-4])  # linear warmup of 10 steps, step 2 not counted


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.bin", "random_states_0.pkl"])
def test_resuming_from_a_damaged_checkpoint_names_it_and_an_intact_earlier_one(tmp_path, toy_files, damaged):
    common = [*TINY_MODEL, *FAST, *toy_files, "--save_steps", "2", "--eval_steps", "100"]
    out = tmp_path / "run"
    main([*common, "--output_dir", str(out), "--max_steps", "4"])
    file = out / "checkpoints" / "checkpoint-4" / damaged
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"Cannot resume from .*checkpoint-4: .*The checkpoint is damaged") as error:
        main([*common, "--output_dir", str(out), "--max_steps", "6", "--resume_from_checkpoint"])
    assert f"--resume_from_checkpoint {out / 'checkpoints' / 'checkpoint-2'}" in str(error.value)
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    main([*common, "--output_dir", str(out), "--max_steps", "6", "--resume_from_checkpoint",
          str(out / "checkpoints" / "checkpoint-2")])  # fmt: skip
    assert sorted(losses(out)) == list(range(1, 7))  # steps 3-4 again from checkpoint-2, which replaced the damaged
    assert [path.name for path in checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    main([*common, "--output_dir", str(out), "--max_steps", "8", "--resume_from_checkpoint"])  # latest: intact again


def test_sigterm_saves_the_last_step_and_the_run_resumes_exactly(tmp_path, toy_files, monkeypatch):
    """A scheduler's SIGTERM during step 3 lets the step finish, saves checkpoint-3 and stops; resuming gives the
    losses and weights of the uninterrupted run. The previous SIGTERM handler comes back."""
    from posformer.modeling import PosformerForConditionalGeneration

    common = [*TINY_MODEL, *FAST, *toy_files, "--max_steps", "6", "--save_steps", "100", "--eval_steps", "100",
              "--dropout", "0.1"]  # fmt: skip
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    main([*common, "--output_dir", str(straight)])
    original, calls = PosformerForConditionalGeneration.forward, {"n": 0}

    def forward(self, *args, **kwargs):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PosformerForConditionalGeneration, "forward", forward)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStoppedError, match=r"SIGTERM received: the run stopped after step 3, .*checkpoint-3"):
        main([*common, "--output_dir", str(interrupted)])
    assert signal.getsignal(signal.SIGTERM) is before
    assert [path.name for path in checkpoints(interrupted)] == ["checkpoint-3"] and not (interrupted / "model").exists()
    monkeypatch.undo()
    main([*common, "--output_dir", str(interrupted), "--resume_from_checkpoint"])
    assert losses(interrupted) == pytest.approx(losses(straight), rel=0, abs=0)
    expected, actual = (load_file(run / "model" / "model.safetensors") for run in (straight, interrupted))
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


@pytest.mark.slow
def test_sigterm_to_accelerate_launch_stops_every_process_after_a_checkpoint(tmp_path, toy_files):
    """`accelerate launch` (torchrun) forwards SIGTERM to its processes, which agree to stop at the same step."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    launch = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--main_process_port", str(free_port()),
         "-m", "posformer.training", *TINY_MODEL, *FAST, *toy_files, "--output_dir", str(out),
         "--max_steps", "100000", "--save_steps", "100000", "--eval_steps", "100000"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics, waited = out / "metrics.jsonl", 0.0
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3) and waited < 120:
        assert launch.poll() is None, launch.communicate()[1][-3000:]
        time.sleep(0.2)
        waited += 0.2
    launch.send_signal(signal.SIGTERM)
    _, stderr = launch.communicate(timeout=120)
    assert "SIGTERM received: the run stopped after step" in stderr, stderr[-3000:]
    (checkpoint,) = checkpoints(out)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == max(losses(out))
    assert not (out / "model").exists()


def test_nan_loss_stops_with_the_step_and_last_checkpoint(tmp_path, toy_files, monkeypatch):
    from posformer.modeling import PosformerForConditionalGeneration

    original = PosformerForConditionalGeneration.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                out.loss = out.loss * float("nan")  # the loss of this step becomes NaN
        return out

    monkeypatch.setattr(PosformerForConditionalGeneration, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"nan at step 5.*checkpoint-4"):
        main([*TINY_MODEL, *FAST, *toy_files, "--output_dir", str(out), "--max_steps", "8", "--save_steps", "4",
              "--eval_steps", "100"])  # fmt: skip
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-4"]
    assert not (out / "model").exists()


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        ([{"english": "a", "german": "b"}], [], r"columns \['english', 'german'\].*`translation` column"),
        ([{"translation": {"en": "a", "fr": "b"}}], [], r"languages \['en', 'fr'\], not \['de'\]"),
        ([{"en": "a", "de": "b"}], ["--target_lang", "es"], r"two text columns named 'en' and 'es'"),
        ([], [], r"The train split is empty"),
        (None, ["--max_tokens", "3"], r"--max_tokens 3 is smaller than the longest training pair"),
        (
            None,
            ["--position_encoding", "learned", "--max_position_embeddings", "64"],
            r"max_position_embeddings=64 positions, but .* 128 tokens\. Raise --max_position_embeddings",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, toy_files, rows, extra, message):
    files = list(toy_files)
    if rows is not None:
        files[1] = write_jsonl(tmp_path / "bad.jsonl", rows)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        main([*TINY_MODEL, *FAST, *files, *extra, "--output_dir", str(out), "--max_steps", "2"])
    assert not (out / "checkpoints").exists() and not (out / "model").exists()


def test_mixed_precision_comes_from_accelerate(tmp_path, toy_files, monkeypatch):
    """`accelerate launch --mixed_precision bf16` sets this variable; the forward then runs under bf16 autocast."""
    from accelerate.state import AcceleratorState

    from posformer.modeling import PosformerForConditionalGeneration

    dtypes = []
    original = PosformerForConditionalGeneration.forward

    def recording(self, *args, **kwargs):
        if self.training:
            dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PosformerForConditionalGeneration, "forward", recording)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        main([*TINY_MODEL, *FAST, *toy_files, "--output_dir", str(tmp_path / "run"), "--max_steps", "3"])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(torch.isfinite(torch.tensor(list(losses(tmp_path / "run").values()))))


def test_an_accelerate_dynamo_backend_compiles_training_and_exports_the_plain_model(tmp_path, toy_files, monkeypatch):
    """`accelerate launch --dynamo_backend ...` compiles the model with `torch.compile`: training computes the same
    losses (the `eager` backend runs the captured graphs as they are), while evaluation and export use the model
    itself (before the fix, export refused the `OptimizedModule`)."""
    from accelerate.state import AcceleratorState

    backends = []
    compile_model = torch.compile

    def recording_compile(model, *args, **kwargs):
        backends.append(kwargs.get("backend"))
        return compile_model(model, *args, **kwargs)

    common = [*TINY_MODEL, *FAST, *toy_files, "--max_steps", "3", "--eval_steps", "3", "--dropout", "0"]
    reference = main([*common, "--output_dir", str(tmp_path / "plain")])
    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        results = main([*common, "--output_dir", str(tmp_path / "compiled")])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert backends == ["eager"]
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "plain"), rel=1e-6)
    assert results["test_loss"] == pytest.approx(reference["test_loss"], rel=1e-6)
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "compiled" / "model").config.position_encoding


def test_dataset_name_loads_a_dataset_repository(tmp_path):
    """`--dataset_name` goes through `datasets.load_dataset(name, config)`; a dataset repository laid out as
    on the Hub (split-named files) stands in for one here, with two text columns instead of `translation`."""
    repository = tmp_path / "acme-toy-mt"
    repository.mkdir()
    for split, (count, offset) in {"train": (200, 0), "validation": (10, 500), "test": (10, 900)}.items():
        rows = [row["translation"] for row in toy_pairs(count, offset)]
        write_jsonl(repository / f"{split}.jsonl", rows)
    out = tmp_path / "run"
    results = main([*TINY_MODEL, *FAST, "--dataset_name", str(repository), "--output_dir", str(out),
                    "--max_steps", "2", "--max_tokens", "128"])  # fmt: skip
    assert results["step"] == 2 and "test_bleu" in results
    card = (out / "model" / "README.md").read_text()
    assert str(repository) in card and "200 train" in card


def cache_hub_dataset(cache: Path, repo_id: str, config_name: str, splits: dict[str, list[dict]]) -> None:
    """Leave in the datasets cache `cache` what `load_dataset(repo_id, config_name)` leaves after a download from
    the Hub of a parquet dataset (the layout of wmt/wmt14): `namespace___name/config/0.0.0/<hash>/` with the Arrow
    splits and `dataset_info.json`, written by the same Parquet builder."""
    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, name = repo_id.split("/")
    files = cache.parent / f"{name}-parquet"
    files.mkdir()
    for split, rows in splits.items():
        Dataset.from_list(rows).to_parquet(files / f"{split}-00000-of-00001.parquet")
    data_files = {split: str(files / f"{split}-00000-of-00001.parquet") for split in splits}
    builder = Parquet(cache_dir=str(cache / "staging"), dataset_name=name, config_name=config_name,
                      data_files=data_files, hash="0" * 40)  # fmt: skip
    builder.download_and_prepare()
    # a Hub load names the config folder plainly (its data files come from the repository card)
    (cache / "staging" / name / builder.config_id).rename(cache / "staging" / name / config_name)
    (cache / "staging" / name).rename(cache / f"{namespace}___{name}")


def test_dataset_name_loads_a_hub_dataset_from_the_cache_offline(tmp_path):
    """`--dataset_name wmt/wmt14 --dataset_config_name de-en` on a machine without network (HF_HUB_OFFLINE=1)
    trains from the datasets cache that an earlier download left, `translation` column and all."""
    cache = tmp_path / "datasets-cache"
    splits = {"train": toy_pairs(200), "validation": toy_pairs(10, 500), "test": toy_pairs(10, 900)}
    cache_hub_dataset(cache, "wmt/wmt14", "de-en", splits)
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "posformer.training", *TINY_MODEL, *FAST, "--dataset_name", "wmt/wmt14",
         "--dataset_config_name", "de-en", "--output_dir", str(out), "--max_steps", "2", "--max_tokens", "128"],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["step"] == 2 and "test_bleu" in results
    card = (out / "model" / "README.md").read_text()
    assert "wmt/wmt14 de-en" in card and "200 train, 10 validation, 10 test" in card


def test_evaluation_loss_covers_the_whole_split_whatever_the_translated_sample(tmp_path, toy_files):
    """`--max_eval_samples`/`--max_test_samples` bound the translated pairs, not the loss (10 pairs per split)."""
    results, evaluations = [], []
    for translated in ("3", "10"):
        torch.manual_seed(0)
        out = tmp_path / f"translated-{translated}"
        results.append(main([
            *TINY_MODEL, *FAST, *toy_files, "--output_dir", str(out), "--max_steps", "2", "--eval_steps", "2",
            "--save_steps", "2", "--max_eval_samples", translated, "--max_test_samples", translated,
        ]))  # fmt: skip
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evaluations.append(next(record for record in records if "eval_loss" in record))
    assert evaluations[0]["eval_loss"] == evaluations[1]["eval_loss"]
    assert results[0]["test_loss"] == results[1]["test_loss"]


def test_pairs_longer_than_a_learned_table_are_evaluated_without_failing(tmp_path, toy_files):
    """A validation/test pair past `max_position_embeddings`: left out of the loss, truncated for translation."""
    long_pair = {"translation": {"en": " ".join(["file"] * 30), "de": " ".join(["Datei"] * 30)}}
    for split, offset in (("validation", 500), ("test", 900)):
        write_jsonl(tmp_path / f"{split}.jsonl", [long_pair, *toy_pairs(10, offset)])
    results = main([
        *TINY_MODEL, *FAST, *toy_files, "--output_dir", str(tmp_path / "run"), "--max_steps", "2",
        "--eval_steps", "2", "--save_steps", "2", "--position_encoding", "learned",
        "--max_position_embeddings", "12", "--max_source_length", "10", "--max_target_length", "10",
    ])  # fmt: skip
    assert torch.isfinite(torch.tensor(results["test_loss"])) and 0 <= results["test_bleu"] <= 100
