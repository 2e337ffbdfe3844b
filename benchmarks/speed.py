"""Speed and memory of posformer against transformers' MarianMTModel at identical size, in one process.

    python benchmarks/speed.py                         # 2-core CPU defaults: vocab 8000, d_model 256, 3+3 layers
    python benchmarks/speed.py --rounds 1 --tiny       # smoke test
    python benchmarks/speed.py --device cuda --dtype bf16

Every workload runs in interleaved rounds (ours, Marian, ours, ...) so that machine noise hits both alike;
the table reports the median time of each and the ratio ours/peer (lower is better), then every position
encoding of ours relative to our `sinusoidal` (a separate interleaved group, so that neither comparison is
timed in the other's allocator state). Workloads: a training step (forward + backward + AdamW) on a
batch of 32 x 64 tokens, cached greedy generation of 64 new tokens for 8 sentences, and 4-beam search; and
the peak memory of the training step (CUDA: allocator peak; CPU: the tensors a profiler sees allocated).
`--profile` adds where the time goes: one profiled training step and greedy generation of posformer and Marian,
their operators' own time summed by kind (matrix multiplies, attention, softmax and loss, ...).
"""

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import MarianConfig, MarianMTModel

from posformer.configuration import PosformerConfig
from posformer.modeling import POSITION_ENCODINGS, PosformerForConditionalGeneration


@dataclass
class Size:
    vocab_size: int = 8000
    d_model: int = 256
    layers: int = 3
    heads: int = 4
    ffn: int = 1024
    batch: int = 32
    length: int = 64
    generate_batch: int = 8
    new_tokens: int = 64


TINY = Size(vocab_size=500, d_model=32, layers=1, heads=2, ffn=64, batch=4, length=12, generate_batch=2, new_tokens=6)


def common_fields(size: Size) -> dict:
    return dict(
        vocab_size=size.vocab_size, d_model=size.d_model, encoder_layers=size.layers, decoder_layers=size.layers,
        encoder_attention_heads=size.heads, decoder_attention_heads=size.heads, encoder_ffn_dim=size.ffn,
        decoder_ffn_dim=size.ffn, activation_function="relu", scale_embedding=True, dropout=0.1,
        max_position_embeddings=512, pad_token_id=0, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip


def posformer(size: Size, position_encoding: str) -> PosformerForConditionalGeneration:
    config = PosformerConfig(**common_fields(size), bos_token_id=1, position_encoding=position_encoding)
    return PosformerForConditionalGeneration(config)


def marian(size: Size) -> MarianMTModel:
    return MarianMTModel(MarianConfig(**common_fields(size), forced_eos_token_id=None))


def batch(size: Size, rows: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, size.vocab_size, (rows, size.length), generator=generator)
    labels = torch.randint(4, size.vocab_size, (rows, size.length), generator=generator)
    return {"input_ids": input_ids.to(device), "labels": labels.to(device)}


def training_step(model, optimizer, inputs) -> Callable[[], None]:
    def step() -> None:
        model.train()
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def generation(model, inputs, size: Size, num_beams: int) -> Callable[[], None]:
    def run() -> None:
        model.eval()
        with torch.no_grad():
            model.generate(
                input_ids=inputs["input_ids"], max_new_tokens=size.new_tokens, min_new_tokens=size.new_tokens,
                num_beams=num_beams, do_sample=False, use_cache=True,
            )  # fmt: skip

    return run


def timed(function: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_memory(function: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by one call: CUDA's allocator peak, or on CPU the profiler's memory timeline."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        function()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    current = peak = 0
    events = sorted(  # self usage: an op's total would count its children's allocations again
        (event for event in profiler.events() if event.self_cpu_memory_usage),
        key=lambda event: event.time_range.start,
    )
    for event in events:
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


# Kinds of operator time, first match wins; names are the profiler's (`aten::addmm`, ...).
PROFILE_KINDS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("matrix multiplies", lambda name: name in {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}),
    ("attention kernel", lambda name: "scaled_dot_product" in name),
    ("softmax and cross-entropy", lambda name: "softmax" in name or "nll_loss" in name),
    ("dropout masks", lambda name: "bernoulli" in name or "dropout" in name),
    ("layer norm", lambda name: "layer_norm" in name),
    ("concatenation (caches)", lambda name: name == "aten::cat"),
)
OPTIMIZER = "optimizer (AdamW)"
OTHER = "other operators (element-wise, copies, fills)"


def operator_kind(event) -> str:
    """The `PROFILE_KINDS` entry of a profiler event; anything run inside `optimizer.step()` is the optimizer's."""
    parent = event
    while parent is not None:
        if parent.name.startswith("Optimizer."):
            return OPTIMIZER
        parent = parent.cpu_parent
    return next((kind for kind, matches in PROFILE_KINDS if matches(event.name)), OTHER)


def time_by_kind(function: Callable[[], None], calls: int = 3) -> dict[str, float]:
    """Seconds of operator self time per kind, averaged over `calls` calls (self time: nested operators are not
    counted twice). One call is noisy on CPU: an allocation's page faults land on whichever operator touches it."""
    kinds = dict.fromkeys([kind for kind, _ in PROFILE_KINDS] + [OPTIMIZER, OTHER], 0.0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(calls):
            function()
    for event in profiler.events():
        kinds[operator_kind(event)] += event.self_cpu_time_total / 1e6 / calls
    return kinds


def compare(workloads: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each workload over `rounds` interleaved rounds (after one warm-up call each)."""
    for function in workloads.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in workloads}
    for _ in range(rounds):
        for name, function in workloads.items():
            times[name].append(timed(function, device))
    return {name: statistics.median(values) for name, values in times.items()}


def workload_functions(models: dict, optimizers: dict, inputs: dict, size: Size) -> dict[str, dict]:
    """Workload -> model name -> the call to time."""
    return {
        "training step": {name: training_step(m, optimizers[name], inputs["train"]) for name, m in models.items()},
        "greedy generation": {name: generation(m, inputs["generate"], size, 1) for name, m in models.items()},
        "beam search (4)": {name: generation(m, inputs["generate"], size, 4) for name, m in models.items()},
    }


def measure(models: dict, size: Size, rounds: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Median seconds per workload and model (interleaved among `models` only), and peak training bytes."""
    inputs = {"train": batch(size, size.batch, device), "generate": batch(size, size.generate_batch, device)}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    functions = workload_functions(models, optimizers, inputs, size)
    results = {workload: compare(calls, rounds, device) for workload, calls in functions.items()}
    results["peak training memory (bytes)"] = {
        name: peak_memory(call, device) for name, call in functions["training step"].items()
    }
    return results


def benchmark(size: Size, rounds: int, device: torch.device, dtype: torch.dtype, profile: bool = False) -> dict:
    """posformer (`sinusoidal`) against Marian on identical weights, then every encoding of ours.

    The two comparisons run as separate interleaved groups: timing a model beside nine others would measure the
    allocator state they leave behind (on CPU, which freed blocks go back to the OS and must be faulted in
    again) as much as the model itself.
    """
    torch.manual_seed(0)
    peers = {"posformer": posformer(size, "sinusoidal"), "marian": marian(size)}
    peers["marian"].load_state_dict(peers["posformer"].state_dict(), strict=False)
    encodings = {name: posformer(size, name) for name in POSITION_ENCODINGS}
    for model in (*peers.values(), *encodings.values()):
        model.to(device=device, dtype=dtype)
    results: dict = {"workloads": measure(peers, size, rounds, device)}
    if profile:
        inputs = {"train": batch(size, size.batch, device), "generate": batch(size, size.generate_batch, device)}
        optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in peers.items()}
        functions = workload_functions(peers, optimizers, inputs, size)
        results["profile"] = {
            workload: {name: time_by_kind(call) for name, call in functions[workload].items()}
            for workload in ("training step", "greedy generation")
        }
    results["encodings"] = measure(encodings, size, rounds, device)
    return results


def table(results: dict) -> str:
    lines = [
        "| workload | posformer | Marian | ours / Marian |",
        "|---|---|---|---|",
    ]
    for workload, values in results["workloads"].items():
        unit = (lambda v: f"{v / 2**20:.1f} MiB") if "memory" in workload else (lambda v: f"{v * 1000:.1f} ms")
        ratio = values["posformer"] / values["marian"]
        lines.append(f"| {workload} | {unit(values['posformer'])} | {unit(values['marian'])} | {ratio:.2f} |")
    encodings = sorted(POSITION_ENCODINGS)
    lines += ["", "| workload | " + " | ".join(encodings) + " |", "|---|" + "---|" * len(encodings)]
    for workload, values in results["encodings"].items():
        cells = [f"{values[encoding] / values['sinusoidal']:.2f}" for encoding in encodings]
        lines.append(f"| {workload} (relative to sinusoidal) | " + " | ".join(cells) + " |")
    if "profile" in results:
        lines += ["", profile_table(results)]
    return "\n".join(lines)


def profile_table(results: dict) -> str:
    """Operator time by kind (ms) for posformer and Marian, with the unprofiled median wall time beneath."""
    workloads = list(results["profile"])
    columns = [(workload, name) for workload in workloads for name in ("posformer", "marian")]
    header = " | ".join(f"{workload}: posformer | {workload}: Marian" for workload in workloads)
    lines = [f"| where the time goes (ms) | {header} |", "|---|" + "---|" * 2 * len(workloads)]
    for kind in results["profile"][workloads[0]]["posformer"]:
        cells = [f"{results['profile'][workload][name][kind] * 1000:.1f}" for workload, name in columns]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    totals = [sum(results["profile"][workload][name].values()) * 1000 for workload, name in columns]
    lines.append("| all operators (profiled) | " + " | ".join(f"{total:.1f}" for total in totals) + " |")
    walls = [results["workloads"][workload][name] * 1000 for workload, name in columns]
    lines.append("| wall time (median, unprofiled) | " + " | ".join(f"{wall:.1f}" for wall in walls) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved rounds per workload (median reported).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--tiny", action="store_true", help="Tiny sizes, for the smoke test.")
    parser.add_argument("--profile", action="store_true", help="Also show where the time goes, by operator kind.")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    size = TINY if args.tiny else Size()
    results = benchmark(size, args.rounds, device, dtype, args.profile)
    results["machine"] = {
        "platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
        "device": args.device, "dtype": args.dtype, "torch": torch.__version__,
        "transformers": transformers.__version__,
    }  # fmt: skip
    results["size"] = vars(size)
    print(table(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
