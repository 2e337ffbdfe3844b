"""The training loop of `posformer-train`, on Accelerate: one CPU, one GPU or many (DDP, FSDP, bf16/fp16).

The recipe is the paper's: AdamW (0.9, 0.98, 1e-9), linear warmup then inverse-square-root decay, label smoothing
0.1, dropout, gradient clipping, token-capped length-bucketed batches; evaluation decodes with beam search. What the
run writes, and how checkpoints are saved and resumed, is `run_folder.py`'s.
"""

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, is_tensorboard_available, set_seed
from datasets import Dataset
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import StateDictType
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_inverse_sqrt_schedule

from ..modeling import PosformerForConditionalGeneration
from ..modeling.atomic_io import atomic_directory, atomic_write_text
from .arguments import build_config
from .checkpoint_averaging import average_checkpoints
from .data import (
    TokenBatches,
    collate,
    filter_by_length,
    load_or_train_tokenizer,
    pair_lengths,
    special_token_ids,
    tokenize_pairs,
)
from .export import export_model
from .metrics import load_translation_metric
from .model_card import training_card_values
from .parallel_data import load_parallel_data, prepare_splits
from .plots import plot_training_curves
from .run_folder import (
    CARD_FILE,
    CURVES_FILE,
    METRICS_FILE,
    MODEL_DIR,
    RESULTS_FILE,
    TOKENIZER_DIR,
    append_metrics,
    checkpoints,
    keep_metrics_up_to,
    load_checkpoint,
    log_a_changed_data_order,
    resolve_resume,
    save_checkpoint,
)
from .translation import corpus_loss, position_limit, translate

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite: the run stops before the bad update is applied."""


class TrainingStoppedError(RuntimeError):
    """SIGTERM (a scheduler preempting the job or ending its time) stopped the run, after a checkpoint of its last
    complete step."""


@dataclass
class LossWindow:
    """The steps since the last log line: token-weighted loss sum, target tokens, start time."""

    loss_sum: float = 0.0
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, mean_loss: float, tokens: int) -> None:
        self.loss_sum += mean_loss * tokens
        self.tokens += tokens


@contextmanager
def stop_requests(signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)) -> Iterator[threading.Event]:
    """An event that one of `signals` sets while the block runs (the handlers before it come back after). Only the
    main thread can install handlers: elsewhere the event is never set and the signals keep their handlers."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {number: signal.signal(number, lambda *_: requested.set()) for number in signals}
    try:
        yield requested
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def refuse_unresumable_fsdp_checkpoints(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """FSDP2 with a FULL_STATE_DICT writes checkpoints that `load_state` cannot load into a model with tied
    weights (torch's `set_model_state_dict(broadcast_from_rank0=True)` looks the tied names up among the
    deduplicated parameters: KeyError); refuse before training rather than on the first resume."""
    if not accelerator.is_fsdp2 or accelerator.state.fsdp_plugin.state_dict_type != StateDictType.FULL_STATE_DICT:
        return
    if len(dict(model.named_parameters(remove_duplicate=False))) > len(dict(model.named_parameters())):
        raise ValueError(
            "FSDP2 with fsdp_state_dict_type FULL_STATE_DICT saves checkpoints that cannot be resumed for a "
            "model with tied embeddings (a limitation of torch.distributed.checkpoint). Use "
            "SHARDED_STATE_DICT, Accelerate's default (`accelerate launch --fsdp_state_dict_type "
            "SHARDED_STATE_DICT`, or fsdp_state_dict_type in the Accelerate config); the export still writes "
            "one safetensors file."
        )


def share_embedding_modules_under_fsdp2(accelerator: Accelerator, model: PosformerForConditionalGeneration) -> None:
    """Under FSDP2, make the stacks' `embed_tokens` the `shared` module itself instead of modules holding its tied
    parameter. Accelerate puts the input embedding module in one unit with the head, and torch 2.13 refuses a tied
    parameter that a second module brings into another unit ("shared with a parameter already managed by another
    FSDP group"); the parameters, their names and the checkpoints are the same either way."""
    if not accelerator.is_fsdp2:
        return
    for tied in model.model.embedding_ties():
        model.model.set_submodule(tied.removesuffix(".weight"), model.model.shared)


class TrainingRun:
    """One posformer-train run: its data, model and optimizer, the loop around them, and what it leaves in its
    output folder. `TrainingRun(model_args, data_args, train_args).train()` runs it to the end."""

    def __init__(self, model_args, data_args, train_args) -> None:
        self.model_args, self.data_args, self.args = model_args, data_args, train_args
        self.output_dir = Path(train_args.output_dir)
        report_to = train_args.report_to
        if report_to == "auto":
            report_to = "tensorboard" if is_tensorboard_available() else None
        self.accelerator = Accelerator(log_with=None if report_to == "none" else report_to, project_dir=self.output_dir)
        self.resume_from = resolve_resume(
            self.output_dir, train_args.resume_from_checkpoint, train_args.overwrite_output_dir
        )
        set_seed(train_args.seed)
        self.tokenizer, self.splits, self.train_pairs = self._prepare_data()
        self.model = self._build_model()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=train_args.learning_rate,
            betas=(train_args.adam_beta1, train_args.adam_beta2),
            eps=train_args.adam_epsilon,
            weight_decay=train_args.weight_decay,
        )
        # stepped once per optimizer step by us, not by Accelerate (which steps it once per process)
        self.scheduler = get_inverse_sqrt_schedule(self.optimizer, num_warmup_steps=train_args.warmup_steps)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.decoder_inputs = self.accelerator.unwrap_model(self.model).prepare_decoder_input_ids_from_labels
        self.batches = TokenBatches(
            lengths=pair_lengths(self.train_pairs),
            max_tokens=train_args.max_tokens,
            seed=train_args.seed,
            process_index=self.accelerator.process_index,
            num_processes=self.accelerator.num_processes,
        )
        self.step = 0
        if self.resume_from is not None:
            self._resume(self.resume_from)
        self.last_checkpoint: Path | None = self.resume_from
        self.saved_step: int | None = self.step if self.resume_from is not None else None
        self.metric = load_translation_metric()
        self._loss_pairs: dict[str, Dataset] = {}
        self._check_the_evaluation_splits()
        self.started = time.perf_counter()

    # ------------------------------------------------------------------------------------------ setup

    def _prepare_data(self):
        """The tokenizer (trained once, saved in the run, reloaded on resume), the splits as `source`/`target`
        pairs, and the tokenized training pairs within the length limits."""
        accelerator, data_args = self.accelerator, self.data_args
        with accelerator.main_process_first():
            pairs = prepare_splits(load_parallel_data(data_args), data_args)
            tokenizer_dir = self.output_dir / TOKENIZER_DIR
            if self.resume_from is not None or (not accelerator.is_main_process and tokenizer_dir.is_dir()):
                tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
            else:
                tokenizer = load_or_train_tokenizer(data_args, pairs["train"])
                if accelerator.is_main_process:
                    with atomic_directory(tokenizer_dir) as folder:
                        tokenizer.save_pretrained(folder)
            workers = data_args.preprocessing_num_workers
            train = filter_by_length(
                tokenize_pairs(pairs["train"], tokenizer, "train", workers),
                data_args.max_source_length,
                data_args.max_target_length,
                "train",
                workers,
            )
        if len(train) == 0:
            raise ValueError(
                "No training pair fits --max_source_length/--max_target_length "
                f"({data_args.max_source_length}/{data_args.max_target_length} tokens). Raise them."
            )
        return tokenizer, pairs, train.select_columns(["input_ids", "labels"]).with_format("arrow")

    def _build_model(self) -> PosformerForConditionalGeneration:
        config = build_config(self.model_args, len(self.tokenizer), special_token_ids(self.tokenizer))
        table, longest = position_limit(config), max(self.data_args.max_source_length, self.data_args.max_target_length)
        if table is not None and longest > table:
            raise ValueError(
                f"position_encoding={config.position_encoding!r} has a table of max_position_embeddings={table} "
                f"positions, but --max_source_length/--max_target_length let training pairs have {longest} tokens. "
                f"Raise --max_position_embeddings to at least {longest}, or lower the length limits."
            )
        model = PosformerForConditionalGeneration(config)
        refuse_unresumable_fsdp_checkpoints(self.accelerator, model)
        share_embedding_modules_under_fsdp2(self.accelerator, model)
        return model

    def _resume(self, checkpoint: Path) -> None:
        """Continue from `checkpoint`: refused when the run's arguments differ from its own (beyond what a resume
        may change), then its states restored and the metrics logged after it dropped."""
        state = load_checkpoint(self.accelerator, checkpoint, self.output_dir, self.scheduler, self._arguments())
        self.step = state["step"]
        log_a_changed_data_order(checkpoint, state.get("data_order", {}), self._data_order(), self.step)
        if self.accelerator.is_main_process:
            keep_metrics_up_to(self.output_dir, self.step)

    def _check_the_evaluation_splits(self) -> None:
        """Before the first step: every split the run scores has pairs within the length limits, so that neither
        an evaluation nor the end of the run fails on data that were there from the start."""
        for split in ("validation", "test"):
            if split in self.splits and len(self.loss_pairs(split)) == 0:
                limits = f"{self.data_args.max_source_length}/{self.data_args.max_target_length}"
                raise ValueError(
                    f"No {split} pair fits the length limits (--max_source_length/--max_target_length {limits} "
                    f"tokens, and the position table's end where there is one), so the {split} loss cannot be "
                    f"computed. Raise the limits, or pass a --{split}_file with shorter pairs."
                )

    def _arguments(self) -> dict:
        """Every argument of the run, as saved with each checkpoint (a resume compares them)."""
        return {**vars(self.model_args), **vars(self.data_args), **vars(self.args)}

    def _data_order(self) -> dict[str, int]:
        """What decides which pairs make up the batch of each step (saved with every checkpoint)."""
        return {
            "seed": self.args.seed,
            "max_tokens": self.args.max_tokens,
            "gradient_accumulation_steps": self.args.gradient_accumulation_steps,
            "num_processes": self.accelerator.num_processes,
            "training_pairs": len(self.train_pairs),
        }

    # ------------------------------------------------------------------------------------------ loop

    def train(self) -> dict:
        """Train to `--max_steps` (logging, evaluating and saving on schedule), then `finish()`."""
        args, accelerator = self.args, self.accelerator
        accelerator.init_trackers("posformer", config=self._hyperparameters())
        progress = tqdm(
            total=args.max_steps, initial=self.step, desc="training", disable=not accelerator.is_main_process
        )
        batches = self.batches.iterate(start=self.step * args.gradient_accumulation_steps)
        window = LossWindow()
        with stop_requests() as stop:
            while self.step < args.max_steps:
                if self._any_process(stop.is_set()):
                    self._stop_with_a_checkpoint()
                window.add(*self._train_step([next(batches) for _ in range(args.gradient_accumulation_steps)]))
                self.step += 1
                progress.update(1)
                if self._due(args.logging_steps):
                    self._log_training(window, progress)
                    window = LossWindow()
                if self._due(args.save_steps):  # before evaluating: a failing evaluation costs no training
                    self.save_checkpoint()
                if self._due(args.eval_steps):
                    scores = self.evaluate(self.full_model(), "validation", self.data_args.max_eval_samples)
                    self._log({"step": self.step, **scores})
        progress.close()
        accelerator.wait_for_everyone()
        try:
            results = self.finish()
        except Exception:
            logger.error(
                f"The end of the run failed, but the trained weights are safe in {self.last_checkpoint}. Once the "
                f"cause is fixed, the same command with --resume_from_checkpoint latest runs only the end again."
            )
            raise
        accelerator.end_training()
        return results

    def _due(self, every: int) -> bool:
        """Whether a periodic action falls on this step (the last step always does)."""
        return self.step % every == 0 or self.step == self.args.max_steps

    def _any_process(self, flag: bool) -> bool:
        """Whether `flag` is set on any process (a collective: every process asks at the same point)."""
        return bool(self.accelerator.reduce(torch.tensor(int(flag), device=self.accelerator.device), "sum").item())

    def _stop_with_a_checkpoint(self) -> None:
        """SIGTERM reached a process: save this step (unless just saved) and stop with `TrainingStoppedError`."""
        if self.saved_step != self.step:
            self.save_checkpoint()
        self.accelerator.end_training()
        raise TrainingStoppedError(
            f"SIGTERM received: the run stopped after step {self.step}, saved in {self.last_checkpoint}. Continue it "
            f"with --resume_from_checkpoint latest (same --output_dir)."
        )

    def _train_step(self, micro_batches: list[list[int]]) -> tuple[float, int]:
        """One optimizer step over this process's micro-batches; returns the global mean loss and token count.

        The loss of every micro-batch is its summed token loss over the number of target tokens in the
        whole step (all micro-batches of all processes), so one process with accumulation and several
        processes with the same global batch compute the same update.
        """
        accelerator, model = self.accelerator, self.model
        model.train()
        inputs = [collate(self.train_pairs[batch], self.tokenizer.pad_token_id) for batch in micro_batches]
        local_tokens = sum(int((batch["labels"] != -100).sum()) for batch in inputs)
        global_tokens = accelerator.reduce(torch.tensor(local_tokens, device=accelerator.device), "sum")
        step_loss = torch.zeros((), device=accelerator.device)
        for index, batch in enumerate(inputs):
            last = index == len(inputs) - 1
            with nullcontext() if last else accelerator.no_sync(model):
                batch = {name: tensor.to(accelerator.device) for name, tensor in batch.items()}
                labels = batch.pop("labels")
                # the projection and the loss fused, without (N, V) logits; the loss in float32, also under bf16
                loss = model(**batch, decoder_input_ids=self.decoder_inputs(labels), labels=labels,
                             loss_smoothing=self.args.label_smoothing, num_items_in_batch=global_tokens,
                             return_logits=False).loss  # fmt: skip
                # data parallelism averages gradients over processes; the loss is already a global mean
                accelerator.backward(loss * accelerator.num_processes)
            step_loss += loss.detach()
        step_loss = accelerator.reduce(step_loss, "sum")
        if not torch.isfinite(step_loss):
            self.optimizer.zero_grad()
            last_good = self.last_checkpoint or "none yet (no checkpoint was saved)"
            raise TrainingDivergedError(
                f"The training loss is {step_loss.item()} at step {self.step + 1}; the run stopped before applying "
                f"that update. Last good checkpoint: {last_good}. Lower --learning_rate or raise --warmup_steps, "
                f"then continue with --resume_from_checkpoint."
            )
        if self.args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16: the loss scaler skips steps whose gradients overflow
            self.scheduler.step()
        self.optimizer.zero_grad()
        return step_loss.item(), int(global_tokens)

    # ------------------------------------------------------------------------------------------ evaluation

    def full_model(self) -> PosformerForConditionalGeneration:
        """The model with every weight on this process, to evaluate and export: the unwrapped model, or under FSDP
        a copy gathered from the shards (a collective: every process calls it). Sharded, each forward would be an
        all-gather that every process must join, which beam searches of different lengths cannot promise. Never the
        `torch.compile` wrapper (an Accelerate `dynamo_backend`): generation's changing shapes would recompile it."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if self.accelerator.distributed_type != DistributedType.FSDP:
            return model
        weights = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        copy = type(model)(model.config).to(self.accelerator.device)
        copy.load_state_dict(weights)
        return copy

    def evaluate(self, model: PosformerForConditionalGeneration, split: str, max_samples: int | None) -> dict:
        """Token-level loss over the split's pairs within the training length limits, and BLEU/chrF of
        beam-search translations of its first `max_samples` pairs (the loss is cheap; translating is what
        `max_samples` bounds). `model` is `full_model()`; the pairs are shared out over the processes."""
        pairs = self.splits[split]
        translated = pairs if max_samples is None else pairs.select(range(min(max_samples, len(pairs))))
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
        scored = self.loss_pairs(split)
        shard = range(rank, len(translated), processes)
        with self.accelerator.autocast():
            loss_sum, token_count = corpus_loss(
                model, scored.select(range(rank, len(scored), processes)), self.tokenizer.pad_token_id,
                self.args.eval_batch_size,
            )  # fmt: skip
            translations = self._translate(model, list(translated.select(shard)["source"]))
        loss_sum = self.accelerator.reduce(loss_sum, "sum").item()
        token_count = self.accelerator.reduce(token_count, "sum").item()
        hypotheses = gather_object(list(zip(shard, translations, strict=True)))
        hypotheses = [text for _, text in sorted(hypotheses)]
        scores = self.metric.compute(predictions=hypotheses, references=list(translated["target"]))
        prefix = "eval" if split == "validation" else split
        return {
            f"{prefix}_loss": loss_sum / token_count,
            **{f"{prefix}_{name}": value for name, value in scores.items()},
        }

    def loss_pairs(self, split: str) -> Dataset:
        """The split's tokenized pairs within `--max_source_length`/`--max_target_length`: the loss training
        minimises, on the lengths it trains on, and on pairs every encoding can take (a `learned` table has an end)."""
        if split not in self._loss_pairs:
            tokenized = tokenize_pairs(self.splits[split], self.tokenizer, split)
            limits = (self.data_args.max_source_length, self.data_args.max_target_length)
            table = position_limit(self.accelerator.unwrap_model(self.model).config)
            limits = limits if table is None else tuple(min(length, table) for length in limits)
            self._loss_pairs[split] = filter_by_length(tokenized, *limits, split)
        return self._loss_pairs[split]

    def _translate(self, model, sources: list[str]) -> list[str]:
        """Beam-search translations with the run's `--num_beams` and `--length_penalty`."""
        return translate(
            model, self.tokenizer, sources, self.args.eval_batch_size, show_progress=self.accelerator.is_main_process,
            num_beams=self.args.num_beams, length_penalty=self.args.length_penalty,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------ saving

    def save_checkpoint(self) -> None:
        """A resumable checkpoint of this step (`run_folder.save_checkpoint`)."""
        self.last_checkpoint = save_checkpoint(
            self.accelerator, self.output_dir, self.args.save_total_limit, self.step, data_order=self._data_order(),
            scheduler=self.scheduler.state_dict(), arguments=self._arguments(),
        )  # fmt: skip
        self.saved_step = self.step

    def finish(self) -> dict:
        """Export the (averaged) model, score the test split, report sample translations, plot the curves."""
        accelerator, args = self.accelerator, self.args
        model = self.full_model()
        kept = checkpoints(self.output_dir)[-args.average_last_checkpoints :]
        if len(kept) > 1:
            model.load_state_dict(average_checkpoints(kept), strict=False)
        results: dict = {"step": self.step, "averaged_checkpoints": max(1, len(kept))}
        if "test" in self.splits:
            results.update(self.evaluate(model, "test", self.data_args.max_test_samples))
            test = self.splits["test"].select(range(min(args.num_samples_to_show, len(self.splits["test"]))))
            results["samples"] = [
                {"source": source, "translation": translation, "reference": reference}
                for source, translation, reference in zip(
                    test["source"], self._translate(model, list(test["source"])), test["target"], strict=True
                )
            ]
        if accelerator.is_main_process:
            card = training_card_values(
                self.model_args, self.data_args, args, {split: len(pairs) for split, pairs in self.splits.items()},
                steps=self.step, processes=accelerator.num_processes, device=accelerator.device.type,
                minutes=(time.perf_counter() - self.started) / 60, model_id=str(self.output_dir / MODEL_DIR),
                results=results,
            )  # fmt: skip
            export_model(model, self.tokenizer, self.output_dir / MODEL_DIR, card)
            atomic_write_text(self.output_dir / CARD_FILE, json_text(card))
            atomic_write_text(self.output_dir / RESULTS_FILE, json_text(results))
            plot_training_curves(self.output_dir / METRICS_FILE, self.output_dir / CURVES_FILE)
            report_results(results, self.output_dir / MODEL_DIR)
        return results

    # ------------------------------------------------------------------------------------------ reporting

    def _log_training(self, window: LossWindow, progress: tqdm) -> None:
        elapsed = time.perf_counter() - window.started
        record = {
            "step": self.step,
            "train_loss": window.loss_sum / window.tokens,
            "learning_rate": self.scheduler.get_last_lr()[0],
            "target_tokens_per_second": window.tokens / elapsed,
        }
        self._log(record)
        progress.set_postfix(
            loss=f"{record['train_loss']:.3f}",
            lr=f"{record['learning_rate']:.2e}",
            tok_s=f"{record['target_tokens_per_second']:.0f}",
        )

    def _log(self, record: dict) -> None:
        """One record to the trackers and the run's metrics log; evaluations to the console too."""
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
        self.accelerator.log(scalars, step=record["step"])
        if self.accelerator.is_main_process:
            append_metrics(self.output_dir, record)
            if any(key.startswith("eval_") for key in record):
                logger.info(f"step {record['step']}: " + " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

    def _hyperparameters(self) -> dict:
        return {k: v for k, v in self._arguments().items() if isinstance(v, int | float | str | bool)}


def json_text(values: dict) -> str:
    """The JSON files of a run: indented, UTF-8 text as it is."""
    return json.dumps(values, indent=2, ensure_ascii=False)


def report_results(results: dict, model_dir: Path) -> None:
    """The end of a run on the console: test scores, sample translations, where the model is."""
    lines = []
    if "test_bleu" in results:
        lines.append(
            f"Test BLEU {results['test_bleu']:.2f}  chrF {results['test_chrf']:.2f}  loss {results['test_loss']:.3f}"
        )
    for sample in results.get("samples", []):
        lines.append(
            f"  source:      {sample['source']}\n  translation: {sample['translation']}\n"
            f"  reference:   {sample['reference']}"
        )
    lines.append(f"Model: {model_dir} (AutoModelForSeq2SeqLM / AutoTokenizer .from_pretrained)")
    logger.info("\n\n".join(lines))
