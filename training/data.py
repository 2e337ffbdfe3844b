"""Tokenizing and batching parallel data: a shared BPE tokenizer, tokenized pairs within the length limits, and
token-capped, length-bucketed batches. Where the pairs come from, and their checks, is `parallel_data.py`'s.
"""

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A BPE shared by source and target (Sennrich et al., 2016), trained with `tokenizers`.

    NFKC normalisation, Metaspace pre-tokenisation (so decoding restores the spaces), `</s>` appended to
    every encoded text; special ids `<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3 (PosformerConfig's defaults).
    """
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos = SPECIAL_TOKENS["eos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def load_or_train_tokenizer(data_args, train_pairs: Dataset) -> PreTrainedTokenizerBase:
    if data_args.tokenizer_name is not None:
        return AutoTokenizer.from_pretrained(data_args.tokenizer_name)

    def texts() -> Iterator[str]:
        for batch in train_pairs.iter(batch_size=1000):
            yield from batch["source"]
            yield from batch["target"]

    return train_bpe_tokenizer(texts(), data_args.tokenizer_vocab_size)


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The config's token ids: decoding starts with `<s>` (or, without one, the pad token as in Marian)."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
    return dict(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=start,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=start,
    )


def tokenize_pairs(
    pairs: Dataset, tokenizer: PreTrainedTokenizerBase, split: str, num_proc: int | None = None
) -> Dataset:
    """Add `input_ids` and `labels` (both ending in `</s>`), with `num_proc` worker processes."""

    def encode(batch):
        encoded = tokenizer(batch["source"], text_target=batch["target"], add_special_tokens=True)
        return {"input_ids": encoded["input_ids"], "labels": encoded["labels"]}

    return pairs.map(encode, batched=True, num_proc=num_proc, desc=f"{split}: tokenize")


def filter_by_length(
    dataset: Dataset, max_source_length: int, max_target_length: int, split: str = "train", num_proc: int | None = None
) -> Dataset:
    """Tokenized pairs whose source and target fit the limits (and are not empty)."""
    return dataset.filter(
        lambda ids, labels: 1 < len(ids) <= max_source_length and 1 < len(labels) <= max_target_length,
        input_columns=["input_ids", "labels"],
        num_proc=num_proc,
        desc=f"{split}: length filter",
    )


@dataclass
class TokenBatches:
    """Length-bucketed batches of at most `max_tokens` padded tokens (larger side), sharded across processes.

    Every epoch: shuffle, stable-sort by length (so equal lengths stay shuffled), cut greedily into
    batches with `size * longest <= max_tokens`, shuffle the batches; process `r` of `n` takes batches
    `r, r + n, ...` and every process gets the same number. Deterministic in `(seed, epoch)`, so a
    resumed run sees the same batches as an uninterrupted one.
    """

    lengths: list[int]
    max_tokens: int
    seed: int
    process_index: int = 0
    num_processes: int = 1

    def __post_init__(self) -> None:
        longest = max(self.lengths)
        if longest > self.max_tokens:
            raise ValueError(
                f"--max_tokens {self.max_tokens} is smaller than the longest training pair ({longest} tokens), "
                f"so that pair fits in no batch. Raise --max_tokens, or lower --max_source_length/--max_target_length."
            )
        self.batches_per_epoch = len(self.epoch(0))
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The training data make fewer batches than there are processes ({self.num_processes}). "
                "Use more data or a smaller --max_tokens."
            )

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        order.sort(key=self.lengths.__getitem__)
        batches, current, longest = [], [], 0
        for index in order:
            longest_if_added = max(longest, self.lengths[index])
            if current and longest_if_added * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current, longest_if_added = [], self.lengths[index]
            current.append(index)
            longest = longest_if_added
        batches.append(current)
        rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.num_processes
        return batches[self.process_index : usable : self.num_processes]

    def iterate(self, start: int = 0) -> Iterator[list[int]]:
        """This process's batches forever, skipping the first `start` (a resumed run's position)."""
        epoch, offset = divmod(start, self.batches_per_epoch)
        while True:
            yield from self.epoch(epoch)[offset:]
            epoch, offset = epoch + 1, 0


def pair_lengths(pairs: Dataset) -> list[int]:
    """Each tokenized pair's longer side, `max(len(input_ids), len(labels))`, computed in Arrow (a Python loop
    over WMT14's 4.5M pairs takes about a minute; this, a fraction of a second)."""
    columns = pairs.with_format("arrow")
    sides = (pc.list_value_length(columns[name]) for name in ("input_ids", "labels"))
    return pc.max_element_wise(*sides).to_pylist()


def collate(rows: pa.Table, pad_token_id: int) -> dict[str, torch.Tensor]:
    """A batch from the Arrow rows of tokenized pairs (`dataset.with_format("arrow")[indices]`: one take per
    batch): `input_ids` right-padded with the pad id, its `attention_mask`, and `labels` right-padded with -100.
    Padding is vectorised (no Python loop over pairs or tokens)."""
    input_ids, lengths = _right_padded(rows["input_ids"], pad_token_id)
    labels, _ = _right_padded(rows["labels"], -100)
    attention_mask = (torch.arange(input_ids.shape[1]) < lengths[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _right_padded(column: pa.ChunkedArray, value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(n, longest)` int64 tensor of the column's `n` lists right-padded with `value`, and their `(n,)` lengths."""
    lists = column.combine_chunks()
    lengths = torch.from_numpy(pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64))
    values = torch.from_numpy(lists.flatten().to_numpy(zero_copy_only=False).astype(np.int64))
    padded = torch.full((len(lengths), int(lengths.max())), value, dtype=torch.long)
    padded[torch.arange(padded.shape[1]) < lengths[:, None]] = values
    return padded, lengths
