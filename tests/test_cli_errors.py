"""Bad paths and files given to the command-line tools: each is a clear error, found before any model loads,
that names the argument (or file) and the fix.

posformer-attention and posformer-finetune are called in-process (`cli(argv)`, `main(argv)`) with loading
forbidden, posformer-export through `export_run`, posformer-train's `--config` through `parse_args`.
"""

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants

from conftest import FAST_RUN, TINY_RUN, toy_data_arguments
from posformer.training import attention_maps, finetune
from posformer.training.arguments import parse_args
from posformer.training.export_cli import export_run
from posformer.training.run_folder import model_source
from posformer.training.train import main as train

DAMAGED = r"the run folder is damaged\. Re-run the end of the run.*posformer-train command .* --resume_from_checkpoint"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 2-step posformer-train run; its `model/` is a model folder with its tokenizer."""
    root = tmp_path_factory.mktemp("cli_errors")
    train([*TINY_RUN, *FAST_RUN, *toy_data_arguments(root), "--output_dir", str(root / "run"), "--max_steps", "2",
           "--save_steps", "2", "--eval_steps", "100"])  # fmt: skip
    return root / "run"


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a CLI loads a model or tokenizer: its arguments must be checked before."""

    def forbidden(*args, **kwargs):
        pytest.fail("a model or tokenizer was loaded before the arguments were checked")

    for module in (attention_maps, finetune):
        monkeypatch.setattr(module.AutoTokenizer, "from_pretrained", forbidden)
        monkeypatch.setattr(module.AutoModelForSeq2SeqLM, "from_pretrained", forbidden)


def model_without_tokenizer(run_dir: Path, tmp_path: Path) -> Path:
    model = Path(shutil.copytree(run_dir / "model", tmp_path / "bare"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model / name).unlink(missing_ok=True)
    return model


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a folder")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Model paths: posformer-attention's checkpoint, posformer-finetune's --model_name_or_path
# ---------------------------------------------------------------------------------------------------------------

MODEL_PATHS = {
    # id: (the path given, built from the run folder and tmp_path), error, message
    "missing": (lambda run, tmp: tmp / "runs" / "model", FileNotFoundError, r"{option} \S+: no such folder"),
    "run folder": (lambda run, tmp: run, ValueError, r"{option} \S+ is a posformer-train run folder.*pass its model"),
    "file": (lambda run, tmp: a_file(tmp), ValueError, r"{option} \S+ is a file; pass a model folder"),
    "no config": (lambda run, tmp: run / "checkpoints", FileNotFoundError, r"{option} \S+ holds no config.json"),
    "checkpoint": (
        lambda run, tmp: run / "checkpoints" / "checkpoint-2",
        ValueError,
        r"{option} \S+ is a training checkpoint, not a model: pass the run's model/, or export .*--average_last 1",
    ),
    "no tokenizer": (
        model_without_tokenizer,
        FileNotFoundError,
        r"{option} \S+ holds a model but no tokenizer.*tokenizer.save_pretrained",
    ),
}


@pytest.mark.parametrize(("make_path", "error", "message"), MODEL_PATHS.values(), ids=MODEL_PATHS.keys())
def test_attention_names_a_bad_checkpoint(run_dir, tmp_path, no_loading, make_path, error, message):
    path = make_path(run_dir, tmp_path)
    with pytest.raises(error, match=message.format(option="checkpoint")):
        attention_maps.cli([str(path), "Open the file.", "--out", str(tmp_path / "maps.png")])


@pytest.mark.parametrize(("make_path", "error", "message"), MODEL_PATHS.values(), ids=MODEL_PATHS.keys())
def test_finetune_names_a_bad_model(run_dir, tmp_path, no_loading, make_path, error, message):
    path = make_path(run_dir, tmp_path)
    with pytest.raises(error, match=message.format(option="--model_name_or_path")):
        finetune.main(["--model_name_or_path", str(path), "--output_dir", str(tmp_path / "out"), "--report_to", "none"])


# ---------------------------------------------------------------------------------------------------------------
# Output paths and other arguments of posformer-attention and posformer-finetune
# ---------------------------------------------------------------------------------------------------------------

ATTENTION_ARGUMENTS = {
    "out is a folder": (lambda tmp: ["--out", str(tmp)], r"--out \S+ is a folder; name the file.*attention.png"),
    "out under a file": (
        lambda tmp: ["--out", str(a_file(tmp) / "maps.png")],
        r"--out \S+ lies under \S+notes.txt, which is a file",
    ),
    "no new tokens": (
        lambda tmp: ["--out", str(tmp / "maps.png"), "--max_new_tokens", "0"],
        r"--max_new_tokens must be at least 1, got 0",
    ),
}


@pytest.mark.parametrize(("arguments", "message"), ATTENTION_ARGUMENTS.values(), ids=ATTENTION_ARGUMENTS.keys())
def test_attention_names_a_bad_argument(run_dir, tmp_path, no_loading, arguments, message):
    with pytest.raises(ValueError, match=message):
        attention_maps.cli([str(run_dir / "model"), "Open the file.", *arguments(tmp_path)])


def an_earlier_run(tmp_path: Path) -> Path:
    """A fine-tuning output folder as the Trainer leaves it: checkpoints and trainer_state.json."""
    out = tmp_path / "finetuned"
    for folder in (out / "checkpoint-10", out / "checkpoint-20"):
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
    (out / "trainer_state.json").write_text("{}")
    return out


FINETUNE_ARGUMENTS = {
    "output_dir is a file": (
        lambda tmp: ["--output_dir", str(a_file(tmp))],
        r"--output_dir \S+notes.txt is a file, not a folder",
    ),
    "output_dir under a file": (
        lambda tmp: ["--output_dir", str(a_file(tmp) / "out")],
        r"--output_dir \S+ lies under \S+notes.txt, which is a file",
    ),
    "output_dir holds a run": (
        lambda tmp: ["--output_dir", str(an_earlier_run(tmp))],
        r"--output_dir \S+ holds an earlier run.*--resume_from_checkpoint \S+checkpoint-20,.*--overwrite_output_dir",
    ),
    "resume from nothing": (
        lambda tmp: ["--output_dir", str(an_earlier_run(tmp)), "--resume_from_checkpoint", str(tmp / "checkpoint-5")],
        r"--resume_from_checkpoint \S+checkpoint-5 is not a Trainer checkpoint.*the last one in --output_dir is "
        r"\S+checkpoint-20",
    ),
}


@pytest.mark.parametrize(("arguments", "message"), FINETUNE_ARGUMENTS.values(), ids=FINETUNE_ARGUMENTS.keys())
def test_finetune_names_a_bad_output(run_dir, tmp_path, no_loading, arguments, message):
    with pytest.raises(ValueError, match=message):
        finetune.main(["--model_name_or_path", str(run_dir / "model"), "--report_to", "none", *arguments(tmp_path)])


@pytest.mark.parametrize("arguments", [["--overwrite_output_dir"], ["--resume_from_checkpoint", "checkpoint-20"]])
def test_finetune_continues_or_replaces_an_earlier_run_when_told(run_dir, tmp_path, arguments):
    out = an_earlier_run(tmp_path)
    arguments = [str(out / argument) if argument.startswith("checkpoint-") else argument for argument in arguments]
    finetune_args, training_args = finetune.parse_args(
        ["--model_name_or_path", str(run_dir / "model"), "--output_dir", str(out), "--report_to", "none", *arguments]
    )
    assert training_args.output_dir == str(out) and finetune_args.model_name_or_path == str(run_dir / "model")


# ---------------------------------------------------------------------------------------------------------------
# posformer-export: RUN_DIR, its files, OUT_DIR
# ---------------------------------------------------------------------------------------------------------------


def damage(run: Path, name: str, text: str | None = None, drop: tuple[str, ...] = ()) -> None:
    """Replace `run / name` by `text`, or drop the keys `drop` from its JSON object."""
    path = run / name
    if text is None:
        values = json.loads(path.read_text())
        text = json.dumps({key: value for key, value in values.items() if key not in drop})
    path.write_text(text)


EXPORT_INPUTS = {
    # id: (RUN_DIR from the copied run, OUT_DIR from tmp_path, damage to the copy), message
    "run missing": (lambda run: run / "nowhere", None, r"RUN_DIR \S+nowhere does not exist; pass the --output_dir"),
    "run is a file": (lambda run: run / "results.json", None, r"RUN_DIR \S+results.json is a file; pass"),
    "model folder": (
        lambda run: run / "model",
        None,
        r"RUN_DIR \S+model is a model folder; export needs the run folder around it.*e\.g\. \S+run\.",
    ),
    "checkpoint": (
        lambda run: run / "checkpoints" / "checkpoint-2",
        None,
        r"RUN_DIR \S+checkpoint-2 is a checkpoint; pass the run folder around it.*--average_last",
    ),
    "results not JSON": (
        lambda run: run,
        lambda run: damage(run, "results.json", '{"test_bleu": 1.5,'),
        r"results.json is not JSON \(Expecting property name enclosed in double quotes at line 1, column 19\): "
        + DAMAGED,
    ),
    "results a list": (
        lambda run: run,
        lambda run: damage(run, "results.json", "[1, 2]"),
        r"results.json holds a list, not a JSON object: " + DAMAGED,
    ),
    "card not JSON": (
        lambda run: run,
        lambda run: damage(run, "card.json", ""),
        r"card.json is not JSON \(Expecting value at line 1, column 1\): " + DAMAGED,
    ),
    "card missing keys": (
        lambda run: run,
        lambda run: damage(run, "card.json", drop=("seed", "dataset", "checkpoint_averaging")),
        r"card.json lacks the model card's values \['checkpoint_averaging', 'dataset', 'seed'\]: " + DAMAGED,
    ),
}


@pytest.mark.parametrize(("run_path", "damaged", "message"), EXPORT_INPUTS.values(), ids=EXPORT_INPUTS.keys())
def test_export_names_a_bad_run(run_dir, tmp_path, run_path, damaged, message):
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    if damaged is not None:
        damaged(run)
    with pytest.raises(ValueError, match=message):
        export_run(run_path(run), tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    ("out_dir", "message"),
    [
        (lambda tmp: a_file(tmp), r"OUT_DIR \S+notes.txt is a file, not a folder"),
        (lambda tmp: a_file(tmp) / "export", r"OUT_DIR \S+export lies under \S+notes.txt, which is a file"),
    ],
    ids=["file", "under a file"],
)
def test_export_names_a_bad_out_dir(run_dir, tmp_path, out_dir, message):
    with pytest.raises(ValueError, match=message):
        export_run(run_dir, out_dir(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "not a folder"


# ---------------------------------------------------------------------------------------------------------------
# posformer-train --config FILE
# ---------------------------------------------------------------------------------------------------------------

CONFIG_FILES = {
    # id: (file name, content), error, message
    "YAML syntax": (
        ("run.yaml", "max_steps: 5\nd_model: 64: 3\n"),
        ValueError,
        r"--config \S+run.yaml is not valid YAML: mapping values are not allowed here at line 2, column 12",
    ),
    "JSON syntax": (
        ("run.json", '{"max_steps": 5,\n "d_model": }'),
        ValueError,
        r"--config \S+run.json is not valid JSON: Expecting value at line 2, column 13",
    ),
    "null": (
        ("run.yaml", "max_steps: null\n"),
        ValueError,
        r"--config \S+: max_steps is null; give it a value or delete the line to keep the default \(1000\)",
    ),
    "list": (
        ("run.yaml", "max_steps: [1000, 2000]\n"),
        ValueError,
        r"--config \S+: max_steps is a list, but each argument takes one value",
    ),
    "mapping": (
        ("run.yaml", "model:\n  d_model: 64\n"),
        ValueError,
        r"--config \S+: model is a mapping, but each argument takes one value; write the keys under model: at the "
        r"top level",
    ),
    "typo": (
        ("run.yaml", "d_modle: 64\n"),
        ValueError,
        r"--config \S+: 'd_modle' is not an argument of posformer-train; did you mean 'd_model'\?",
    ),
    "true for a number": (
        ("run.yaml", "max_steps: true\n"),
        ValueError,
        r"--config \S+: max_steps is true, but it takes a value of type int, not true/false",
    ),
    "yes for a string": (  # YAML 1.1 reads an unquoted yes as true
        ("run.yaml", "tokenizer_name: yes\n"),
        ValueError,
        r"--config \S+: tokenizer_name is true, but it takes a value of type str",
    ),
    "not a mapping": (
        ("run.yaml", "- max_steps\n"),
        ValueError,
        r"--config \S+ must hold a mapping of argument names to values .*not a list",
    ),
    "empty": (("run.yaml", ""), ValueError, r"--config \S+ must hold a mapping .*not an empty file"),
    "unknown format": (("run.toml", "max_steps = 5\n"), ValueError, r"--config \S+: unknown format '.toml'; name"),
    "not UTF-8": (("run.yaml", b"source_lang: \xe9n\n"), ValueError, r"--config \S+ is not UTF-8 text"),
    "missing": (None, FileNotFoundError, r"--config \S+run.yaml: no such file; pass a YAML"),
}


@pytest.mark.parametrize(("file", "error", "message"), CONFIG_FILES.values(), ids=CONFIG_FILES.keys())
def test_config_file_errors_name_the_file_and_the_key(tmp_path, file, error, message):
    path = tmp_path / (file[0] if file else "run.yaml")
    if file is not None:
        content = file[1]
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(error, match=message):
        parse_args(["--config", str(path)])


def test_config_file_flags_and_nulls_and_the_command_line_wins(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("normalize_before: true\nscale_embedding: false\ntokenizer_name: null\nmax_steps: 7\n")
    model_args, data_args, train_args = parse_args(["--config", str(path)])
    assert model_args.normalize_before is True and model_args.scale_embedding is False
    assert data_args.tokenizer_name is None and train_args.max_steps == 7  # null: unset, as without the line
    model_args, _, train_args = parse_args(["--config", str(path), "--normalize_before", "false", "--max-steps", "3"])
    assert model_args.normalize_before is False and train_args.max_steps == 3
    model_args, _, _ = parse_args(["--scale_embedding"])  # a flag alone means true, as for transformers' flags
    assert model_args.scale_embedding is True


def test_config_json_with_a_negative_number(tmp_path):
    """Values are passed as `--key=value`, so a negative number is not mistaken for an option."""
    path = tmp_path / "run.json"
    path.write_text('{"weight_decay": -0.5}')
    with pytest.raises(ValueError, match=r"--weight_decay must be at least 0, got -0.5"):
        parse_args(["--config", str(path)])


def test_a_hub_name_given_offline_must_be_in_the_hub_cache(tmp_path, monkeypatch):
    """With HF_HUB_OFFLINE=1, a Hub name that is not cached is named (transformers' OSError does not name it); one
    that is cached (the Hub cache's folder layout) is passed on to from_pretrained."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"--model_name_or_path org/absent: no such folder, and not in the "
                       r"Hugging Face cache .*hf download org/absent"):  # fmt: skip
        model_source("org/absent", "--model_name_or_path")
    repository = tmp_path / "models--org--cached"
    (repository / "snapshots" / "abc123").mkdir(parents=True)
    (repository / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text("abc123")
    assert model_source("org/cached", "--model_name_or_path") == "org/cached"
