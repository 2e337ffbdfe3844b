"""Translation quality of posformer against transformers' MarianMTModel, trained the same way.

    python benchmarks/quality_vs_marian.py --out_dir runs/vs-marian            # defaults: the README's main job
    python benchmarks/quality_vs_marian.py --out_dir /tmp/q -- --max_steps 20   # anything after -- goes to both runs

posformer (`sinusoidal`, Marian's options: post-LN, scaled embeddings, tied embeddings, ReLU here) and a
`MarianMTModel` of identical size train with the same `posformer-train` loop: the same tokenizer (the Marian run
loads the one the posformer run trained), the same batches in the same order, the same steps, seed, optimizer,
schedule and loss (the loop computes its label-smoothed, token-normalised loss from either model's logits). Both are
scored on the test split with the same beam search. They are the same model, so a gap larger than 1 BLEU is a bug
to find.
"""

import argparse
import json
from pathlib import Path

from transformers import MarianConfig, MarianMTModel

from posformer.configuration import PosformerConfig
from posformer.modeling.atomic_io import atomic_write_text
from posformer.training.arguments import build_config, parse_args
from posformer.training.data import special_token_ids
from posformer.training.loop import TrainingRun
from posformer.training.run_folder import RESULTS_FILE
from posformer.training.train import main as train_posformer


def marian_config(config: PosformerConfig) -> MarianConfig:
    """Marian's config for posformer's sizes, dropouts and special tokens (no forced end token, as posformer)."""
    return MarianConfig(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        encoder_attention_heads=config.encoder_attention_heads,
        decoder_attention_heads=config.decoder_attention_heads,
        encoder_ffn_dim=config.encoder_ffn_dim,
        decoder_ffn_dim=config.decoder_ffn_dim,
        activation_function=config.activation_function,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout,
        max_position_embeddings=config.max_position_embeddings,
        scale_embedding=config.scale_embedding,
        init_std=config.init_std,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
        forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
    )


class MarianTrainingRun(TrainingRun):
    """posformer-train's loop around a Marian model; the end scores the test split (no posformer export)."""

    def _build_model(self) -> MarianMTModel:
        config = build_config(self.model_args, len(self.tokenizer), special_token_ids(self.tokenizer))
        return MarianMTModel(marian_config(config))

    def finish(self) -> dict:
        results = {"step": self.step, **self.evaluate(self.full_model(), "test", self.data_args.max_test_samples)}
        if self.accelerator.is_main_process:
            atomic_write_text(self.output_dir / RESULTS_FILE, json.dumps(results, indent=2))
        return results


def compare(out_dir: Path, extra: list[str]) -> dict:
    """Train both models with the same arguments and return their test scores."""
    common = ["--position_encoding", "sinusoidal", "--report_to", "none", *extra]
    posformer_dir, marian_dir = out_dir / "posformer", out_dir / "marian"
    ours = train_posformer([*common, "--output_dir", str(posformer_dir)])
    model_args, data_args, train_args = parse_args(
        [*common, "--output_dir", str(marian_dir), "--tokenizer_name", str(posformer_dir / "tokenizer")]
    )
    peer = MarianTrainingRun(model_args, data_args, train_args).train()
    summary = {
        name: {key: results[key] for key in ("test_bleu", "test_chrf", "test_loss")}
        for name, results in (("posformer", ours), ("marian", peer))
    }
    summary["bleu_gap"] = summary["posformer"]["test_bleu"] - summary["marian"]["test_bleu"]
    return summary


def table(summary: dict) -> str:
    lines = ["| model | test BLEU | test chrF | test loss |", "|---|---|---|---|"]
    for name in ("posformer", "marian"):
        scores = summary[name]
        lines.append(f"| {name} | {scores['test_bleu']:.2f} | {scores['test_chrf']:.2f} | {scores['test_loss']:.3f} |")
    lines.append(f"\nBLEU gap (posformer - Marian): {summary['bleu_gap']:+.2f} (bar: within 1 BLEU)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", type=Path, required=True, help="Holds the two runs and summary.json.")
    parser.add_argument("extra", nargs="*", help="posformer-train arguments for both runs (after --).")
    args = parser.parse_args(argv)
    summary = compare(args.out_dir, args.extra)
    atomic_write_text(args.out_dir / "summary.json", json.dumps(summary, indent=2))
    print(table(summary))
    return summary


if __name__ == "__main__":
    main()
