"""Speed and memory of posformer against transformers' MarianMTModel at identical size, in one process.

    python benchmarks/speed.py                         # 2-core CPU defaults: vocab 8000, d_model 256, 3+3 layers
    python benchmarks/speed.py --rounds 1 --tiny       # smoke test
    python benchmarks/speed.py --device cuda --dtype bf16
    python benchmarks/speed.py --no_ctranslate2        # without the CTranslate2 rows
    python benchmarks/speed.py --only_ctranslate2 --rounds 20   # only the CTranslate2 rows, more rounds

Every workload runs in interleaved rounds (ours, Marian, then Marian, ours, ...) so that machine noise hits both
alike; the table reports the median time of each and the ratio ours/peer (lower is better), then every position
encoding of ours relative to our `sinusoidal` (a separate interleaved group, so that neither comparison is
timed in the other's allocator state). Workloads: a training step (forward + backward + AdamW) on a
batch of 32 x 64 tokens (posformer's with the fused projection and loss of posformer-train, then again returning
its logits, as under `Seq2SeqTrainer`), cached greedy generation of 64 new tokens for 8 sentences, and 4-beam
search; and the peak memory of both training steps (CUDA: allocator peak; CPU: the tensors a profiler sees allocated).
`--profile` adds where the time goes: one profiled training step and greedy generation of posformer and Marian,
their operators' own time summed by kind (matrix multiplies, attention, softmax and loss, ...).

CTranslate2 rows (when `ctranslate2` is installed): the two generation workloads, 64 new tokens forced in every engine,
on posformer exported by `export_ctranslate2` and on the same Marian converted by CTranslate2's own
`TransformersConverter`, each in float32 and int8, interleaved with transformers' Marian in a third group: the
ratios are time / transformers' Marian time, and posformer's export / CTranslate2's Marian (same engine, same
weights, same arithmetic: the median and quartiles over the rounds of the ratio of the two runs of one round,
which a host slowing down between rounds moves less than a ratio of medians). CTranslate2 runs
`torch.get_num_threads()` intra-op threads, one translation at a time.
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

from posformer.configuration import PosformerConfig
from posformer.modeling import POSITION_ENCODINGS, PosformerForConditionalGeneration
from posformer.training.ctranslate2_export import CTranslate2NotInstalledError, export_ctranslate2, import_ctranslate2


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
    """Random ids past the special ones (0-3) and short of the last, which CTranslate2's Marian drops
    (`word_tokenizer`)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(4, size.vocab_size - 1, (rows, size.length), generator=generator)
    labels = torch.randint(4, size.vocab_size - 1, (rows, size.length), generator=generator)
    return {"input_ids": input_ids.to(device), "labels": labels.to(device)}


def training_step(model, optimizer, inputs, return_logits: bool = False) -> Callable[[], None]:
    """Forward, backward and AdamW. posformer's loss comes without logits (`return_logits=False`, the fused
    projection and loss that posformer-train's steps use) or, with `return_logits`, from its logits as
    `Seq2SeqTrainer`'s steps take it; Marian computes its logits either way."""
    fused = not return_logits and isinstance(model, PosformerForConditionalGeneration)
    options = {"return_logits": False} if fused else {}

    def step() -> None:
        model.train()
        loss = model(**inputs, **options).loss
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


def word_tokenizer(vocab_size: int, pad_token_id: int) -> PreTrainedTokenizerFast:
    """A whitespace WordLevel tokenizer whose ids are the models' rows: `<s>`, `</s>`, `<unk>` at 1-3 (the config's
    `decoder_start_token_id`, `eos_token_id` and the rest), `<pad>` at `pad_token_id`, `tok{id}` elsewhere. Marian's
    needs `<pad>` last: CTranslate2's Marian converter drops the last row (it starts the decoder from a zero embedding
    instead); the benchmark's ids never reach it, nor 0, so that both tokenizers spell every source id alike."""
    special = {1: "<s>", 2: "</s>", 3: "<unk>", pad_token_id: "<pad>"}
    backend = Tokenizer(models.WordLevel({special.get(i, f"tok{i}"): i for i in range(vocab_size)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


CTRANSLATE2_WEIGHTS = {"float32": None, "int8": "int8"}
"""Row name -> the `quantization` both converters are given (None keeps float32)."""


def ctranslate2_translators(ctranslate2: ModuleType, peers: dict, device: torch.device) -> dict:
    """`{"posformer ct2 float32": Translator, ..., "marian ct2 int8": Translator}`: posformer through
    `export_ctranslate2`, Marian saved with its tokenizer and converted by CTranslate2's own `TransformersConverter`."""
    vocab_size = peers["posformer"].config.vocab_size
    options = dict(device=device.type, intra_threads=torch.get_num_threads(), inter_threads=1)
    translators = {}
    with tempfile.TemporaryDirectory() as scratch:  # a Translator holds its weights in memory once built
        scratch = Path(scratch)
        peers["marian"].save_pretrained(scratch / "marian")
        word_tokenizer(vocab_size, pad_token_id=vocab_size - 1).save_pretrained(scratch / "marian")
        marian_converter = ctranslate2.converters.TransformersConverter(str(scratch / "marian"))
        for weights, quantization in CTRANSLATE2_WEIGHTS.items():
            posformer_folder = export_ctranslate2(
                peers["posformer"], word_tokenizer(vocab_size, pad_token_id=0), scratch / f"posformer-{weights}",
                quantization=quantization,
            )  # fmt: skip
            marian_folder = marian_converter.convert(str(scratch / f"marian-{weights}"), quantization=quantization)
            translators[f"posformer ct2 {weights}"] = ctranslate2.Translator(str(posformer_folder), **options)
            translators[f"marian ct2 {weights}"] = ctranslate2.Translator(marian_folder, **options)
    return translators


def ctranslate2_generation(translator, source: list[list[str]], size: Size, num_beams: int) -> Callable[[], None]:
    """CTranslate2's `translate_batch` of `source` (token strings), exactly `size.new_tokens` new tokens."""

    def run() -> None:
        translator.translate_batch(
            source, beam_size=num_beams, min_decoding_length=size.new_tokens, max_decoding_length=size.new_tokens
        )

    return run


def measure_ctranslate2(
    translators: dict, marian: MarianMTModel, size: Size, rounds: int, device
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, float]]]]:
    """Greedy and beam-4 generation per CTranslate2 engine and transformers' Marian, interleaved: per workload the
    median seconds of each engine, and per workload and weight type `paired_ratio` of posformer's export to
    CTranslate2's Marian (run next to each other in every round)."""
    inputs = batch(size, size.generate_batch, device)
    tokenizer = word_tokenizer(size.vocab_size, pad_token_id=0)
    source = [tokenizer.convert_ids_to_tokens(row) for row in inputs["input_ids"].tolist()]
    seconds, same_engine = {}, {}
    for workload, num_beams in (("greedy generation", 1), ("beam search (4)", 4)):
        times = timed_rounds(
            {"marian": generation(marian, inputs, size, num_beams)}
            | {name: ctranslate2_generation(t, source, size, num_beams) for name, t in translators.items()},
            rounds,
            device,
        )
        seconds[workload] = {name: statistics.median(values) for name, values in times.items()}
        same_engine[workload] = {
            weights: paired_ratio(times, f"posformer ct2 {weights}", f"marian ct2 {weights}")
            for weights in CTRANSLATE2_WEIGHTS
        }
    return seconds, same_engine


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


def timed_rounds(workloads: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each workload in each of `rounds` interleaved rounds, after one warm-up call each. Odd rounds run
    the workloads in reverse order, so that none always runs right after the same neighbour."""
    for function in workloads.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in workloads}
    for round_index in range(rounds):
        for name in list(workloads)[:: 1 if round_index % 2 == 0 else -1]:
            times[name].append(timed(workloads[name], device))
    return times


def compare(workloads: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each workload over `rounds` interleaved rounds (`timed_rounds`)."""
    return {name: statistics.median(values) for name, values in timed_rounds(workloads, rounds, device).items()}


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> dict[str, float]:
    """Median and quartiles over the rounds of `numerator`'s time / `denominator`'s in the same round (quartiles
    rather than extremes: one round that another tenant of the host slowed moves them little)."""
    ratios = [a / b for a, b in zip(times[numerator], times[denominator], strict=True)]
    low, _, high = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return {"median": statistics.median(ratios), "quartile_1": low, "quartile_3": high}


def workload_functions(models: dict, optimizers: dict, inputs: dict, size: Size) -> dict[str, dict]:
    """Workload -> model name -> the call to time."""
    return {
        "training step": {name: training_step(m, optimizers[name], inputs["train"]) for name, m in models.items()},
        "training step, logits returned": {
            name: training_step(m, optimizers[name], inputs["train"], return_logits=True) for name, m in models.items()
        },
        "greedy generation": {name: generation(m, inputs["generate"], size, 1) for name, m in models.items()},
        "beam search (4)": {name: generation(m, inputs["generate"], size, 4) for name, m in models.items()},
    }


def measure(models: dict, size: Size, rounds: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Median seconds per workload and model (interleaved among `models` only), and peak training bytes."""
    inputs = {"train": batch(size, size.batch, device), "generate": batch(size, size.generate_batch, device)}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-4) for name, model in models.items()}
    functions = workload_functions(models, optimizers, inputs, size)
    results = {workload: compare(calls, rounds, device) for workload, calls in functions.items()}
    for workload in ("training step", "training step, logits returned"):
        results[workload.replace("training step", "peak training memory") + " (bytes)"] = {
            name: peak_memory(call, device) for name, call in functions[workload].items()
        }
    return results


def benchmark(
    size: Size,
    rounds: int,
    device: torch.device,
    dtype: torch.dtype,
    profile: bool = False,
    ctranslate2: ModuleType | None = None,
    only_ctranslate2: bool = False,
) -> dict:
    """posformer (`sinusoidal`) against Marian on identical weights, then every encoding of ours, then (given
    `ctranslate2`) both models' CTranslate2 conversions against transformers' Marian; `only_ctranslate2`: only the
    last group.

    The comparisons run as separate interleaved groups: timing a model beside nine others would measure the
    allocator state they leave behind (on CPU, which freed blocks go back to the OS and must be faulted in
    again) as much as the model itself.
    """
    torch.manual_seed(0)
    peers = {"posformer": posformer(size, "sinusoidal"), "marian": marian(size)}
    peers["marian"].load_state_dict(peers["posformer"].state_dict(), strict=False)
    translators = ctranslate2_translators(ctranslate2, peers, device) if ctranslate2 is not None else {}
    encodings = {} if only_ctranslate2 else {name: posformer(size, name) for name in POSITION_ENCODINGS}
    for model in (*peers.values(), *encodings.values()):
        model.to(device=device, dtype=dtype)
    results: dict = {} if only_ctranslate2 else torch_groups(peers, encodings, size, rounds, device, profile)
    if translators:
        results["ctranslate2"], results["ctranslate2_same_engine"] = measure_ctranslate2(
            translators, peers["marian"], size, rounds, device
        )
    return results


def torch_groups(peers: dict, encodings: dict, size: Size, rounds: int, device: torch.device, profile: bool) -> dict:
    """The first two groups: posformer against Marian (and, with `profile`, where their time goes), then every
    encoding of ours."""
    results = {"workloads": measure(peers, size, rounds, device)}
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
    lines = []
    if "workloads" in results:
        lines += [peers_table(results), "", encodings_table(results)]
    if "ctranslate2" in results:
        lines += ["", ctranslate2_table(results["ctranslate2"], results["ctranslate2_same_engine"])]
    if "profile" in results:
        lines += ["", profile_table(results)]
    return "\n".join(lines).strip("\n")


def peers_table(results: dict) -> str:
    """Per workload: posformer's and Marian's median time (or peak memory) and their ratio."""
    lines = ["| workload | posformer | Marian | ours / Marian |", "|---|---|---|---|"]
    for workload, values in results["workloads"].items():
        unit = (lambda v: f"{v / 2**20:.1f} MiB") if "memory" in workload else (lambda v: f"{v * 1000:.1f} ms")
        ratio = values["posformer"] / values["marian"]
        lines.append(f"| {workload} | {unit(values['posformer'])} | {unit(values['marian'])} | {ratio:.2f} |")
    return "\n".join(lines)


def encodings_table(results: dict) -> str:
    """Per workload: every encoding's median time relative to `sinusoidal`'s."""
    encodings = sorted(POSITION_ENCODINGS)
    lines = ["| workload | " + " | ".join(encodings) + " |", "|---|" + "---|" * len(encodings)]
    for workload, values in results["encodings"].items():
        cells = [f"{values[encoding] / values['sinusoidal']:.2f}" for encoding in encodings]
        lines.append(f"| {workload} (relative to sinusoidal) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CTRANSLATE2_ROWS = {
    "marian": "transformers' Marian",
    "posformer ct2 float32": "posformer -> CTranslate2 float32",
    "posformer ct2 int8": "posformer -> CTranslate2 int8",
    "marian ct2 float32": "CTranslate2's Marian float32",
    "marian ct2 int8": "CTranslate2's Marian int8",
}


def ctranslate2_table(results: dict, same_engine: dict) -> str:
    """Per engine and workload: the median time and time / transformers' Marian's; then posformer's export /
    CTranslate2's Marian at each weight type (same engine): the median paired ratio, its quartiles in brackets."""
    header = " | ".join(f"{workload}: ms | {workload}: / Marian" for workload in results)
    lines = [f"| generation engine | {header} |", "|---|" + "---|" * 2 * len(results)]
    for name, label in CTRANSLATE2_ROWS.items():
        cells = [f"{values[name] * 1000:.1f} | {values[name] / values['marian']:.2f}" for values in results.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for weights in CTRANSLATE2_WEIGHTS:
        ratios = [same_engine[workload][weights] for workload in results]
        spreads = [f"{r['median']:.2f} ({r['quartile_1']:.2f}-{r['quartile_3']:.2f})" for r in ratios]
        cells = [cell for spread in spreads for cell in ("", spread)]  # no time column
        lines.append(f"| posformer / CTranslate2's Marian, both {weights} | " + " | ".join(cells) + " |")
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


def optional_ctranslate2() -> ModuleType | None:
    """The `ctranslate2` package, or None with a printed note that its rows are left out."""
    try:
        return import_ctranslate2()
    except CTranslate2NotInstalledError as error:
        print(f"Leaving out the CTranslate2 rows: {error}")
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved rounds per workload (median reported).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--tiny", action="store_true", help="Tiny sizes, for the smoke test.")
    parser.add_argument("--profile", action="store_true", help="Also show where the time goes, by operator kind.")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    parser.add_argument("--no_ctranslate2", action="store_true", help="Leave out the CTranslate2 rows.")
    parser.add_argument("--only_ctranslate2", action="store_true", help="Only the CTranslate2 rows.")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    size = TINY if args.tiny else Size()
    if args.only_ctranslate2 and (args.no_ctranslate2 or args.profile):
        parser.error("--only_ctranslate2 measures only the CTranslate2 rows: leave out --no_ctranslate2 and --profile")
    if args.only_ctranslate2:
        ctranslate2 = import_ctranslate2()  # without it there is nothing to measure: its error says how to install it
    else:
        ctranslate2 = None if args.no_ctranslate2 else optional_ctranslate2()
    results = benchmark(size, args.rounds, device, dtype, args.profile, ctranslate2, args.only_ctranslate2)
    results["machine"] = {
        "platform": platform.platform(), "processor": platform.processor(), "threads": torch.get_num_threads(),
        "device": args.device, "dtype": args.dtype, "torch": torch.__version__,
        "transformers": transformers.__version__, "ctranslate2": getattr(ctranslate2, "__version__", None),
    }  # fmt: skip
    results["size"] = vars(size)
    print(table(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
