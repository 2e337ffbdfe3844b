"""`posformer-export`: turn a finished training run into a documented model folder, and optionally publish it.

    posformer-export RUN_DIR OUT_DIR [--average_last N] [--format safetensors|ctranslate2] [--quantization TYPE]
                     [--push_to_hub ORG/NAME] [--private] [--token TOKEN]

RUN_DIR is a `posformer-train` output folder (its layout: `run_folder.py`). The weights are the run's final model
(`RUN_DIR/model`) or, with `--average_last N`, the element-wise mean of its last N complete checkpoints
(`RUN_DIR/checkpoints/checkpoint-*`, by step) loaded into that model. OUT_DIR is written atomically by
`export.export_model`: safetensors, config, tokenizer, the paper's generation config and a model card. With
`--format ctranslate2` it is a CTranslate2 model folder instead (`ctranslate2_export.export_ctranslate2`, weights
optionally quantized with `--quantization int8|int8_float32|int16|float16|bfloat16|...`), with the tokenizer and the
same generation config; it needs the `ctranslate2` extra (`pip install "posformer[ctranslate2]"`).

The card's run values (data, recipe, hardware...) come from `RUN_DIR/card.json`, which the run writes with
the values of its own model card; the scores come from `RUN_DIR/results.json`. The scores are carried over only when
the exported weights equal the model the run scored; other weights (a different average) get no scores (NaN, and a
signature saying why) rather than scores they did not earn. The model-derived values (architecture, encoding,
decoding) are recomputed from the exported model by `export_model`.

With `--push_to_hub`, OUT_DIR is uploaded to the Hub repository ORG/NAME (created if needed; `--private` applies
only when it is created). The token comes from `--token`, else from `HF_TOKEN` or `huggingface-cli login`; prefer
those, since a command-line token is visible to other users of the machine.
"""

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from huggingface_hub import HfApi
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_NAME

import posformer.modeling  # noqa: F401  (registers posformer with the Auto classes)

from .arguments import check_output_folder
from .checkpoint_averaging import load_average
from .console import log_to_console
from .ctranslate2_export import QUANTIZATIONS, CTranslate2NotInstalledError, check_exportable, export_ctranslate2
from .export import export_model, paper_generation_config
from .model_card import MODEL_CARD_TEMPLATE, describe_averaging, model_card_values, template_fields
from .run_folder import (
    CARD_FILE,
    CHECKPOINTS_DIR,
    MODEL_DIR,
    RESULTS_FILE,
    STATE_FILE,
    TOKENIZER_DIR,
    checkpoints,
    last_checkpoints,
)

logger = logging.getLogger(__spec__.name)  # the module's name also when run as `python -m`

FORMATS = ("safetensors", "ctranslate2")
NOT_SCORED = "not scored: these weights differ from the model the run scored"
# The card values `run_card` sets itself; every other value of the model card that the model does not give comes
# from the run's card.json.
EXPORT_CARD_KEYS = {"model_id", "bleu", "chrf", "bleu_signature", "chrf_signature"}


# ---------------------------------------------------------------------------------------------------------------
# Checking the run and the destination
# ---------------------------------------------------------------------------------------------------------------


def _is_within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def check_destination(run_dir: Path, out_dir: Path, overwrite_output_dir: bool) -> None:
    """`ValueError` when writing `out_dir` would replace the run or its inputs, or an unrelated folder's content.

    `export_model` replaces `out_dir` as a whole, so it must not be the run, a folder holding the run, or inside
    the run's `model/`, `checkpoints/` or `tokenizer/`; an existing non-empty `out_dir` is replaced only with
    `overwrite_output_dir`.
    """
    check_output_folder(out_dir, "OUT_DIR")
    run, out = run_dir.resolve(), out_dir.resolve()
    if _is_within(run, out):
        raise ValueError(f"OUT_DIR {out_dir} is the run folder or holds it; exporting there would replace the run.")
    for name in (MODEL_DIR, CHECKPOINTS_DIR, TOKENIZER_DIR):
        if _is_within(out, run / name):
            raise ValueError(
                f"OUT_DIR {out_dir} lies inside the run's {name}/ ({run_dir / name}), which the export reads "
                f"from; choose a folder outside it, e.g. {run_dir / 'export'}."
            )
    if out.is_dir() and any(out.iterdir()) and not overwrite_output_dir:
        raise ValueError(
            f"OUT_DIR {out_dir} exists and is not empty; pass --overwrite_output_dir to replace its content."
        )


def check_run(run_dir: Path) -> None:
    """`ValueError` unless `run_dir` is a finished run: a `model/` with weights, `results.json` and `card.json`."""
    if not run_dir.exists():
        raise ValueError(f"RUN_DIR {run_dir} does not exist; pass the --output_dir of a posformer-train run.")
    if not run_dir.is_dir():
        raise ValueError(f"RUN_DIR {run_dir} is a file; pass the --output_dir of a posformer-train run.")
    if (run_dir / "config.json").is_file():
        raise ValueError(
            f"RUN_DIR {run_dir} is a model folder; export needs the run folder around it (the --output_dir of "
            f"posformer-train, which holds {MODEL_DIR}/, {RESULTS_FILE} and {CARD_FILE}), e.g. {run_dir.parent}."
        )
    if (run_dir / STATE_FILE).is_file():
        raise ValueError(
            f"RUN_DIR {run_dir} is a checkpoint; pass the run folder around it ({run_dir.parent.parent}) and "
            "choose checkpoints with --average_last N (the last N, by step)."
        )
    model_dir = run_dir / MODEL_DIR
    if not (model_dir / SAFE_WEIGHTS_NAME).is_file():
        found = len(checkpoints(run_dir))
        raise ValueError(
            f"{model_dir / SAFE_WEIGHTS_NAME} does not exist, and the export needs the final model's config and "
            f"tokenizer even to average checkpoints ({run_dir / CHECKPOINTS_DIR} holds {found} complete ones). "
            "Finish the run first (posformer-train ... --resume_from_checkpoint latest)."
        )
    for name in (RESULTS_FILE, CARD_FILE):
        if not (run_dir / name).is_file():
            raise ValueError(f"{run_dir / name} does not exist: the run did not finish writing its results.")


def _damaged(run_dir: Path, name: str, what: str) -> ValueError:
    """The error for a run file that exists but cannot be used, with the command that writes it again."""
    return ValueError(
        f"{run_dir / name} {what}: the run folder is damaged. Re-run the end of the run, which writes it again "
        f"from the last checkpoint: the run's posformer-train command (its arguments are in each checkpoint's "
        f"trainer_state.json) with --resume_from_checkpoint latest."
    )


def read_run_file(run_dir: Path, name: str) -> dict:
    """The JSON object in `run_dir / name`; `ValueError` naming the file and the fix when it is not one."""
    try:
        values = json.loads((run_dir / name).read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise _damaged(run_dir, name, f"is not UTF-8 text (byte {error.start})") from error
    except json.JSONDecodeError as error:
        raise _damaged(
            run_dir, name, f"is not JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from error
    if not isinstance(values, dict):
        raise _damaged(run_dir, name, f"holds a {type(values).__name__}, not a JSON object")
    return values


def saved_card_values(run_dir: Path, saved: dict[str, object], model: PreTrainedModel) -> dict[str, object]:
    """`saved` (the run's card.json) without the values the model gives; `ValueError` naming the keys it lacks."""
    derived = model_card_values(model, paper_generation_config(model.config)).keys()
    needed = template_fields(MODEL_CARD_TEMPLATE.read_text(encoding="utf-8")) - derived - EXPORT_CARD_KEYS
    missing = sorted(needed - saved.keys())
    if missing:
        raise _damaged(run_dir, CARD_FILE, f"lacks the model card's values {missing}")
    return {key: value for key, value in saved.items() if key not in derived}


# ---------------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------------


def load_final_model(model_dir: Path) -> PreTrainedModel:
    """The run's final model (posformer's `from_pretrained` names a truncated or corrupt weights file)."""
    return AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()


# ---------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------


def _averaging(average_last: int | None) -> str | None:
    """The card's `checkpoint_averaging` for the exported weights; None keeps the run's own."""
    if average_last is None:
        return None
    return describe_averaging(average_last)


def run_card(
    saved: dict[str, object], results: dict, model_id: str, average_last: int | None, scored: bool
) -> dict[str, object]:
    """The run-specific card values of the export: the run's saved card, overlaid by its results and this export.

    `scored` says whether the exported weights are the ones `results` scored; if not, the scores are NaN.
    """
    card = dict(saved)
    card["model_id"] = model_id
    card["checkpoint_averaging"] = _averaging(average_last) or card["checkpoint_averaging"]
    card["bleu"] = results.get("test_bleu", math.nan) if scored else math.nan
    card["chrf"] = results.get("test_chrf", math.nan) if scored else math.nan
    card["bleu_signature"] = results.get("test_bleu_signature", "not scored") if scored else NOT_SCORED
    card["chrf_signature"] = results.get("test_chrf_signature", "not scored") if scored else NOT_SCORED
    return card


# ---------------------------------------------------------------------------------------------------------------
# Export and upload
# ---------------------------------------------------------------------------------------------------------------


def push_folder(out_dir: Path, repo_id: str, private: bool, token: str | None) -> str:
    """Create the Hub model repository `repo_id` if needed and upload `out_dir` to it; return the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(out_dir), commit_message=f"Upload {out_dir.name} with posformer-export"
    )
    return str(commit)


def export_run(
    run_dir: Path,
    out_dir: Path,
    *,
    average_last: int | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    token: str | None = None,
    overwrite_output_dir: bool = False,
    export_format: str = "safetensors",
    quantization: str | None = None,
) -> Path:
    """Export a training run's final (or averaged) model to `out_dir`, optionally upload it; return `out_dir`.

    `export_format` is `"safetensors"` (a transformers model folder with its card) or `"ctranslate2"` (a CTranslate2
    model folder, `quantization` one of `QUANTIZATIONS` or None for float32, with the tokenizer and the paper's
    generation config). The run (its files, results.json and card.json parsed), the destination and the checkpoints
    are checked before any weights are read, card.json's keys and what CTranslate2 can express once the final model
    is loaded, all before anything is written; a failure raises `ValueError` with the reason and leaves `out_dir`
    untouched.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_format(export_format, quantization)
    if private and push_to_hub is None:
        raise ValueError("--private only applies with --push_to_hub.")
    check_run(run_dir)
    results, card_file = read_run_file(run_dir, RESULTS_FILE), read_run_file(run_dir, CARD_FILE)
    check_destination(run_dir, out_dir, overwrite_output_dir)
    paths = last_checkpoints(run_dir, average_last) if average_last is not None else []
    model = load_final_model(run_dir / MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / MODEL_DIR)
    saved = saved_card_values(run_dir, card_file, model)
    if export_format == "ctranslate2":
        check_exportable(model, quantization)
    scored = load_average(model, paths) if paths else True
    if export_format == "ctranslate2":
        export_ctranslate2(model, tokenizer, out_dir, quantization, paper_generation_config(model.config))
    else:
        card = run_card(saved, results, push_to_hub or str(out_dir), average_last, scored)
        export_model(model, tokenizer, out_dir, card)
    if push_to_hub is not None:
        logger.info(f"uploaded: {push_folder(out_dir, push_to_hub, private, token)}")
    return out_dir


def check_format(export_format: str, quantization: str | None) -> None:
    """`ValueError` for an unknown `--format`, or a `--quantization` that it does not take."""
    if export_format not in FORMATS:
        raise ValueError(f"--format {export_format!r} is not an export format; choose one of: {', '.join(FORMATS)}.")
    if quantization is not None and export_format != "ctranslate2":
        raise ValueError(
            f"--quantization {quantization} applies to CTranslate2's weights only: add --format ctranslate2, or drop "
            "--quantization for the safetensors export."
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posformer-export",
        description="Export a posformer-train run's final or checkpoint-averaged model with a model card, and "
        "optionally upload it to the Hugging Face Hub.",
    )
    parser.add_argument("run_dir", type=Path, help="the training run's output folder")
    parser.add_argument("out_dir", type=Path, help="the folder to write (replaced atomically)")
    parser.add_argument("--average_last", type=int, help="export the mean of the run's last N checkpoints")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="safetensors",
        help="safetensors: a transformers model folder with its model card (default); ctranslate2: a CTranslate2 "
        'model folder with the tokenizer and generation config (needs pip install "posformer[ctranslate2]")',
    )
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        help="CTranslate2 weight type (with --format ctranslate2; default float32)",
    )
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="upload the export to this Hub model repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the cached login)")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace a non-empty OUT_DIR")
    return parser


def cli(argv: list[str] | None = None) -> None:
    """Console entry point `posformer-export`: a user error exits with its message and status 1."""
    log_to_console()
    args = _parser().parse_args(argv)
    try:
        out_dir = export_run(
            args.run_dir,
            args.out_dir,
            average_last=args.average_last,
            push_to_hub=args.push_to_hub,
            private=args.private,
            token=args.token,
            overwrite_output_dir=args.overwrite_output_dir,
            export_format=args.format,
            quantization=args.quantization,
        )
    except (ValueError, CTranslate2NotInstalledError) as error:
        sys.exit(f"posformer-export: error: {error}")
    logger.info(f"exported: {out_dir}")


if __name__ == "__main__":
    cli()
