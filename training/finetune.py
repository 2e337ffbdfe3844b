"""Fine-tune a posformer checkpoint with transformers' `Seq2SeqTrainer`, as one would a MarianMT model.

    python -m posformer.training.finetune --model_name_or_path runs/posformer/model --output_dir runs/finetuned \
        --train_file train.jsonl --validation_file validation.jsonl --learning_rate 1e-4 \
        --per_device_train_batch_size 32 --label_smoothing_factor 0.1 \
        --eval_strategy steps --eval_steps 500 --predict_with_generate --generation_num_beams 4

Every `Seq2SeqTrainingArguments` option works (`--gradient_accumulation_steps`, `--max_steps`, `--save_strategy`,
`--resume_from_checkpoint`, `--report_to` ...); `FinetuneArguments` below chooses the checkpoint and the data
(the built-in en-de corpus by default, else `--dataset_name` or local `--train_file`/`--validation_file`/`--test_file`,
laid out as `training/data.py` describes). Pairs are truncated to `--max_source_length`/`--max_target_length`.

Label smoothing: `--label_smoothing_factor` (the Trainer's `LabelSmoother`, applied to the logits) is the only
smoothing, as for any transformers model: posformer's own loss is plain cross-entropy. Both divide the summed token
loss by the Trainer's `num_items_in_batch`, so gradient accumulation gives the update of the equivalent large batch.

Decoding for `--predict_with_generate` follows the checkpoint's generation config (posformer-train exports beam 4,
`max_new_tokens=256`) unless `--generation_num_beams`/`--generation_max_length` say otherwise. transformers would let
the checkpoint's `max_new_tokens` win over `--generation_max_length`, so when that flag is given `max_new_tokens` is
cleared and the saved generation config carries the new `max_length`.

Output folder (the Trainer's): `checkpoint-N/` folders (safetensors weights, tokenizer, optimizer state), and at the
end the fine-tuned model, tokenizer, `trainer_state.json` and `{train,eval,test,all}_results.json`. The model loads
with `AutoModelForSeq2SeqLM.from_pretrained(output_dir)` once `posformer.modeling` is imported. An `--output_dir`
that holds an earlier run is refused unless `--resume_from_checkpoint` continues it or `--overwrite_output_dir`
starts afresh (the Trainer would rotate its checkpoints away and replace its model).
"""

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    EvalPrediction,
    HfArgumentParser,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

from .. import modeling  # noqa: F401  (registers posformer with the Auto classes)
from ..configuration import PosformerConfig
from ..modeling import POSITION_ENCODINGS
from .arguments import DataSourceArguments, check_output_folder, check_tokenizer_folder
from .console import log_to_console
from .metrics import compute_translation_scores
from .parallel_data import load_parallel_data, source_target_pairs
from .run_folder import model_source

logger = logging.getLogger(__spec__.name)  # the module's name also when run as `python -m`


@dataclass
class FinetuneArguments(DataSourceArguments):
    """The checkpoint to start from and the parallel data to fine-tune it on."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Required: a posformer model folder or Hub name (e.g. the `model/` of posformer-train)."},
    )
    position_encoding: str | None = field(
        default=None,
        metadata={
            "help": "Start from the checkpoint with another position encoding: a new model initialised from its "
            "weights (the old encoding's weights dropped, the new one's initialised), not the same function. "
            "docs/converting.md.",
            "choices": list(POSITION_ENCODINGS),
        },
    )
    max_source_length: int = field(default=128, metadata={"help": "Truncate sources to this many tokens."})
    max_target_length: int = field(default=128, metadata={"help": "Truncate targets (labels) to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N validation pairs."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Use only the first N test pairs."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an --output_dir that holds an earlier run (its checkpoints get replaced)."},
    )

    def __post_init__(self) -> None:
        if self.model_name_or_path is None:
            raise ValueError("--model_name_or_path is required: the posformer checkpoint to fine-tune.")
        model_source(self.model_name_or_path, "--model_name_or_path")
        check_tokenizer_folder(self.model_name_or_path, "--model_name_or_path")


SPLIT_LIMITS = {"train": "max_train_samples", "validation": "max_eval_samples", "test": "max_predict_samples"}


def parse_args(argv: list[str] | None = None) -> tuple[FinetuneArguments, Seq2SeqTrainingArguments]:
    """Parse `argv` (default `sys.argv[1:]`) into the data/model arguments and the Trainer's arguments."""
    parser = HfArgumentParser((FinetuneArguments, Seq2SeqTrainingArguments), prog="posformer-finetune")
    args = sys.argv[1:] if argv is None else argv
    finetune_args, training_args = parser.parse_args_into_dataclasses(args=args, return_remaining_strings=False)
    check_output_dir(training_args, finetune_args.overwrite_output_dir)
    return finetune_args, training_args


def check_output_dir(training_args: Seq2SeqTrainingArguments, overwrite_output_dir: bool) -> None:
    """`ValueError` when `--output_dir` cannot be a folder, when `--resume_from_checkpoint` is no checkpoint, or
    when `--output_dir` holds an earlier run that this one would replace without `--overwrite_output_dir`."""
    output_dir, resume = Path(training_args.output_dir), training_args.resume_from_checkpoint
    check_output_folder(output_dir, "--output_dir")
    last = get_last_checkpoint(output_dir) if output_dir.is_dir() else None
    if resume is not None:
        if not (Path(resume) / TRAINER_STATE_NAME).is_file():
            found = f"the last one in --output_dir is {last}" if last else f"--output_dir {output_dir} holds none"
            raise ValueError(
                f"--resume_from_checkpoint {resume} is not a Trainer checkpoint (a checkpoint-N folder with "
                f"{TRAINER_STATE_NAME}); {found}."
            )
        return
    if (last or (output_dir / TRAINER_STATE_NAME).is_file()) and not overwrite_output_dir:
        continue_it = f"continue it with --resume_from_checkpoint {last}, " if last else ""
        raise ValueError(
            f"--output_dir {output_dir} holds an earlier run, which this one would replace: {continue_it}choose "
            "another --output_dir, or pass --overwrite_output_dir to start afresh."
        )


def limit_generation_length(model: PreTrainedModel, generation_max_length: int | None) -> None:
    """Make `--generation_max_length` take effect: transformers lets a checkpoint's `max_new_tokens` win over it."""
    if generation_max_length is not None and model.generation_config.max_new_tokens is not None:
        model.generation_config.max_new_tokens = None
        model.generation_config.max_length = generation_max_length


def required_splits(training_args: Seq2SeqTrainingArguments) -> list[str]:
    """The splits this run reads: train always, validation to evaluate, test to predict."""
    splits = ["train"]
    if training_args.do_eval:
        splits.append("validation")
    if training_args.do_predict:
        splits.append("test")
    return splits


def load_pairs(args: FinetuneArguments, splits: list[str]) -> DatasetDict:
    """`source`/`target` pairs of each split in `splits`, cut to its `--max_*_samples`."""
    raw = load_parallel_data(args)
    missing = [split for split in splits if split not in raw]
    if missing:
        raise ValueError(
            f"The data have splits {sorted(raw)}, but this run needs {missing}: pass --{missing[0]}_file or a "
            "dataset that has it (validation is needed by --eval_strategy/--do_eval, test by --do_predict)."
        )
    pairs = {}
    for split in splits:
        dataset, limit = raw[split], getattr(args, SPLIT_LIMITS[split])
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        pairs[split] = source_target_pairs(dataset, split, args.source_lang, args.target_lang)
    return DatasetDict(pairs)


def tokenize(pairs: Dataset, tokenizer: PreTrainedTokenizerBase, args: FinetuneArguments, split: str) -> Dataset:
    """`input_ids`, `attention_mask` and `labels`, each truncated to its maximum length."""

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        encoded = tokenizer(batch["source"], max_length=args.max_source_length, truncation=True)
        targets = tokenizer(text_target=batch["target"], max_length=args.max_target_length, truncation=True)
        return {**encoded, "labels": targets["input_ids"]}

    return pairs.map(encode, batched=True, remove_columns=pairs.column_names, desc=f"{split}: tokenize")


def translation_metrics(tokenizer: PreTrainedTokenizerBase) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for `--predict_with_generate`: corpus BLEU and chrF of the decoded generations."""

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        # the Trainer pads predictions and labels across batches with -100, which no tokenizer can decode
        generated = np.where(prediction.predictions != -100, prediction.predictions, tokenizer.pad_token_id)
        labels = np.where(prediction.label_ids != -100, prediction.label_ids, tokenizer.pad_token_id)
        hypotheses = tokenizer.batch_decode(generated, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return compute_translation_scores([text.strip() for text in hypotheses], [text.strip() for text in references])

    return compute_metrics


def prepare_data(
    args: FinetuneArguments, training_args: Seq2SeqTrainingArguments, tokenizer: PreTrainedTokenizerBase
) -> DatasetDict:
    """The tokenised splits this run reads (the main process prepares them first; the others load its cache)."""
    with training_args.main_process_first(desc="dataset preparation"):
        pairs = load_pairs(args, required_splits(training_args))
        return DatasetDict({split: tokenize(pairs[split], tokenizer, args, split) for split in pairs})


def build_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: DatasetDict,
    training_args: Seq2SeqTrainingArguments,
) -> Seq2SeqTrainer:
    """A `Seq2SeqTrainer` with the Seq2Seq collator (it builds `decoder_input_ids`) and, when generating, BLEU/chrF."""
    return Seq2SeqTrainer(
        model=model,
        args=training_args,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        train_dataset=data["train"],
        eval_dataset=data.get("validation"),
        processing_class=tokenizer,
        compute_metrics=translation_metrics(tokenizer) if training_args.predict_with_generate else None,
    )


def load_model(path: str, position_encoding: str | None = None) -> PreTrainedModel:
    """The checkpoint at `path`; with `position_encoding`, a model of its config with that encoding instead, holding
    every checkpoint weight the new model has (the new encoding's own weights initialised as for a new model, the old
    one's dropped, and both logged): a new model initialised from the old weights, not the same function."""
    if position_encoding is None:
        return AutoModelForSeq2SeqLM.from_pretrained(path)
    saved = PosformerConfig.from_pretrained(path)
    if saved.position_encoding == position_encoding:
        return AutoModelForSeq2SeqLM.from_pretrained(path)
    values = {key: value for key, value in saved.to_dict().items() if key in PosformerConfig.__dataclass_fields__}
    config = PosformerConfig(**{**values, "position_encoding": position_encoding})  # checked, as a new config is
    model, info = AutoModelForSeq2SeqLM.from_pretrained(path, config=config, output_loading_info=True)
    logger.warning(
        f"--position_encoding {position_encoding}: the checkpoint's {saved.position_encoding!r} encoding is replaced, "
        f"so this is a new model initialised from its weights, not the same function. Initialised: "
        f"{', '.join(sorted(info['missing_keys'])) or 'nothing'}; dropped: "
        f"{', '.join(sorted(info['unexpected_keys'])) or 'nothing'}."
    )
    return model


def record(trainer: Seq2SeqTrainer, split: str, metrics: dict[str, float]) -> dict[str, float]:
    """Log `metrics` and write them to `<split>_results.json` (main process only, as the Trainer does)."""
    trainer.log_metrics(split, metrics)
    trainer.save_metrics(split, metrics)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Fine-tune, save the model, evaluate (`--do_eval` or an `--eval_strategy`) and predict (`--do_predict`).

    Returns the final metrics: `train_*` (runtime, `train_loss`, ...), `eval_*` and `test_*` (loss and, with
    `--predict_with_generate`, `bleu` and `chrf`) of the splits that were scored.
    """
    args, training_args = parse_args(argv)
    set_seed(training_args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = load_model(args.model_name_or_path, args.position_encoding)
    limit_generation_length(model, training_args.generation_max_length)
    data = prepare_data(args, training_args, tokenizer)
    trainer = build_trainer(model, tokenizer, data, training_args)
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    metrics = record(trainer, "train", {**result.metrics, "train_samples": len(trainer.train_dataset)})
    if training_args.do_eval:
        metrics |= record(trainer, "eval", trainer.evaluate(metric_key_prefix="eval"))
    if training_args.do_predict:
        metrics |= record(trainer, "test", trainer.predict(data["test"], metric_key_prefix="test").metrics)
    return metrics


def cli() -> None:
    """Console entry point (`posformer-finetune`): `main` with this module's messages shown."""
    log_to_console()
    main()


if __name__ == "__main__":
    cli()
