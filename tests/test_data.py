"""Batches from Arrow: `collate` and `pair_lengths` equal plain Python padding and lengths (the oracle), on a split
as a run sees it (several Arrow chunks, filtered through an indices mapping, pairs taken in any order)."""

import random

import torch
from datasets import Dataset, concatenate_datasets

from posformer.training.data import collate, filter_by_length, pair_lengths


def ragged_pairs(count: int, seed: int) -> Dataset:
    rng = random.Random(seed)
    return Dataset.from_dict(
        {
            "input_ids": [[rng.randrange(4, 99) for _ in range(rng.randint(1, 12))] for _ in range(count)],
            "labels": [[rng.randrange(4, 99) for _ in range(rng.randint(1, 9))] for _ in range(count)],
        }
    )


def padded(sequences: list[list[int]], value: int) -> torch.Tensor:
    longest = max(len(sequence) for sequence in sequences)
    return torch.tensor([sequence + [value] * (longest - len(sequence)) for sequence in sequences])


def test_collate_and_lengths_equal_python_padding_on_a_filtered_multi_chunk_split():
    split = filter_by_length(concatenate_datasets([ragged_pairs(60, 1), ragged_pairs(50, 2)]), 10, 8)
    assert 0 < len(split) < 110 and split._indices is not None
    rows = split.with_format("arrow")
    lengths = [max(len(a), len(b)) for a, b in zip(split["input_ids"], split["labels"], strict=True)]
    assert pair_lengths(split) == lengths
    for batch in ([5], random.Random(3).sample(range(len(split)), 17), list(range(len(split)))[::-1]):
        sources, targets = [split[i]["input_ids"] for i in batch], [split[i]["labels"] for i in batch]
        expected = {
            "input_ids": padded(sources, 0),
            "attention_mask": padded([[1] * len(ids) for ids in sources], 0),
            "labels": padded(targets, -100),
        }
        actual = collate(rows[batch], pad_token_id=0)
        assert actual.keys() == expected.keys()
        for name in expected:
            assert actual[name].dtype == torch.long and torch.equal(actual[name], expected[name]), name
