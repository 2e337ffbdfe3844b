"""Input checks at the public boundary of the model: every stack's `forward` (which the model's forward, `generate`
and a user's direct call all pass through), the loss's labels, and `generate`'s arguments.

Shapes and dtypes, plus one min/max over the ids: cheap enough for every step (`benchmarks/input_checks.py`:
about 0.2% of a forward pass of the tiny preset on a CPU). Each raises `ValueError`/`TypeError` naming the
argument as the encoder-decoder model's forward calls it, what did not fit, and the fix.
"""

import math

import torch
from transformers import GenerationConfig

from ..configuration.configuration_posformer import PosformerConfig


def check_values_within(name: str, values: torch.Tensor, low: int, high: int, fix: str) -> None:
    """Raise `ValueError` when a value of the non-empty `values` lies outside `[low, high)`: one `aminmax` and one
    device sync. torch.compile and torch.export trace no branch on tensor values: there it is an assertion in the
    graph."""
    if torch.compiler.is_compiling():
        torch._assert_async(((values >= low) & (values < high)).all(), f"{name} outside [{low}, {high})")
        return
    smallest, largest = torch.stack(torch.aminmax(values)).tolist()
    if smallest < low or largest >= high:
        raise ValueError(
            f"{name} holds {smallest if smallest < low else largest}, outside [{low}, {high}) ({name} spans "
            f"{smallest}..{largest}): {fix}"
        )


def check_sequence_shape(name: str, shape: torch.Size, layout: str) -> None:
    """Raise `ValueError` unless `shape` is `layout` (`"(batch, length)"` or `"(batch, length, d_model)"`) with at
    least one row and one position."""
    if len(shape) != layout.count(",") + 1:
        raise ValueError(
            f"{name} must be {layout}, got shape {tuple(shape)}. A single sequence needs its batch dimension: "
            f"{name}[None]."
        )
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(
            f"{name} of shape {tuple(shape)} is empty: a batch needs at least one row and every row at least one "
            "token (an empty text still encodes to its end-of-sequence token)."
        )


def check_stack_inputs(
    prefix: str,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    config: PosformerConfig,
    vocab_size: int,
) -> tuple[int, int]:
    """The `(batch, length)` of a stack's `{prefix}input_ids` `(B, L)` or `{prefix}inputs_embeds` `(B, L, d)`, after
    checking that exactly one is given, its dtype, its shape and, for ids, that each is a row of the stack's embedding
    table of `vocab_size` rows (the source or the target vocabulary)."""
    ids_name, embeds_name = f"{prefix}input_ids", f"{prefix}inputs_embeds"
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"Pass exactly one of {ids_name} and {embeds_name}.")
    if input_ids is not None:
        if input_ids.dtype not in (torch.long, torch.int):
            raise TypeError(
                f"{ids_name} must hold integer token ids (torch.long), got dtype {input_ids.dtype}: pass the "
                f"tokenizer's ids, or convert with {ids_name}.long()."
            )
        check_sequence_shape(ids_name, input_ids.shape, "(batch, length)")
        check_values_within(
            ids_name,
            input_ids,
            0,
            vocab_size,
            f"every id must be a row of the embedding table ({prefix}vocab_size={vocab_size}). "
            "Encode the text with the tokenizer this model was trained with.",
        )
        return input_ids.shape[0], input_ids.shape[1]
    if not inputs_embeds.is_floating_point():
        raise TypeError(f"{embeds_name} must be floating point, got dtype {inputs_embeds.dtype}.")
    check_sequence_shape(embeds_name, inputs_embeds.shape, "(batch, length, d_model)")
    if inputs_embeds.shape[-1] != config.d_model:
        raise ValueError(
            f"{embeds_name} has {inputs_embeds.shape[-1]} features per position, but d_model={config.d_model}: "
            f"pass embeddings of this model's width, e.g. model.get_input_embeddings()({ids_name})."
        )
    return inputs_embeds.shape[0], inputs_embeds.shape[1]


def check_attention_mask(
    name: str, mask: torch.Tensor | None, batch: int, query_length: int, key_lengths: tuple[int, ...], keys: str
) -> None:
    """Raise `ValueError` unless `mask` is a `(batch, k)` padding mask or a `(batch|1, heads|1, query_length, k)`
    custom one, with `k` one of `key_lengths` (the lengths `keys`, named in the message, may have). Anything but a
    tensor (flex attention's `BlockMask`) goes to the kernel as it is."""
    if not isinstance(mask, torch.Tensor):
        return
    shape, key_length = tuple(mask.shape), " or ".join(str(length) for length in key_lengths)
    if mask.ndim == 2 and (shape[0] != batch or shape[1] not in key_lengths):
        raise ValueError(
            f"{name} of shape {shape} does not fit its inputs: a padding mask needs one row per sequence and one "
            f"column per position of {keys}, shape ({batch}, {key_length}). Pass the attention_mask that the "
            "tokenizer returned with those ids."
        )
    if mask.ndim == 4 and (shape[0] not in (1, batch) or shape[2] != query_length or shape[3] not in key_lengths):
        raise ValueError(
            f"{name} of shape {shape} does not fit its inputs: a 4D mask must be ({batch} or 1, heads or 1, "
            f"{query_length}, {key_length}) for {query_length} queries over {keys}. Or pass the ({batch}, "
            f"{key_lengths[0]}) padding mask, which the model expands itself."
        )
    if mask.ndim not in (2, 4):
        raise ValueError(
            f"{name} must be a (batch, length) padding mask or a 4D (batch, heads, queries, keys) mask, got shape "
            f"{shape}."
        )


def check_position_ids(name: str, position_ids: torch.Tensor | None, batch: int, length: int) -> None:
    """Raise `ValueError` unless `position_ids` is `(batch|1, length)`: one position per input position."""
    if position_ids is None:
        return
    shape = tuple(position_ids.shape)
    if len(shape) != 2 or shape[0] not in (1, batch) or shape[1] != length:
        raise ValueError(
            f"{name} of shape {shape} does not fit its inputs: it needs one position per input position, shape "
            f"({batch}, {length}), or (1, {length}) for every row. Leave it out for the positions 0, 1, 2, ..."
        )


def check_encoder_states(
    states: torch.Tensor, attention_mask: torch.Tensor | None, batch: int, length: int, d_model: int
) -> None:
    """Raise `ValueError` unless the `(B, S, d)` encoder states that the decoder attends to (the encoder's output, or
    `encoder_outputs`) and their `attention_mask` fit the decoder's `batch` rows and `length` queries."""
    if states.ndim != 3 or states.shape[0] != batch or states.shape[-1] != d_model:
        raise ValueError(
            f"The encoder states (from input_ids, inputs_embeds or encoder_outputs) have shape {tuple(states.shape)}, "
            f"but the decoder needs ({batch}, source length, d_model={d_model}) for its {batch} rows "
            "(decoder_input_ids, decoder_inputs_embeds or labels): pass sources and targets of the same sentence "
            "pairs, one row each."
        )
    name = "attention_mask (the source's, which the decoder's cross-attention also reads)"
    check_attention_mask(name, attention_mask, batch, length, (states.shape[1],), "the source")


def check_labels(labels: torch.Tensor, decoder_shape: tuple[int, int] | None, vocab_size: int) -> None:
    """Raise unless `labels` are `(B, T)` token ids in `[0, vocab_size)` or -100 (ignored), of the decoder inputs'
    `decoder_shape` when those are given: the loss pairs the logits of each row and position with the label there."""
    if labels.dtype not in (torch.long, torch.int):
        raise TypeError(
            f"labels must hold integer token ids (torch.long), got dtype {labels.dtype}: convert with labels.long()."
        )
    check_sequence_shape("labels", labels.shape, "(batch, length)")
    if decoder_shape is not None and tuple(labels.shape) != decoder_shape:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match the decoder inputs of shape {decoder_shape}: the loss "
            "pairs the logits of each row and position with the label there. Pad labels and decoder_input_ids of the "
            "same pairs to the same length (labels with -100), or pass only labels (the decoder inputs are then the "
            "labels shifted right)."
        )
    check_values_within(
        "labels",
        labels.masked_fill(labels == -100, 0),
        0,
        vocab_size,
        f"every label must be a token id (vocab_size={vocab_size}) or -100, which the loss ignores (padding).",
    )


GENERATION_COUNTS: dict[str, tuple[int, str]] = {
    # transformers 5.20-5.24: 0 is a ZeroDivisionError, -1 "negative dimension", "2" a TypeError from a comparison
    "num_beams": (1, "1 is greedy search or sampling, more is beam search"),
    "num_return_sequences": (1, "the sequences returned per input row"),  # 0 or less: one per row, silently
    "max_new_tokens": (1, "the most tokens generated"),  # a float: accepted, silently
    "max_length": (1, "the longest output in tokens, its start token included"),
    "min_new_tokens": (0, "the fewest tokens generated"),  # negative: accepted, silently
    "min_length": (0, "the shortest output in tokens"),
    "no_repeat_ngram_size": (0, "0 allows every repetition"),  # negative: no constraint, silently
    "encoder_no_repeat_ngram_size": (0, "0 allows every n-gram of the source"),
}
"""The integer arguments of `generate` that transformers' own checks (`GenerationConfig.validate`, the logits
processors) let through when negative, zero or not integers, each with its smallest valid value and what it counts."""

GENERATION_TOKEN_IDS = (
    "decoder_start_token_id",  # out of the vocabulary: IndexError in the first forward
    "eos_token_id",  # out of the vocabulary: generation never stops, silently
    "pad_token_id",  # out of the vocabulary: written into the output, which then fails to decode
    "bos_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
)
"""The token ids (each an id, a list of ids, or None) that `generate` reads and transformers does not range-check."""


def check_generation_arguments(kwargs: dict, generation_config: GenerationConfig, vocab_size: int) -> None:
    """Raise `TypeError`/`ValueError` for the generation arguments (each read from `generate`'s `kwargs`, else from
    `generation_config`) that transformers 5.20-5.24 let through to a `ZeroDivisionError` or to silent nonsense: the
    counts of `GENERATION_COUNTS`, the ids of `GENERATION_TOKEN_IDS`, `top_p` outside [0, 1] and a non-finite
    `length_penalty`. (transformers itself rejects a bad `temperature`, `top_k`, `repetition_penalty` or `min_p` and
    `num_return_sequences > num_beams`, clearly; `max_new_tokens` and `max_length` it checks for value, not type.)"""
    names = (*GENERATION_COUNTS, *GENERATION_TOKEN_IDS, "top_p", "length_penalty")
    arguments = {name: kwargs[name] if name in kwargs else getattr(generation_config, name, None) for name in names}
    for name, (smallest, meaning) in GENERATION_COUNTS.items():
        value = arguments.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"generate: {name} must be an integer of at least {smallest} ({meaning}), got {value!r}.")
        if value < smallest:
            raise ValueError(f"generate: {name} must be an integer of at least {smallest} ({meaning}), got {value}.")
    for name in GENERATION_TOKEN_IDS:
        value = arguments.get(name)
        ids = [] if value is None else torch.as_tensor(value).flatten().tolist()
        if any(not 0 <= token_id < vocab_size for token_id in ids):
            raise ValueError(
                f"generate: {name}={value} is outside the vocabulary [0, vocab_size={vocab_size}). Pass an id of the "
                f"tokenizer (tokenizer.convert_tokens_to_ids), or leave {name} to the model's generation config."
            )
    top_p = arguments.get("top_p")
    if top_p is not None and not 0 <= top_p <= 1:
        raise ValueError(
            f"generate: top_p must be in [0, 1], got {top_p}: the share of the probability mass that sampling draws "
            "from (1.0: all of it)."
        )
    length_penalty = arguments.get("length_penalty")
    if length_penalty is not None and not math.isfinite(length_penalty):
        raise ValueError(f"generate: length_penalty must be a finite number, got {length_penalty} (1.0: no penalty).")
