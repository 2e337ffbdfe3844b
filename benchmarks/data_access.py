"""How posformer-train reads tokenized pairs, against reading them one row at a time, in one process.

    python benchmarks/data_access.py                      # 400,000 synthetic pairs, 800-pair batches
    python benchmarks/data_access.py --pairs 1000 --rounds 1   # smoke test

Two operations a run does on the training split (an Arrow-backed `datasets.Dataset` of `input_ids`/`labels`):
the length of every pair, once at start (for the token-capped batches), and the rows of each batch, once per
step. Timed both ways: the training loop's (`data.pair_lengths`: Arrow compute; `data.collate` of one Arrow take:
vectorised padding) and Python loops over the dataset's columns, row by row (the same results, asserted).
Median of `--rounds` rounds.
"""

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
from datasets import Dataset

from posformer.training.data import collate, pair_lengths


def synthetic_pairs(count: int, seed: int = 0) -> Dataset:
    """`count` tokenized pairs of 10-50 source and 10-40 target tokens, filtered as a run filters them (so the
    dataset carries an indices mapping, like the training split does)."""
    rng = random.Random(seed)
    rows = {
        "input_ids": [[rng.randrange(4, 8000) for _ in range(rng.randint(10, 50))] for _ in range(count + count // 10)],
        "labels": [[rng.randrange(4, 8000) for _ in range(rng.randint(10, 40))] for _ in range(count + count // 10)],
    }
    dataset = Dataset.from_dict(rows)
    return dataset.select(range(count))


def median_seconds(function: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark(pairs: int, batch_size: int, rounds: int) -> dict[str, dict[str, float]]:
    dataset = synthetic_pairs(pairs)
    sources, targets = dataset["input_ids"], dataset["labels"]
    batch = random.Random(1).sample(range(pairs), min(batch_size, pairs))

    def lengths_row_by_row() -> list[int]:
        return [max(len(a), len(b)) for a, b in zip(sources, targets, strict=True)]

    def batch_row_by_row() -> dict[str, torch.Tensor]:
        return padded_row_by_row([sources[i] for i in batch], [targets[i] for i in batch], 0)

    def batch_from_arrow() -> dict[str, torch.Tensor]:
        return collate(dataset.with_format("arrow")[batch], 0)

    assert pair_lengths(dataset) == lengths_row_by_row()
    arrow, rows = batch_from_arrow(), batch_row_by_row()
    assert arrow.keys() == rows.keys() and all(torch.equal(arrow[name], rows[name]) for name in arrow)
    return {
        "pair lengths (all pairs)": {
            "arrow": median_seconds(lambda: pair_lengths(dataset), rounds),
            "row by row": median_seconds(lengths_row_by_row, rounds),
        },
        f"one padded batch of {len(batch)} pairs": {
            "arrow": median_seconds(batch_from_arrow, rounds),
            "row by row": median_seconds(batch_row_by_row, rounds),
        },
    }


def padded_row_by_row(sources: list[list[int]], targets: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """The batch `collate` builds, built with Python lists (what the training loop did before)."""

    def pad_to_longest(sequences: list[list[int]], value: int) -> torch.Tensor:
        longest = max(len(sequence) for sequence in sequences)
        return torch.tensor([sequence + [value] * (longest - len(sequence)) for sequence in sequences])

    return {
        "input_ids": pad_to_longest(sources, pad),
        "attention_mask": pad_to_longest([[1] * len(ids) for ids in sources], 0),
        "labels": pad_to_longest(targets, -100),
    }


def table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| operation | Arrow (posformer-train) | row by row | speed-up |", "|---|---|---|---|"]
    for operation, times in results.items():
        lines.append(
            f"| {operation} | {times['arrow'] * 1e3:.1f} ms | {times['row by row'] * 1e3:.1f} ms "
            f"| {times['row by row'] / times['arrow']:.0f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=400_000, help="Tokenized pairs in the synthetic split.")
    parser.add_argument("--batch_size", type=int, default=800, help="Pairs per batch.")
    parser.add_argument("--rounds", type=int, default=5, help="Rounds per operation (median reported).")
    args = parser.parse_args(argv)
    results = benchmark(args.pairs, args.batch_size, args.rounds)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
