"""posformer-export: a tiny real run exported as-is or averaged, the card filled from the run, upload, bad input."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import HfApi
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from conftest import FAST_RUN, TINY_RUN, toy_data_arguments
from posformer.training.checkpoint_averaging import average_checkpoints
from posformer.training.export_cli import NOT_SCORED, cli, export_run
from posformer.training.train import main

TINY_MODEL, FAST = TINY_RUN, FAST_RUN
EXPORTED = {"model.safetensors", "config.json", "generation_config.json", "README.md", "tokenizer.json"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4, whose model/ is the mean of both."""
    root = tmp_path_factory.mktemp("run")
    files = toy_data_arguments(root)
    out = root / "run"
    main([*TINY_MODEL, *FAST, *files, "--output_dir", str(out), "--max_steps", "4", "--save_steps", "2",
          "--eval_steps", "100", "--average_last_checkpoints", "2"])  # fmt: skip
    return out


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the run for tests that damage it."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def logits(model_dir: Path, state: dict | None = None) -> torch.Tensor:
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()
    if state is not None:
        model.load_state_dict(state, strict=False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer(["open the file", "save folder"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**encoded, decoder_input_ids=torch.tensor([[1, 5, 6], [1, 7, 8]])).logits


def front_matter(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    return yaml.safe_load(text[4 : text.index("\n---\n", 4)])


def bleu(metadata: dict) -> float:
    return metadata["model-index"][0]["results"][0]["metrics"][0]["value"]


def test_export_of_the_final_model_loads_with_equal_logits_and_the_runs_card(run_dir, tmp_path):
    out = export_run(run_dir, tmp_path / "export")
    assert EXPORTED <= {path.name for path in out.iterdir()}
    assert torch.equal(logits(out), logits(run_dir / "model"))
    metadata = front_matter(out / "README.md")
    results = json.loads((run_dir / "results.json").read_text())
    assert metadata["pipeline_tag"] == "translation" and bleu(metadata) == results["test_bleu"]
    readme, original = (out / "README.md").read_text(), (run_dir / "model" / "README.md").read_text()
    assert readme == original.replace(str(run_dir / "model"), str(out))  # only the loading example changes


def test_average_of_the_last_two_checkpoints_keeps_the_scores_of_the_same_weights(run_dir, tmp_path):
    cli([str(run_dir), str(tmp_path / "export"), "--average_last", "2"])
    kept = sorted((run_dir / "checkpoints").iterdir(), key=lambda path: int(path.name.split("-")[1]))
    expected = logits(run_dir / "model", average_checkpoints(kept))
    torch.testing.assert_close(logits(tmp_path / "export"), expected, rtol=0, atol=0)
    assert (
        bleu(front_matter(tmp_path / "export" / "README.md"))
        == json.loads((run_dir / "results.json").read_text())["test_bleu"]
    )


def test_other_weights_get_no_scores(run_dir, tmp_path):
    out = export_run(run_dir, tmp_path / "export", average_last=1)
    expected = logits(run_dir / "model", average_checkpoints([run_dir / "checkpoints" / "checkpoint-4"]))
    torch.testing.assert_close(logits(out), expected, rtol=0, atol=0)
    readme = (out / "README.md").read_text()
    assert "| Checkpoint averaging | none |" in readme and f"BLEU: `{NOT_SCORED}`" in readme
    assert math.isnan(bleu(front_matter(out / "README.md")))  # a YAML float, not the string "NaN"


def test_push_to_hub_creates_the_repository_and_uploads_the_export(run_dir, tmp_path, monkeypatch):
    remote, calls = tmp_path / "remote", []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, remote / repo_id)
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "export"
    cli([str(run_dir), str(out), "--push_to_hub", "posformer/tiny", "--private", "--token", "hf_fake"])
    assert calls[0] == ("create_repo", "posformer/tiny", {"private": True, "exist_ok": True})
    assert calls[1][:2] == ("upload_folder", "posformer/tiny")
    uploaded = {
        path.relative_to(remote / "posformer/tiny"): path.read_bytes()
        for path in (remote / "posformer/tiny").rglob("*")
    }
    assert uploaded == {path.relative_to(out): path.read_bytes() for path in out.rglob("*")}
    assert 'from_pretrained("posformer/tiny")' in (out / "README.md").read_text()


def test_private_needs_push_to_hub(run_dir, tmp_path):
    with pytest.raises(ValueError, match="--private only applies with --push_to_hub"):
        export_run(run_dir, tmp_path / "export", private=True)


def test_missing_run_dir(tmp_path):
    with pytest.raises(ValueError, match=r"RUN_DIR \S+nowhere does not exist; pass the --output_dir"):
        export_run(tmp_path / "nowhere", tmp_path / "export")


def test_run_without_model_or_checkpoints(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match=r"model.safetensors does not exist.*holds 0 complete ones"):
        export_run(tmp_path / "run", tmp_path / "export")


def test_fewer_checkpoints_than_asked(run_dir, tmp_path):
    with pytest.raises(ValueError, match=r"--average_last 3 needs 3 checkpoints.*holds 2 .*checkpoint-2, checkpoint-4"):
        export_run(run_dir, tmp_path / "export", average_last=3)
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("damaged", ["checkpoints/checkpoint-2/model.safetensors", "model/model.safetensors"])
def test_truncated_weights_are_named(run_dir, tmp_path, damaged):
    run = copy_run(run_dir, tmp_path)
    weights = run / damaged
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises((ValueError, OSError), match=rf"{weights}.*truncated or corrupt"):
        export_run(run, tmp_path / "export", average_last=2)
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "inside", ["checkpoints/export", "checkpoints/checkpoint-4", "model", "tokenizer/x", ".", ".."]
)
def test_out_dir_must_not_replace_the_run_or_its_inputs(run_dir, tmp_path, inside):
    run = copy_run(run_dir, tmp_path)
    with pytest.raises(ValueError, match="inside the run's|holds it"):
        export_run(run, run / inside)
    assert sorted(path.name for path in run.iterdir()) == sorted(path.name for path in run_dir.iterdir())


def test_non_empty_out_dir_needs_overwrite(run_dir, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        export_run(run_dir, out)
    export_run(run_dir, out, overwrite_output_dir=True)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()


def test_cli_reports_a_user_error_without_a_traceback(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "posformer.training.export_cli", str(tmp_path / "nowhere"), str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    assert "posformer-export: error:" in completed.stderr and "does not exist" in completed.stderr
