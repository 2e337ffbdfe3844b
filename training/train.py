"""`posformer-train`: train a posformer translation model from scratch with Accelerate.

The same script runs on one CPU, one GPU, or many (`accelerate launch -m posformer.training`, with
whatever an Accelerate config selects: DDP, FSDP, bf16/fp16, several nodes). The recipe is the paper's:
AdamW (0.9, 0.98, 1e-9), linear warmup then inverse-square-root decay, label smoothing 0.1, dropout,
gradient clipping, token-capped length-bucketed batches; evaluation decodes with beam search.

Output folder:
    tokenizer/                 the tokenizer of the run (trained once, reused on resume)
    checkpoints/checkpoint-N/  Accelerate states every --save_steps (the last --save_total_limit kept)
    metrics.jsonl              one JSON object per log/eval event
    training_curves.png        loss and BLEU/chrF against steps
    model/                     the final (optionally averaged) model: safetensors, tokenizer,
                               generation config, model card; loads with AutoModelForSeq2SeqLM
    results.json               test BLEU/chrF and sample translations
    card.json                  the run's model-card values (read by `posformer-export`)
"""

import json
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, is_tensorboard_available, set_seed
from accelerate.utils import load as load_accelerate_file
from accelerate.utils.constants import RNG_STATE_NAME
from datasets import Dataset
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import StateDictType
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_inverse_sqrt_schedule

from ..modeling import POSITION_ENCODINGS, PosformerForConditionalGeneration
from ..modeling.modeling_posformer import seq2seq_loss
from .arguments import build_config, parse_args
from .data import (
    TokenBatches,
    collate,
    filter_by_length,
    load_or_train_tokenizer,
    load_parallel_data,
    pair_lengths,
    prepare_splits,
    special_token_ids,
    tokenize_pairs,
)
from .export import (
    CHECKPOINT_READ_ERRORS,
    atomic_directory,
    atomic_write_text,
    average_checkpoints,
    checkpoint_error_reason,
    export_model,
    plot_training_curves,
    replace_directory,
)
from .metrics import load_translation_metric

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
RESULTS_FILE = "results.json"
CARD_FILE = "card.json"  # the run's model-card values, for `posformer-export`


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


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a checkpoint is complete once its state file exists)."""
    folder = output_dir / "checkpoints"
    found = [path for path in folder.glob(f"{CHECKPOINT_PREFIX}*") if (path / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(checkpoint: Path) -> int:
    """The step of `checkpoints/checkpoint-N`: N."""
    return int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX))


def resolve_resume(output_dir: Path, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint to continue from; refuses to start a fresh run on top of an existing one."""
    existing = checkpoints(output_dir)
    if resume_from_checkpoint is None:
        if existing:
            raise ValueError(
                f"{output_dir} already holds a run ({existing[-1].name}). Continue it with "
                f"--resume_from_checkpoint latest, or choose another --output_dir."
            )
        return None
    if resume_from_checkpoint == "latest":
        if not existing:
            raise ValueError(f"--resume_from_checkpoint latest: {output_dir / 'checkpoints'} holds no checkpoint.")
        return existing[-1]
    path = Path(resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"--resume_from_checkpoint {path}: not a complete checkpoint (no {STATE_FILE}).")
    return path


def position_limit(config) -> int | None:
    """The most positions the model can encode: `max_position_embeddings` for a table encoding (`learned`), none
    for the others; for a model that is not posformer (Marian's sinusoids are a table too), its
    `max_position_embeddings` when it has one."""
    encoding = POSITION_ENCODINGS.get(getattr(config, "position_encoding", None))
    if encoding is not None and not encoding.bounded_by_max_positions:
        return None
    return getattr(config, "max_position_embeddings", None)


class Trainer:
    """One training run: data, model, optimizer and the loop around them."""

    def __init__(self, model_args, data_args, train_args) -> None:
        self.model_args, self.data_args, self.args = model_args, data_args, train_args
        self.output_dir = Path(train_args.output_dir)
        report_to = train_args.report_to
        if report_to == "auto":
            report_to = "tensorboard" if is_tensorboard_available() else None
        self.accelerator = Accelerator(log_with=None if report_to == "none" else report_to, project_dir=self.output_dir)
        self.resume_from = resolve_resume(self.output_dir, train_args.resume_from_checkpoint)
        set_seed(train_args.seed)
        self.tokenizer, self.splits = self._prepare_data()
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
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.batches = TokenBatches(
            lengths=pair_lengths(self.train_pairs),
            max_tokens=train_args.max_tokens,
            seed=train_args.seed,
            process_index=self.accelerator.process_index,
            num_processes=self.accelerator.num_processes,
        )
        self.step = 0
        if self.resume_from is not None:
            self._load_checkpoint(self.resume_from)
        self.last_checkpoint: Path | None = self.resume_from
        self.saved_step: int | None = self.step if self.resume_from is not None else None
        self.metric = load_translation_metric()
        self._loss_pairs: dict[str, Dataset] = {}
        self.started = time.perf_counter()

    # ------------------------------------------------------------------------------------------ setup

    def _load_checkpoint(self, checkpoint: Path) -> None:
        """Restore weights, optimizer, schedule, random states and the step; a damaged checkpoint is a clear error
        that names an intact earlier one."""
        state = json.loads((checkpoint / STATE_FILE).read_text())
        try:
            # Accelerate skips a damaged random-state file (and would resume with other dropout masks): read it first
            load_accelerate_file(checkpoint / f"{RNG_STATE_NAME}_{self.accelerator.process_index}.pkl")
            self.accelerator.load_state(str(checkpoint))
        except CHECKPOINT_READ_ERRORS as error:
            earlier = [path for path in checkpoints(self.output_dir) if checkpoint_step(path) < state["step"]]
            hint = f"--resume_from_checkpoint {earlier[-1]}" if earlier else "none is left; start a new run"
            raise ValueError(
                f"Cannot resume from {checkpoint}: {checkpoint_error_reason(error)}. The checkpoint is damaged "
                f"(truncated, corrupt or incomplete). An earlier one: {hint}."
            ) from error
        self.step = state["step"]
        self._warn_if_the_data_order_changed(checkpoint, state.get("data_order", {}))

    def _warn_if_the_data_order_changed(self, checkpoint: Path, saved: dict[str, int]) -> None:
        """Resuming on another number of processes (or batch size, ...) is legitimate, but the batches after the
        checkpoint then differ from those of the uninterrupted run: say so."""
        now = self._data_order()
        changed = {name: before for name, before in saved.items() if now.get(name) != before}
        if changed:
            differences = ", ".join(f"{name} {before} -> {now.get(name)}" for name, before in changed.items())
            warnings.warn(
                f"Resuming {checkpoint} with another data order ({differences}): training continues correctly, but "
                f"its batches after step {self.step} are not those of the uninterrupted run.",
                stacklevel=3,
            )

    def _data_order(self) -> dict[str, int]:
        """What decides which pairs make up the batch of each step (saved with every checkpoint)."""
        return {
            "seed": self.args.seed,
            "max_tokens": self.args.max_tokens,
            "gradient_accumulation_steps": self.args.gradient_accumulation_steps,
            "num_processes": self.accelerator.num_processes,
            "training_pairs": len(self.train_pairs),
        }

    def _prepare_data(self):
        accelerator, data_args = self.accelerator, self.data_args
        with accelerator.main_process_first():
            pairs = prepare_splits(load_parallel_data(data_args), data_args)
            tokenizer_dir = self.output_dir / "tokenizer"
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
        self.train_pairs = train.select_columns(["input_ids", "labels"]).with_format("arrow")
        return tokenizer, pairs

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
        self._refuse_checkpoints_that_cannot_resume(model)
        return model

    def _refuse_checkpoints_that_cannot_resume(self, model: torch.nn.Module) -> None:
        """FSDP2 with a FULL_STATE_DICT writes checkpoints that `load_state` cannot load into a model with tied
        weights (torch's `set_model_state_dict(broadcast_from_rank0=True)` looks the tied names up among the
        deduplicated parameters: KeyError); refuse before training rather than on the first resume."""
        if not self.accelerator.is_fsdp2:
            return
        if self.accelerator.state.fsdp_plugin.state_dict_type != StateDictType.FULL_STATE_DICT:
            return
        if len(dict(model.named_parameters(remove_duplicate=False))) > len(dict(model.named_parameters())):
            raise ValueError(
                "FSDP2 with fsdp_state_dict_type FULL_STATE_DICT saves checkpoints that cannot be resumed for a "
                "model with tied embeddings (a limitation of torch.distributed.checkpoint). Use "
                "SHARDED_STATE_DICT, Accelerate's default (`accelerate launch --fsdp_state_dict_type "
                "SHARDED_STATE_DICT`, or fsdp_state_dict_type in the Accelerate config); the export still writes "
                "one safetensors file."
            )

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
                if self._due(args.eval_steps):
                    scores = self.evaluate(self.full_model(), "validation", self.data_args.max_eval_samples)
                    self._log({"step": self.step, **scores})
                if self._due(args.save_steps):
                    self.save_checkpoint()
        progress.close()
        accelerator.wait_for_everyone()
        results = self.finish()
        accelerator.end_training()
        return results

    def _due(self, every: int) -> bool:
        """Whether a periodic action falls on this step (the last step always does)."""
        return self.step % every == 0 or self.step == self.args.max_steps

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
                # the loss is taken here, not inside the model: FSDP's bf16 policy casts the model's outputs, which
                # would round a loss returned by the model to bf16 (about 0.03 at 4.6)
                logits = model(**batch, decoder_input_ids=self.decoder_inputs(labels)).logits
                loss = seq2seq_loss(logits, labels, self.args.label_smoothing, global_tokens)
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

    @torch.no_grad()
    def evaluate(self, model: PosformerForConditionalGeneration, split: str, max_samples: int | None) -> dict:
        """Token-level loss over the split's pairs within the training length limits, and BLEU/chrF of
        beam-search translations of its first `max_samples` pairs (the loss is cheap; translating is what
        `max_samples` bounds). `model` is `full_model()`; the pairs are shared out over the processes."""
        pairs = self.splits[split]
        translated = pairs if max_samples is None else pairs.select(range(min(max_samples, len(pairs))))
        model.eval()
        rank, processes = self.accelerator.process_index, self.accelerator.num_processes
        scored = self.loss_pairs(split)
        mine = scored.select(range(rank, len(scored), processes))
        shard = range(rank, len(translated), processes)
        with self.accelerator.autocast():
            loss_sum, token_count = self._loss_sum(model, list(mine["source"]), list(mine["target"]))
            translations = self.translate(model, list(translated.select(shard)["source"]))
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
        """The split's pairs within `--max_source_length`/`--max_target_length`: the loss training minimises, on
        the lengths it trains on, and on pairs every encoding can take (a `learned` table has an end)."""
        if split not in self._loss_pairs:
            tokenized = tokenize_pairs(self.splits[split], self.tokenizer, split)
            limits = (self.data_args.max_source_length, self.data_args.max_target_length)
            table = position_limit(self.accelerator.unwrap_model(self.model).config)
            limits = limits if table is None else tuple(min(length, table) for length in limits)
            self._loss_pairs[split] = filter_by_length(tokenized, *limits, split).select_columns(["source", "target"])
        return self._loss_pairs[split]

    def _loss_sum(self, model, sources: list[str], targets: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed token cross-entropy (no label smoothing) and the number of target tokens."""
        total = torch.zeros((), device=self.accelerator.device)
        count = torch.zeros((), device=self.accelerator.device, dtype=torch.long)
        size = self.args.eval_batch_size
        for start in range(0, len(sources), size):
            encoded = self.tokenizer(
                sources[start : start + size], text_target=targets[start : start + size], padding=True,
                return_tensors="pt",
            )  # fmt: skip
            labels = encoded["labels"].masked_fill(encoded["labels"] == self.tokenizer.pad_token_id, -100)
            logits = model(  # no `labels`: the model's own (smoothed) loss would be computed and discarded
                input_ids=encoded["input_ids"].to(total.device),
                attention_mask=encoded["attention_mask"].to(total.device),
                decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels).to(total.device),
            ).logits
            total += seq2seq_loss(logits, labels, label_smoothing=0.0, num_items_in_batch=1)  # the sum
            count += (labels != -100).sum().to(total.device)
        return total, count

    def translate(self, model, sources: list[str]) -> list[str]:
        """Beam-search translations, in the order of `sources` (batched by length for speed). With a position
        table (`learned`), sources are truncated to it and translations stop at its end, instead of failing."""
        limit = position_limit(model.config)
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        translations: dict[int, str] = {}
        size = self.args.eval_batch_size
        batches = tqdm(
            range(0, len(order), size), desc="translating", leave=False, disable=not self.accelerator.is_main_process
        )
        for start in batches:
            indices = order[start : start + size]
            encoded = self.tokenizer(
                [sources[i] for i in indices], padding=True, truncation=limit is not None, max_length=limit,
                return_tensors="pt",
            )  # fmt: skip
            max_new_tokens = int(encoded["input_ids"].shape[1] * 1.5) + 10
            generated = model.generate(
                **encoded.to(self.accelerator.device),
                num_beams=self.args.num_beams,
                length_penalty=self.args.length_penalty,
                max_new_tokens=max_new_tokens if limit is None else min(max_new_tokens, limit - 1),
            )
            for index, text in zip(
                indices, self.tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True
            ):
                translations[index] = text
        return [translations[i] for i in range(len(sources))]

    # ------------------------------------------------------------------------------------------ saving

    def save_checkpoint(self) -> None:
        """An Accelerate state of this step, written aside and renamed into place; the oldest beyond the limit go."""
        accelerator = self.accelerator
        final = self.output_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step}"
        staging = final.with_name(f".{final.name}.partial")
        if accelerator.is_main_process and staging.exists():
            shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (staging / STATE_FILE).write_text(json.dumps({"step": self.step, "data_order": self._data_order()}))
            replace_directory(staging, final)  # a checkpoint of an abandoned continuation may hold the name
            for old in checkpoints(self.output_dir)[: -self.args.save_total_limit]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        self.last_checkpoint, self.saved_step = final, self.step

    def finish(self) -> dict:
        """Export the (averaged) model, score the test split, print sample translations, plot the curves."""
        accelerator, args = self.accelerator, self.args
        model = self.full_model()
        if args.average_last_checkpoints > 1:
            kept = checkpoints(self.output_dir)[-args.average_last_checkpoints :]
            model.load_state_dict(average_checkpoints(kept), strict=False)
        results: dict = {"step": self.step, "averaged_checkpoints": max(1, args.average_last_checkpoints)}
        if "test" in self.splits:
            results.update(self.evaluate(model, "test", self.data_args.max_test_samples))
            sources = list(self.splits["test"]["source"][: args.num_samples_to_show])
            results["samples"] = [
                {"source": source, "translation": translation, "reference": reference}
                for source, translation, reference in zip(
                    sources,
                    self.translate(model, sources),
                    self.splits["test"]["target"][: args.num_samples_to_show],
                    strict=True,
                )
            ]
        if accelerator.is_main_process:
            card = self._card(results)
            export_model(model, self.tokenizer, self.output_dir / "model", card)
            atomic_write_text(self.output_dir / CARD_FILE, json.dumps(card, indent=2, ensure_ascii=False))
            atomic_write_text(self.output_dir / RESULTS_FILE, json.dumps(results, indent=2, ensure_ascii=False))
            plot_training_curves(self.output_dir / "metrics.jsonl", self.output_dir / "training_curves.png")
            self._print_results(results)
        return results

    # ------------------------------------------------------------------------------------------ reporting

    def _log(self, record: dict) -> None:
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
        self.accelerator.log(scalars, step=record["step"])
        if self.accelerator.is_main_process:
            with open(self.output_dir / "metrics.jsonl", "a") as file:
                file.write(json.dumps(record) + "\n")
            if any(key.startswith("eval_") for key in record):
                tqdm.write(" ".join(f"{k}={v:.4g}" for k, v in scalars.items()))

    def _hyperparameters(self) -> dict:
        values = {**vars(self.model_args), **vars(self.data_args), **vars(self.args)}
        return {k: v for k, v in values.items() if isinstance(v, int | float | str | bool)}

    def _card(self, results: dict) -> dict:
        """The run-specific values of the model card (`export.py` lists the keys; the model fills the rest)."""
        args, data_args = self.args, self.data_args
        source, target = data_args.source_lang, data_args.target_lang
        builtin = data_args.dataset_name is None and data_args.train_file is None
        dataset = data_args.dataset_name or ("posformer-builtin-en-de" if builtin else "local-files")
        sizes = ", ".join(f"{len(pairs):,} {split}" for split, pairs in self.splits.items())
        if builtin:
            description = (
                "The built-in corpus shipped with posformer: English-German message pairs written by free-software "
                "translators in the gettext catalogs of Debian packages (see `training/corpus/en-de/README.md` for "
                f"provenance and the licence of each catalog). Sentence pairs: {sizes}."
            )
        else:
            description = f"{dataset} {data_args.dataset_config_name or ''}".strip() + f". Sentence pairs: {sizes}."
        averaged = max(1, args.average_last_checkpoints)
        return {
            "model_name": f"posformer-{self.model_args.model_size}-{self.model_args.position_encoding}"
            f"-{source}-{target}",
            "model_id": str(self.output_dir / "model"),
            "license": "other" if builtin else "apache-2.0",
            "source_language": source,
            "target_language": target,
            "dataset": dataset,
            "dataset_name": "Debian gettext catalogs, English-German" if builtin else dataset,
            "dataset_description": description,
            "tokenizer_description": data_args.tokenizer_name
            or f"a BPE of {data_args.tokenizer_vocab_size} tokens trained on the training split",
            "test_split": "test",
            "train_steps": self.step,
            "tokens_per_batch": args.max_tokens * args.gradient_accumulation_steps * self.accelerator.num_processes,
            "optimizer": f"AdamW ({args.adam_beta1}, {args.adam_beta2}, {args.adam_epsilon}), linear warmup then "
            "inverse square root decay",
            "learning_rate": args.learning_rate,
            "warmup_steps": args.warmup_steps,
            "label_smoothing": args.label_smoothing,
            "checkpoint_averaging": f"mean of the last {averaged} checkpoints" if averaged > 1 else "none",
            "seed": args.seed,
            "hardware": f"{self.accelerator.num_processes} x {self.accelerator.device.type}",
            "training_time": f"{(time.perf_counter() - self.started) / 60:.1f} min (this session)",
            "bleu": results.get("test_bleu", float("nan")),
            "chrf": results.get("test_chrf", float("nan")),
            "bleu_signature": results.get("test_bleu_signature", "not scored"),
            "chrf_signature": results.get("test_chrf_signature", "not scored"),
        }

    def _print_results(self, results: dict) -> None:
        if "test_bleu" in results:
            print(
                f"\nTest BLEU {results['test_bleu']:.2f}  chrF {results['test_chrf']:.2f}  "
                f"loss {results['test_loss']:.3f}"
            )
        for sample in results.get("samples", []):
            print(f"\n  source:      {sample['source']}\n  translation: {sample['translation']}")
            print(f"  reference:   {sample['reference']}")
        print(f"\nModel: {self.output_dir / 'model'} (AutoModelForSeq2SeqLM / AutoTokenizer .from_pretrained)")


def main(argv: list[str] | None = None) -> dict:
    """Parse the command line, train, export; returns the final results."""
    model_args, data_args, train_args = parse_args(argv)
    return Trainer(model_args, data_args, train_args).train()
