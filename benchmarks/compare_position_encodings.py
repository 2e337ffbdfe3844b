"""Every position encoding trained the same way: translation quality, speed, length extrapolation, attention maps.

    python benchmarks/compare_position_encodings.py --quick                        # 9 encodings, 1 seed, 2 CPU cores
    python benchmarks/compare_position_encodings.py --seeds 1,2,3 --out_dir runs/pe # full mode, for a GPU
    python benchmarks/compare_position_encodings.py --encodings sinusoidal,alibi -- --learning_rate 1e-3
    python benchmarks/compare_position_encodings.py --quick --jobs 1               # runs one after another

Each (encoding, seed) is an ordinary `posformer-train` run in `OUT/runs/<encoding>-seed<k>/` (resumable: a finished
run is reused, an interrupted one continues from its last checkpoint). All runs share one BPE (`OUT/tokenizer/`,
trained once), the model size, the step and token budget, and the seeds. Training keeps only pairs whose source has
at most L tokens (`--max_length`); the test split is then re-scored on inputs of L/2 to 4L tokens, built by joining
consecutive test pairs on both sides. `max_position_embeddings` is the same for every encoding and large enough for
the longest input, so `learned` runs there too, with table rows past L that training never updated.

Writes into OUT: `results.md` and `results.csv` (one row per encoding), `length_extrapolation.csv` and `.png`,
`attention/<encoding>.png`, and prints the Markdown table. Arguments after `--` go to every training run.

`--jobs N` trains N runs at once, each a `python -m posformer.training` process with its share of the CPU threads
and its output in `OUT/runs/<encoding>-seed<k>/train.log` (a small model keeps one thread busier than two: on 2 cores,
several one-thread runs can keep many cores busier than one run using them all; on a 2-core machine the gain is
small: two one-thread runs of the quick study took 205 s, against 2 x 108 s one after another). `--jobs 1`, the
default, trains in this process with its progress bar.
"""

import argparse
import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from posformer.modeling.atomic_io import atomic_directory, atomic_write_text
from posformer.modeling.position_encodings import POSITION_ENCODINGS
from posformer.training.arguments import parse_args
from posformer.training.attention_maps import attention_maps, plot_attention_maps
from posformer.training.data import load_or_train_tokenizer
from posformer.training.metrics import compute_translation_scores
from posformer.training.parallel_data import load_parallel_data, prepare_splits
from posformer.training.plots import write_png
from posformer.training.run_folder import METRICS_FILE, MODEL_DIR, RESULTS_FILE, checkpoints, is_finished, read_metrics
from posformer.training.train import main as train_main
from posformer.training.translation import generation_budget, translate

# Defaults of the two modes. --quick: the whole study (9 encodings, 1 seed) in under 20 minutes on 2 CPU cores,
# calibrated there (docs/position_encodings.md): at this budget many small batches beat fewer large ones.
QUICK = dict(
    max_length=16, max_steps=1200, max_tokens=1024, warmup_steps=100, tokenizer_vocab_size=2000,
    encoder_layers=2, decoder_layers=2, max_eval_samples=50, max_test_samples=200, samples_per_bucket=40,
    num_beams=1, eval_batch_size=64, jobs=1,
)  # fmt: skip
FULL = dict(
    max_length=32, max_steps=4000, max_tokens=4096, warmup_steps=500, tokenizer_vocab_size=8000,
    encoder_layers=None, decoder_layers=None,
    max_eval_samples=200, max_test_samples=None, samples_per_bucket=200, num_beams=None, eval_batch_size=64,
    jobs=1,
)  # fmt: skip

TABLE_COLUMNS = {  # results.csv column -> (results.md header, decimals)
    "test_bleu": ("test BLEU", 2),
    "test_chrf": ("test chrF", 2),
    "eval_loss": ("valid. loss", 3),
    "tokens_per_second": ("train tok/s", 0),
    "parameters": ("parameters", 0),
}


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The study's options; any left unset take the --quick or full default (`QUICK`/`FULL`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Small model and budget: the study on 2 CPU cores.")
    parser.add_argument("--encodings", default=",".join(POSITION_ENCODINGS), help="Comma-separated; default: all.")
    parser.add_argument("--seeds", default="1", help="Comma-separated training seeds.")
    parser.add_argument("--out_dir", type=Path, default=Path("runs/compare-position-encodings"))
    parser.add_argument("--max_length", type=int, help="L: training sources have at most L tokens (quick 16, 32).")
    parser.add_argument("--max_target_length", type=int, help="Longest training target (default 1.5L: German ~1.2x).")
    parser.add_argument("--max_steps", type=int, help="Optimizer steps per run (quick 1200, else 4000).")
    parser.add_argument("--max_tokens", type=int, help="Tokens per batch (quick 1024, else 4096).")
    parser.add_argument("--warmup_steps", type=int, help="Learning-rate warmup steps (quick 100, else 500).")
    parser.add_argument("--model_size", default="tiny", help="posformer-train --model_size preset.")
    parser.add_argument("--encoder_layers", type=int, help="Override the preset's encoder layers.")
    parser.add_argument("--decoder_layers", type=int, help="Override the preset's decoder layers.")
    parser.add_argument("--tokenizer_vocab_size", type=int, help="Size of the shared BPE (quick 2000, else 8000).")
    parser.add_argument("--max_train_samples", type=int, help="Use only this many training pairs.")
    parser.add_argument("--max_eval_samples", type=int, help="Validation pairs translated at each evaluation.")
    parser.add_argument("--max_test_samples", type=int, help="Test pairs scored by each run (default: all).")
    parser.add_argument("--eval_batch_size", type=int, help="Sentences per generation batch.")
    parser.add_argument("--num_beams", type=int, help="Beams for test and buckets (quick 1; else the paper's 4).")
    parser.add_argument("--bucket_width", type=int, help="Tokens per length bucket (default L/2).")
    parser.add_argument("--max_bucket_length", type=int, help="Longest input scored (default 4L).")
    parser.add_argument("--samples_per_bucket", type=int, help="Joined test inputs per bucket (quick 40, else 200).")
    parser.add_argument("--max_position_embeddings", type=int, help="Same for all encodings (default: fits 4L).")
    parser.add_argument("--jobs", type=int, help="Runs trained at once, each in its own process (default 1).")
    parser.add_argument("--attention_length", type=int, help="Source tokens of the attention sentence (default 2L).")
    parser.add_argument("train_args", nargs="*", help="posformer-train arguments for every run (after --).")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.encodings = _names(args.encodings)
    args.seeds = [int(seed) for seed in _names(args.seeds)]
    _fill_length_defaults(args)
    _validate(args)
    return args


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _fill_length_defaults(args: argparse.Namespace) -> None:
    """Buckets of L/2 tokens up to 4L; position tables long enough for the longest input and its translation."""
    args.max_target_length = args.max_target_length or math.ceil(1.5 * args.max_length)
    args.bucket_width = args.bucket_width or max(1, args.max_length // 2)
    args.max_bucket_length = args.max_bucket_length or 4 * args.max_length
    args.attention_length = args.attention_length or 2 * args.max_length
    args.max_position_embeddings = args.max_position_embeddings or generation_budget(args.max_bucket_length) + 2


def _validate(args: argparse.Namespace) -> None:
    unknown = [name for name in args.encodings if name not in POSITION_ENCODINGS]
    if unknown or not args.encodings:
        raise ValueError(f"--encodings {unknown or '(none)'}: choose from {', '.join(POSITION_ENCODINGS)}.")
    if not args.seeds:
        raise ValueError("--seeds: give at least one seed, e.g. --seeds 1,2,3.")
    if args.jobs < 1:
        raise ValueError(f"--jobs {args.jobs}: train at least one run at a time.")
    if args.max_length < 2 or args.max_bucket_length <= args.max_length:
        raise ValueError(
            f"--max_length {args.max_length} / --max_bucket_length {args.max_bucket_length}: need 2 <= L < longest."
        )


# ---------------------------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------------------------


def common_train_arguments(args: argparse.Namespace, tokenizer_dir: Path) -> list[str]:
    """posformer-train arguments shared by every run: data, tokenizer, model size, budget, evaluation."""
    arguments = [
        "--tokenizer_name", str(tokenizer_dir), "--model_size", args.model_size,
        "--max_source_length", str(args.max_length),
        "--max_target_length", str(args.max_target_length),
        "--max_position_embeddings", str(args.max_position_embeddings),
        "--max_steps", str(args.max_steps), "--max_tokens", str(args.max_tokens),
        "--warmup_steps", str(args.warmup_steps), "--eval_steps", str(args.max_steps),
        "--save_steps", str(args.max_steps), "--max_eval_samples", str(args.max_eval_samples),
        "--eval_batch_size", str(args.eval_batch_size), "--report_to", "none",
    ]  # fmt: skip
    optional = {
        "--encoder_layers": args.encoder_layers,
        "--decoder_layers": args.decoder_layers,
        "--max_train_samples": args.max_train_samples,
        "--max_test_samples": args.max_test_samples,
        "--num_beams": args.num_beams,
    }
    arguments += [item for flag, value in optional.items() if value is not None for item in (flag, str(value))]
    return arguments + list(args.train_args)


def data_arguments(args: argparse.Namespace, out_dir: Path):
    """The `DataArguments` every run parses, so the study sees exactly the runs' data."""
    _, data_args, _ = parse_args([*common_train_arguments(args, out_dir / "tokenizer"), "--output_dir", str(out_dir)])
    return data_args


def prepare_tokenizer(data_args, train_pairs, tokenizer_dir: Path, vocab_size: int) -> PreTrainedTokenizerBase:
    """Train the shared BPE once (on the runs' training pairs) into `tokenizer_dir`; reuse it when present."""
    if (tokenizer_dir / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(tokenizer_dir)
    data_args.tokenizer_name, data_args.tokenizer_vocab_size = None, vocab_size
    tokenizer = load_or_train_tokenizer(data_args, train_pairs)
    with atomic_directory(tokenizer_dir) as folder:
        tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def run_dir(out_dir: Path, encoding: str, seed: int) -> Path:
    return out_dir / "runs" / f"{encoding}-seed{seed}"


def run_arguments(args: argparse.Namespace, out_dir: Path, encoding: str, seed: int) -> list[str] | None:
    """posformer-train arguments of one run, resuming from its last checkpoint; None when it has finished."""
    folder = run_dir(out_dir, encoding, seed)
    if is_finished(folder):
        return None
    resume = ["--resume_from_checkpoint", "latest"] if checkpoints(folder) else []
    common = common_train_arguments(args, out_dir / "tokenizer")
    return [*common, "--position_encoding", encoding, "--seed", str(seed), "--output_dir", str(folder), *resume]


def train_run(args: argparse.Namespace, out_dir: Path, encoding: str, seed: int) -> Path:
    """One posformer-train run in this process; a finished run is reused, an interrupted one resumes."""
    arguments = run_arguments(args, out_dir, encoding, seed)
    if arguments is not None:
        train_main(arguments)
    return run_dir(out_dir, encoding, seed)


def train_run_in_subprocess(args: argparse.Namespace, out_dir: Path, encoding: str, seed: int, threads: int) -> Path:
    """One run as `python -m posformer.training` with `threads` CPU threads, its output in `<run>/train.log`."""
    folder = run_dir(out_dir, encoding, seed)
    arguments = run_arguments(args, out_dir, encoding, seed)
    if arguments is None:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "train.log"
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    with open(log, "w") as file:
        process = subprocess.run(
            [sys.executable, "-m", "posformer.training", *arguments], stdout=file, stderr=subprocess.STDOUT,
            env=environment, check=False,
        )  # fmt: skip
    if process.returncode:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"Training {encoding} (seed {seed}) failed with exit code {process.returncode}; "
                           f"its output is in {log}. Last lines:\n{tail}")  # fmt: skip
    return folder


def train_runs(args: argparse.Namespace, out_dir: Path, runs: list[tuple[str, int]]) -> Iterator[tuple[str, int, Path]]:
    """Train every (encoding, seed) and yield each as it finishes: one after another in this process
    (`--jobs 1`), or `--jobs` subprocesses at once sharing this process's CPU threads."""
    if args.jobs == 1:
        for encoding, seed in runs:
            yield encoding, seed, train_run(args, out_dir, encoding, seed)
        return
    threads = max(1, torch.get_num_threads() // args.jobs)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(train_run_in_subprocess, args, out_dir, encoding, seed, threads): (encoding, seed)
            for encoding, seed in runs
        }
        for future in as_completed(futures):
            yield *futures[future], future.result()


# ---------------------------------------------------------------------------------------------------------------
# The summary table
# ---------------------------------------------------------------------------------------------------------------


def run_summary(folder: Path, model: PreTrainedModel) -> dict[str, float]:
    """Test BLEU/chrF, last validation loss, median training tokens/s over logging windows, parameter count."""
    results = json.loads((folder / RESULTS_FILE).read_text())
    records = read_metrics(folder / METRICS_FILE)
    speeds = [record["target_tokens_per_second"] for record in records if "target_tokens_per_second" in record]
    losses = [record["eval_loss"] for record in records if "eval_loss" in record]
    return {
        "test_bleu": float(results["test_bleu"]),
        "test_chrf": float(results["test_chrf"]),
        "eval_loss": float(losses[-1]),
        "tokens_per_second": float(statistics.median(speeds)),
        "parameters": float(sum(parameter.numel() for parameter in model.parameters())),
    }


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(summaries: dict[str, list[dict[str, float]]]) -> list[dict]:
    """One row per encoding: `<column>_mean` and `<column>_std` over its seeds, and the number of seeds."""
    rows = []
    for encoding, runs in summaries.items():
        row: dict = {"encoding": encoding, "seeds": len(runs)}
        for column in TABLE_COLUMNS:
            row[f"{column}_mean"], row[f"{column}_std"] = mean_and_spread([run[column] for run in runs])
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The results table; cells read `mean ± std` when more than one seed ran."""
    header = ["encoding", *(title for title, _ in TABLE_COLUMNS.values())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["encoding"]]
        for column, (_, decimals) in TABLE_COLUMNS.items():
            cell = f"{row[f'{column}_mean']:,.{decimals}f}"
            if row["seeds"] > 1:
                cell += f" ± {row[f'{column}_std']:,.{decimals}f}"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        raise ValueError(f"No rows to write to {path}.")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


# ---------------------------------------------------------------------------------------------------------------
# Length extrapolation
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """Inputs whose source has `low < tokens <= high` tokens."""

    low: int
    high: int

    @property
    def midpoint(self) -> float:
        return (self.low + 1 + self.high) / 2


def length_buckets(max_length: int, width: int, longest: int) -> list[Bucket]:
    """Buckets of `width` tokens from just below L (`L - width`) up to `longest`."""
    start = max(0, max_length - width)
    return [Bucket(low, min(low + width, longest)) for low in range(start, longest, width)]


def join_consecutive_pairs(
    sources: Sequence[str],
    targets: Sequence[str],
    count_tokens: Callable[[str], int],
    bucket: Bucket,
    limit: int,
) -> list[tuple[str, str]]:
    """Up to `limit` (source, target) inputs whose source has `bucket.low < tokens <= bucket.high` tokens.

    From each start pair i, sources i, i+1, ... are joined with spaces (and so are their targets) until the joined
    source enters the bucket; a start that overshoots it is skipped. Consecutive inputs use disjoint runs of pairs,
    so each test pair appears at most once per bucket, and every joined target is the reference translation of its
    joined source, sentence by sentence.
    """
    found: list[tuple[str, str]] = []
    start = 0
    while start < len(sources) and len(found) < limit:
        source, target, end = sources[start], targets[start], start + 1
        while count_tokens(source) <= bucket.low and end < len(sources):
            source, target, end = f"{source} {sources[end]}", f"{target} {targets[end]}", end + 1
        if bucket.low < count_tokens(source) <= bucket.high:
            found.append((source, target))
            start = end
        else:
            start += 1
    return found


def build_long_inputs(test_pairs, tokenizer: PreTrainedTokenizerBase, buckets: list[Bucket], limit: int) -> dict:
    """Bucket -> joined (source, target) inputs from the test split (token counts include `</s>`)."""

    def count_tokens(text: str) -> int:
        return len(tokenizer(text)["input_ids"])

    sources, targets = list(test_pairs["source"]), list(test_pairs["target"])
    return {bucket: join_consecutive_pairs(sources, targets, count_tokens, bucket, limit) for bucket in buckets}


def score_buckets(model, tokenizer, long_inputs: dict, num_beams: int | None, batch: int) -> list[dict]:
    """BLEU and chrF of one model on every non-empty bucket."""
    rows = []
    for bucket, pairs in long_inputs.items():
        if not pairs:
            continue
        beams = {} if num_beams is None else {"num_beams": num_beams}
        hypotheses = translate(model, tokenizer, [source for source, _ in pairs], batch, **beams)
        scores = compute_translation_scores(hypotheses, [target for _, target in pairs])
        rows.append({"bucket_low": bucket.low, "bucket_high": bucket.high, "midpoint": bucket.midpoint,
                     "inputs": len(pairs), "bleu": scores["bleu"], "chrf": scores["chrf"]})  # fmt: skip
    return rows


def plot_length_extrapolation(rows: list[dict], max_length: int, out_png: Path) -> Path:
    """BLEU and chrF against input length (bucket midpoints, mean over seeds), one line per encoding, a line at L.

    chrF sits beside BLEU because it stays informative on the small buckets of quick mode, where BLEU's 4-gram
    precision often drops to near zero."""
    figure = Figure(figsize=(13, 5), layout="constrained", dpi=100)
    for axes, metric, label in zip(figure.subplots(1, 2), ("bleu", "chrf"), ("test BLEU", "test chrF"), strict=True):
        for encoding in dict.fromkeys(row["encoding"] for row in rows):
            by_midpoint: dict[float, list[float]] = {}
            for row in rows:
                if row["encoding"] == encoding:
                    by_midpoint.setdefault(row["midpoint"], []).append(row[metric])
            midpoints = sorted(by_midpoint)
            axes.plot(midpoints, [statistics.fmean(by_midpoint[m]) for m in midpoints], marker="o", label=encoding)
        axes.axvline(max_length, color="black", linestyle="--", label=f"longest training source (L={max_length})")
        axes.set(xlabel="source length (tokens, bucket midpoint)", ylabel=label, title=f"Length extrapolation: {label}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return write_png(figure, out_png)


# ---------------------------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------------------------


def attention_pair(long_inputs: dict, length: int) -> tuple[str, str]:
    """The first joined input of the bucket that holds `length` (else of the longest non-empty bucket)."""
    filled = [bucket for bucket, pairs in long_inputs.items() if pairs]
    if not filled:
        raise ValueError("No test input fits any length bucket; lower --max_length or --bucket_width.")
    holding = [bucket for bucket in filled if bucket.low < length <= bucket.high]
    return long_inputs[holding[0] if holding else filled[-1]][0]


def evaluate_run(args, folder: Path, encoding: str, seed: int, long_inputs: dict, attention: tuple[str, str]):
    """Summary numbers and per-bucket scores of one finished run; draws its attention maps for the first seed."""
    model_dir = folder / MODEL_DIR
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir)
    summary = run_summary(folder, model)
    buckets = score_buckets(model, tokenizer, long_inputs, args.num_beams, args.eval_batch_size)
    if seed == args.seeds[0]:
        maps = attention_maps(model, tokenizer, attention[0], attention[1])
        plot_attention_maps(maps, args.out_dir / "attention" / f"{encoding}.png")
    return summary, [{"encoding": encoding, "seed": seed, **row} for row in buckets]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Train every (encoding, seed), score and plot; returns the rows of results.csv."""
    args = parse_arguments(argv)
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    data_args = data_arguments(args, out_dir)
    pairs = prepare_splits(load_parallel_data(data_args), data_args)
    if "test" not in pairs:
        raise ValueError("The study needs a test split (pass --test_file after --, or use the built-in corpus).")
    tokenizer = prepare_tokenizer(data_args, pairs["train"], out_dir / "tokenizer", args.tokenizer_vocab_size)
    buckets = length_buckets(args.max_length, args.bucket_width, args.max_bucket_length)
    long_inputs = build_long_inputs(pairs["test"], tokenizer, buckets, args.samples_per_bucket)
    attention = attention_pair(long_inputs, args.attention_length)

    runs = [(encoding, seed) for encoding in args.encodings for seed in args.seeds]
    evaluated: dict[tuple[str, int], tuple[dict, list[dict]]] = {}
    with tqdm(total=len(runs), desc="runs", unit="run") as progress:
        for encoding, seed, folder in train_runs(args, out_dir, runs):
            evaluated[encoding, seed] = evaluate_run(args, folder, encoding, seed, long_inputs, attention)
            progress.set_postfix(last=f"{encoding}-seed{seed}", bleu=f"{evaluated[encoding, seed][0]['test_bleu']:.2f}")
            progress.update()
    summaries = {encoding: [evaluated[encoding, seed][0] for seed in args.seeds] for encoding in args.encodings}
    bucket_rows = [row for run in runs for row in evaluated[run][1]]

    rows = aggregate(summaries)
    table = markdown_table(rows)
    write_csv(out_dir / "results.csv", rows)
    atomic_write_text(out_dir / "results.md", _results_markdown(args, table))
    write_csv(out_dir / "length_extrapolation.csv", bucket_rows)
    plot_length_extrapolation(bucket_rows, args.max_length, out_dir / "length_extrapolation.png")
    print(table)
    return rows


def _results_markdown(args: argparse.Namespace, table: str) -> str:
    spread = "mean ± sample std over seeds " + ",".join(map(str, args.seeds)) if len(args.seeds) > 1 else "one seed"
    return (
        f"# Position encodings compared ({'quick' if args.quick else 'full'} mode)\n\n"
        f"`{args.model_size}` model, {args.max_steps} steps of <= {args.max_tokens} tokens, training sources of "
        f"<= {args.max_length} tokens, {spread}. Test BLEU/chrF with "
        f"{args.num_beams or 'the paper’s 4'} beam(s); tokens/s: median over logging windows.\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
