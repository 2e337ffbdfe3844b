"""What the model's input checks (`modeling/input_checks.py`) cost, against a forward pass, in one process.

    python benchmarks/input_checks.py                 # tiny and small presets, batch 32 x 64, 30 rounds
    python benchmarks/input_checks.py --rounds 1 --sizes tiny --batch 2 --length 8   # smoke test

Per round, interleaved: the checks one forward with labels runs (both stacks' ids, mask, encoder states,
labels), then for each preset a forward with labels (no grad). The ratio is the checks' median time over the
forward's: what they add to every training and evaluation step.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from posformer.configuration import PosformerConfig
from posformer.modeling import PosformerForConditionalGeneration
from posformer.modeling.input_checks import check_attention_mask, check_encoder_states, check_labels, check_stack_inputs
from posformer.training.arguments import MODEL_SIZES

VOCABULARY = 8000


def checks_of_one_forward(config: PosformerConfig, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """What `PosformerForConditionalGeneration.forward(input_ids, attention_mask, labels)` checks."""
    encoder_states = torch.empty(*ids.shape, config.d_model)

    def run() -> None:
        check_labels(labels, None, config.vocab_size)
        batch, length = check_stack_inputs("", ids, None, config, config.vocab_size)
        check_attention_mask("attention_mask", mask, batch, length, (length,), "the source")
        batch, length = check_stack_inputs("decoder_", labels, None, config, config.target_vocab_size())
        check_encoder_states(encoder_states, mask, batch, length, config.d_model)

    return run


def seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(MODEL_SIZES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    ids = torch.randint(4, VOCABULARY, (args.batch, args.length))
    labels = torch.randint(4, VOCABULARY, (args.batch, args.length))
    mask = torch.ones_like(ids)
    models = {
        size: PosformerForConditionalGeneration(
            PosformerConfig(**MODEL_SIZES[size], vocab_size=VOCABULARY, dropout=0.0)
        ).eval()
        for size in args.sizes
    }
    checks = checks_of_one_forward(next(iter(models.values())).config, ids, mask, labels)
    times: dict[str, list[float]] = {"checks": [], **{size: [] for size in models}}
    with torch.no_grad():
        for model in models.values():  # warm-up
            model(input_ids=ids, attention_mask=mask, labels=labels)
        for _ in range(args.rounds):
            times["checks"].append(seconds(checks))
            for size, model in models.items():
                forward = lambda model=model: model(input_ids=ids, attention_mask=mask, labels=labels)  # noqa: E731
                times[size].append(seconds(forward))
    median = {name: statistics.median(values) for name, values in times.items()}
    results = {
        size: {"forward_ms": median[size] * 1e3, "checks_us": median["checks"] * 1e6,
               "share": median["checks"] / median[size]}
        for size in models
    }  # fmt: skip
    print(f"batch {args.batch} x {args.length}, vocabulary {VOCABULARY}, medians of {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("| preset | forward with labels (no grad) | input checks | share |\n|---|---|---|---|")
    for size, figures in results.items():
        print(f"| {size} | {figures['forward_ms']:.1f} ms | {figures['checks_us']:.0f} µs | {figures['share']:.3%} |")
    return results


if __name__ == "__main__":
    main()
