"""Parity of `convert_from_transformers` at the sizes of released checkpoints: the largest logit difference from
transformers' own model (eager and sdpa, a padded batch) and whether greedy and beam-4 generation agree token for
token.

    python benchmarks/conversion_parity.py                       # every family, the table for docs/converting.md
    python benchmarks/conversion_parity.py --families opus-mt-en-de t5-small

No machine here reaches the Hub, so each model has the architecture of a released checkpoint (its config.json
values) and random weights at transformers' own initialisation; `mbart-large-50` keeps its width, heads and
vocabulary with 3+3 of its 12+12 layers, to fit in memory beside its conversion.
"""

import argparse
import time

import torch
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    MarianConfig,
    MarianMTModel,
    MBartConfig,
    MBartForConditionalGeneration,
    MT5Config,
    MT5ForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from posformer.modeling import convert_from_transformers

T5_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, num_heads=8, num_layers=6, d_ff=2048, decoder_start_token_id=0)
V11_SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, num_heads=6, num_layers=8, d_ff=1024, decoder_start_token_id=0,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # fmt: skip
MODELS = {
    "opus-mt-en-de": lambda: MarianMTModel(MarianConfig(
        vocab_size=58101, decoder_vocab_size=58101, d_model=512, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
        activation_function="swish", scale_embedding=True, max_position_embeddings=512, pad_token_id=58100,
        decoder_start_token_id=58100, eos_token_id=0)),
    "bart-base": lambda: BartForConditionalGeneration(BartConfig(
        vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
        decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)),
    "mbart-large-50 (3+3 layers)": lambda: MBartForConditionalGeneration(MBartConfig(
        vocab_size=250054, d_model=1024, encoder_layers=3, decoder_layers=3, encoder_attention_heads=16,
        decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, scale_embedding=True,
        decoder_start_token_id=2)),
    "t5-small": lambda: T5ForConditionalGeneration(T5Config(**T5_SMALL)),
    "flan-t5-small": lambda: T5ForConditionalGeneration(T5Config(**V11_SMALL)),
    "mt5-small": lambda: MT5ForConditionalGeneration(MT5Config(**{**V11_SMALL, "vocab_size": 250112})),
}  # fmt: skip
UNTIED = {"flan-t5-small", "mt5-small"}  # transformers ties the head of a T5 it builds; these checkpoints store theirs


def source_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]()
    if name in UNTIED:
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
    model.set_attn_implementation("eager")
    model.generation_config.forced_eos_token_id = None
    return model.eval()


def padded_batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """4 sources of 32 tokens, two right-padded, and 16 decoder inputs behind the start token."""
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    input_ids = torch.randint(3, vocab - 1, (4, 32), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -9:] = 0
    attention_mask[3, -20:] = 0
    decoder_input_ids = torch.randint(3, vocab - 1, (4, 16), generator=generator)
    decoder_input_ids[:, 0] = model.config.decoder_start_token_id
    return {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": decoder_input_ids}


@torch.no_grad()
def measure(name: str) -> dict[str, object]:
    source = source_model(name)
    start = time.perf_counter()
    converted = convert_from_transformers(source)
    seconds = time.perf_counter() - start
    batch = padded_batch(source)
    expected = source(**batch).logits
    row: dict[str, object] = {"model": name, "parameters": sum(p.numel() for p in source.parameters()),
                              "convert_s": seconds, "max |logit|": expected.abs().max().item()}  # fmt: skip
    for backend in ("eager", "sdpa"):
        converted.config._attn_implementation = backend
        row[f"max diff {backend}"] = (converted(**batch).logits - expected).abs().max().item()
    sources = {key: batch[key] for key in ("input_ids", "attention_mask")}
    for beams in (1, 4):
        options = {"num_beams": beams, "max_new_tokens": 24, "min_new_tokens": 24}
        row[f"beam{beams} equal"] = torch.equal(source.generate(**sources, **options),
                                                converted.generate(**sources, **options))  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="*", default=list(MODELS), choices=list(MODELS), metavar="MODEL")
    args = parser.parse_args(argv)
    rows = [measure(name) for name in args.families]
    print("| model | parameters | max abs logit | max diff eager | max diff sdpa | greedy equal | beam 4 equal |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['parameters'] / 1e6:.1f}M | {row['max |logit|']:.3g} | "
              f"{row['max diff eager']:.2g} | {row['max diff sdpa']:.2g} | {row['beam1 equal']} | "
              f"{row['beam4 equal']} |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
