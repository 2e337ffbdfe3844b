"""`posformer-attention`: draw a model's attention weights on one sentence pair, for any position encoding.

    posformer-attention CHECKPOINT "The file could not be opened." [--target "..."] --out maps.png

CHECKPOINT is a model folder (a run's `model/`, an export) or a Hub id. The model runs with eager attention, the
one kernel that returns the attention probabilities, on the source and on the given target or, without one, on
its own greedy translation. The PNG holds three stacked sections, one per kind of attention: encoder
self-attention (source x source), decoder self-attention (target x target, causal) and cross-attention (target x
source). Each section is a grid with one heatmap per layer (rows) and head (columns) on a shared 0-1 colour scale,
query tokens down the rows and attended tokens along the columns. One file keeps the three views of one sentence
together; a section's panels grow with the number of tokens so that labels stay legible.

The decoder's rows are its input tokens: the decoder start token followed by the target tokens (ending in the end
token), so row i is the state that predicts target token i.
"""

import argparse
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from matplotlib.figure import Figure, SubFigure
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

import posformer.modeling  # noqa: F401  (registers posformer with the Auto classes)

from .arguments import check_output_file, check_tokenizer_folder
from .console import log_to_console
from .plots import write_png
from .run_folder import model_source
from .translation import generation_budget

logger = logging.getLogger(__spec__.name)  # the module's name also when run as `python -m`

# Kind of attention -> (section title, query tokens, key tokens). `attention_maps` returns one tensor per kind.
ATTENTION_KINDS = {
    "encoder_self": ("Encoder self-attention (source → source)", "source_tokens", "source_tokens"),
    "decoder_self": ("Decoder self-attention (target → target, causal)", "target_tokens", "target_tokens"),
    "cross": ("Cross-attention (target → source)", "target_tokens", "source_tokens"),
}

# Figure geometry in inches: one token row/column, the smallest panel, room for labels and titles.
INCHES_PER_TOKEN = 0.2
MIN_PANEL_INCHES = 1.6
LABEL_INCHES = 1.3
SECTION_TITLE_INCHES = 0.6
TICK_FONT_SIZE = 7


# ---------------------------------------------------------------------------------------------------------------
# Attention weights
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eager_inference(model: PreTrainedModel) -> Iterator[None]:
    """Run the body in eval mode with eager attention; restore the model's backend and train/eval mode after."""
    implementation, training = model.config._attn_implementation, model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        yield
    finally:
        model.set_attn_implementation(implementation)
        model.train(training)


@torch.no_grad()
def _greedy_decoder_ids(model: PreTrainedModel, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """`(1, T)` decoder input ids of the greedy translation: decoder start token, then the generated tokens."""
    return model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        num_beams=1,
        do_sample=False,
        length_penalty=1.0,
        early_stopping=False,
        max_new_tokens=max_new_tokens,
    )


def _target_decoder_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: str) -> torch.Tensor:
    """`(1, T)` decoder input ids of a given target: decoder start token, then the target's tokens with `</s>`."""
    start = model.config.decoder_start_token_id
    if start is None:
        raise ValueError("The model's config has no decoder_start_token_id; cannot feed a target to the decoder.")
    target_ids = tokenizer(text_target=target)["input_ids"]
    return torch.tensor([[start, *target_ids]])


def _stack_layers(per_layer: tuple[torch.Tensor, ...] | None, kind: str) -> torch.Tensor:
    """`layers x (1, heads, q, k)` -> `(layers, heads, q, k)` float32 on CPU."""
    if not per_layer or any(weights is None for weights in per_layer):
        raise RuntimeError(f"The model returned no {kind} attention weights although it ran with eager attention.")
    return torch.stack([weights[0] for weights in per_layer]).float().cpu()


@torch.no_grad()
def attention_maps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    target: str | None = None,
    *,
    max_new_tokens: int | None = None,
) -> dict:
    """Attention probabilities of every layer and head for one sentence pair.

    Runs `model` with eager attention on `source` and on `target` or, when it is None, on the model's greedy
    translation (at most `max_new_tokens` new tokens; default 1.5 x the source length + 10). The model's attention
    backend and train/eval mode are restored afterwards. Returns:

        source_tokens  list[str], S tokens of the source (with `</s>`)
        target_tokens  list[str], T decoder input tokens: the decoder start token, then the target with `</s>`
        translation    str, the target text (given, or decoded from the greedy translation)
        encoder_self   (encoder_layers, encoder_heads, S, S)
        decoder_self   (decoder_layers, decoder_heads, T, T), zero above the diagonal
        cross          (decoder_layers, decoder_heads, T, S)

    Each row of a weight tensor (a query position) sums to 1.
    """
    input_ids = tokenizer(source, return_tensors="pt")["input_ids"].to(model.device)  # (1, S)
    with _eager_inference(model):
        if target is None:
            budget = max_new_tokens if max_new_tokens is not None else generation_budget(input_ids.shape[1])
            decoder_ids = _greedy_decoder_ids(model, input_ids, budget)
        else:
            decoder_ids = _target_decoder_ids(model, tokenizer, target).to(model.device)  # (1, T)
        outputs = model(input_ids=input_ids, decoder_input_ids=decoder_ids, output_attentions=True)
    return {
        "source_tokens": tokenizer.convert_ids_to_tokens(input_ids[0].tolist()),
        "target_tokens": tokenizer.convert_ids_to_tokens(decoder_ids[0].tolist()),
        "translation": target if target is not None else tokenizer.decode(decoder_ids[0], skip_special_tokens=True),
        "encoder_self": _stack_layers(outputs.encoder_attentions, "encoder self-"),
        "decoder_self": _stack_layers(outputs.decoder_attentions, "decoder self-"),
        "cross": _stack_layers(outputs.cross_attentions, "cross-"),
    }


# ---------------------------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------------------------


def _panel_inches(maps: dict, kind: str) -> tuple[float, float]:
    """(width, height) of one heatmap of `kind`: enough room per token for its label, never below the minimum."""
    _, query_key, key_key = ATTENTION_KINDS[kind]
    width = max(MIN_PANEL_INCHES, INCHES_PER_TOKEN * len(maps[key_key]))
    height = max(MIN_PANEL_INCHES, INCHES_PER_TOKEN * len(maps[query_key]))
    return width, height


def _section_inches(maps: dict, kind: str) -> tuple[float, float]:
    """(width, height) of one section: its layers x heads panels, their tick labels, titles and colour bar."""
    layers, heads = maps[kind].shape[:2]
    width, height = _panel_inches(maps, kind)
    return heads * (width + 0.3) + 2 * LABEL_INCHES, layers * (height + 0.4) + LABEL_INCHES + SECTION_TITLE_INCHES


def _draw_section(section: SubFigure, weights: torch.Tensor, queries: list[str], keys: list[str], title: str) -> None:
    """A layers x heads grid of heatmaps of `(layers, heads, q, k)` weights: tokens on the outer axes, a colour bar."""
    layers, heads = weights.shape[:2]
    grid = section.subplots(layers, heads, squeeze=False, sharex=True, sharey=True)
    for layer in range(layers):
        for head in range(heads):
            axes = grid[layer, head]
            image = axes.imshow(weights[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
            axes.set_title(f"layer {layer + 1}, head {head + 1}", fontsize=9)
            axes.set_xticks(range(len(keys)), keys, rotation=90, fontsize=TICK_FONT_SIZE)
            axes.set_yticks(range(len(queries)), queries, fontsize=TICK_FONT_SIZE)
            axes.tick_params(labelbottom=layer == layers - 1, labelleft=head == 0, length=2)
    section.colorbar(image, ax=grid, label="attention weight", shrink=0.9)
    section.suptitle(title, fontsize=12, fontweight="bold")


def attention_figure(maps: dict) -> Figure:
    """The three sections of `ATTENTION_KINDS` stacked in one figure (`figure.subfigs`, in that order)."""
    sizes = [_section_inches(maps, kind) for kind in ATTENTION_KINDS]
    figure = Figure(
        figsize=(max(width for width, _ in sizes), sum(height for _, height in sizes)), layout="constrained", dpi=100
    )
    sections = figure.subfigures(len(sizes), 1, height_ratios=[height for _, height in sizes])
    for section, (kind, (title, query_key, key_key)) in zip(sections, ATTENTION_KINDS.items(), strict=True):
        _draw_section(section, maps[kind], maps[query_key], maps[key_key], title)
    return figure


def plot_attention_maps(maps: dict, out_png: Path) -> Path:
    """Draw `attention_maps(...)`'s result (`attention_figure`) to one PNG, written atomically; return `out_png`."""
    return write_png(attention_figure(maps), out_png)


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posformer-attention",
        description="Draw the encoder self-, decoder self- and cross-attention of every layer and head on one "
        "sentence as heatmaps in one PNG.",
    )
    parser.add_argument("checkpoint", help="model folder or Hub id (AutoModelForSeq2SeqLM / AutoTokenizer)")
    parser.add_argument("source", help="the source sentence")
    parser.add_argument("--target", help="the target sentence to feed the decoder (default: the greedy translation)")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--max_new_tokens", type=int, help="length budget of the greedy translation")
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    """Every argument checked before the model loads: `ValueError`/`FileNotFoundError` naming the one that is wrong."""
    model_source(args.checkpoint, "checkpoint")
    check_tokenizer_folder(args.checkpoint, "checkpoint")
    check_output_file(args.out, "--out", "attention.png")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}.")


def cli(argv: list[str] | None = None) -> None:
    """Console entry point `posformer-attention`."""
    log_to_console()
    args = _parser().parse_args(argv)
    _check_arguments(args)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForSeq2SeqLM.from_pretrained(args.checkpoint, attn_implementation="eager")
    maps = attention_maps(model, tokenizer, args.source, args.target, max_new_tokens=args.max_new_tokens)
    path = plot_attention_maps(maps, args.out)
    logger.info(f"source: {' '.join(maps['source_tokens'])}\ntarget: {' '.join(maps['target_tokens'])}\nwrote {path}")


if __name__ == "__main__":
    cli()
