"""Test-split BLEU/chrF of a finished posformer-train run on three engines: its model through transformers'
`generate`, and its CTranslate2 export in float32 and in each quantization asked for.

    posformer-train --output_dir runs/en-de                            # the README's main job
    python benchmarks/ctranslate2_quality.py runs/en-de                # torch, CTranslate2 float32 and int8
    python benchmarks/ctranslate2_quality.py runs/en-de --quantizations int8 int16 --max_samples 200
    python benchmarks/ctranslate2_quality.py runs/en-de --max_bleu_drop 0.5   # exits 1 if int8 loses more

Everything goes through what users run: `posformer-export --format ctranslate2 [--quantization Q]` and
`posformer-translate --reference` on the built-in corpus's test split, with the
generation config the export writes (the paper's 4 beams, length penalty 0.6). Also reports how many translations
differ from the torch engine's.
"""

import argparse
import json
import tempfile
from pathlib import Path

from posformer.training.corpus import load_builtin_corpus
from posformer.training.export_cli import export_run
from posformer.training.translate_cli import main as translate


def test_pairs(source_lang: str, target_lang: str, max_samples: int | None) -> list[dict]:
    """The built-in corpus's test split as `{"source", "target"}` pairs (the first `max_samples`)."""
    rows = load_builtin_corpus()["test"]
    pairs = [{"source": row[source_lang], "target": row[target_lang]} for row in rows["translation"]]
    return pairs[:max_samples] if max_samples is not None else pairs


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished posformer-train run folder")
    parser.add_argument("--quantizations", nargs="*", default=["int8"], help="CTranslate2 weight types besides float32")
    parser.add_argument("--max_samples", type=int, help="only the first N test pairs")
    parser.add_argument("--max_bleu_drop", type=float, help="exit 1 if a quantization loses more BLEU than this")
    parser.add_argument("--source_lang", default="en")
    parser.add_argument("--target_lang", default="de")
    args = parser.parse_args(argv)
    pairs = test_pairs(args.source_lang, args.target_lang, args.max_samples)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        sources, references = scratch / "test.src", scratch / "test.ref"
        sources.write_text("".join(pair["source"] + "\n" for pair in pairs), encoding="utf-8")
        references.write_text("".join(pair["target"] + "\n" for pair in pairs), encoding="utf-8")
        engines = {"torch": (str(args.run_dir / "model"), "torch")}
        for quantization in [None, *args.quantizations]:
            name = f"ctranslate2 {quantization or 'float32'}"
            folder = export_run(args.run_dir, scratch / name.replace(" ", "-"), export_format="ctranslate2",
                                quantization=quantization)  # fmt: skip
            engines[name] = (str(folder), "ctranslate2")
        for name, (model, engine) in engines.items():
            output = scratch / f"{name.replace(' ', '-')}.out"
            scores = translate([model, "--engine", engine, "--input", str(sources), "--output", str(output),
                                "--reference", str(references)])  # fmt: skip
            results[name] = {"bleu": scores["bleu"], "chrf": scores["chrf"], "lines": output.read_text().splitlines()}
    torch_lines = results["torch"]["lines"]
    print(f"{len(pairs)} test pairs of the built-in corpus, {args.run_dir}")
    print("| engine | BLEU | chrF | translations that differ from torch's |\n|---|---|---|---|")
    for name, figures in results.items():
        differ = sum(a != b for a, b in zip(figures.pop("lines"), torch_lines, strict=True))
        figures["differ_from_torch"] = differ
        print(f"| {name} | {figures['bleu']:.2f} | {figures['chrf']:.2f} | {differ} of {len(pairs)} |")
    print(json.dumps(results))
    if args.max_bleu_drop is not None:
        check_bleu_drop(results, args.max_bleu_drop)
    return results


def check_bleu_drop(results: dict[str, dict], max_drop: float) -> None:
    """Exit with status 1, naming each offender, if a quantized engine's BLEU is more than `max_drop` below the
    float32 export's (a release check: the int8 export of the main job's model is held to 0.5 BLEU)."""
    reference = results["ctranslate2 float32"]["bleu"]
    quantized = [name for name in results if name.startswith("ctranslate2 ") and name != "ctranslate2 float32"]
    drops = {name: reference - results[name]["bleu"] for name in quantized}
    failed = [f"{name} scores {drop:.2f} BLEU below float32 ({reference:.2f})" for name, drop in drops.items()
              if drop > max_drop]  # fmt: skip
    if failed:
        raise SystemExit(f"over the {max_drop} BLEU bar: " + "; ".join(failed))
    print(f"every quantization within {max_drop} BLEU of float32 ({reference:.2f})")


if __name__ == "__main__":
    main()
