"""Translating and scoring with a trained model: the training loop's evaluation, the position-encoding study and
the benchmarks all translate and measure the loss this way.
"""

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..modeling import POSITION_ENCODINGS
from ..modeling.modeling_posformer import seq2seq_loss
from .data import collate


def generation_budget(source_tokens: int) -> int:
    """New tokens allowed for a source of `source_tokens` tokens: `1.5 n + 10`, room for a target somewhat longer
    than its source (German runs about 1.2x English) without letting a model that never ends run far."""
    return int(source_tokens * 1.5) + 10


def position_limit(config: PretrainedConfig) -> int | None:
    """The most positions the model can encode: `max_position_embeddings` for an encoding bounded by a table
    (`learned`), none for the others; for a model that is not posformer (Marian's sinusoids are a table too), its
    `max_position_embeddings` when it has one."""
    encoding = POSITION_ENCODINGS.get(getattr(config, "position_encoding", None))
    if encoding is not None and not encoding.bounded_by_max_positions:
        return None
    return getattr(config, "max_position_embeddings", None)


@torch.no_grad()
def translate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: list[str],
    batch_size: int,
    *,
    show_progress: bool = False,
    **generation: object,
) -> list[str]:
    """Translations of `sources`, in their order, decoded with the model's generation config overridden by
    `generation` (e.g. `num_beams`, `length_penalty`) and a budget of `generation_budget` new tokens.

    Sources are batched by length (similar lengths pad little). With a position table (`learned`), sources are
    truncated to it and translations stop at its end, instead of failing.
    """
    model.eval()
    limit = position_limit(model.config)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    translations: dict[int, str] = {}
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="translating", leave=False, disable=not show_progress):
        indices = order[start : start + batch_size]
        encoded = tokenizer(
            [sources[i] for i in indices], padding=True, truncation=limit is not None, max_length=limit,
            return_tensors="pt",
        ).to(model.device)  # fmt: skip
        budget = generation_budget(encoded["input_ids"].shape[1])
        budget = budget if limit is None else min(budget, limit - 1)
        generated = model.generate(**encoded, **generation, max_new_tokens=budget)
        for index, text in zip(indices, tokenizer.batch_decode(generated, skip_special_tokens=True), strict=True):
            translations[index] = text
    return [translations[i] for i in range(len(sources))]


@torch.no_grad()
def corpus_loss(
    model: PreTrainedModel, pairs: Dataset, pad_token_id: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed token cross-entropy (no label smoothing) of tokenized `pairs` (`input_ids`, `labels`, as
    `data.tokenize_pairs` makes them) and their number of target tokens, both on the model's device.

    Batches are consecutive rows padded by `data.collate`, the training batches' padding."""
    model.eval()
    total = torch.zeros((), device=model.device)
    count = torch.zeros((), device=model.device, dtype=torch.long)
    rows = pairs.select_columns(["input_ids", "labels"]).with_format("arrow")
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad_token_id)
        batch = {name: tensor.to(model.device) for name, tensor in batch.items()}
        labels = batch.pop("labels")
        # no `labels` to the model: the loss is taken here, from the logits, as in training
        logits = model(**batch, decoder_input_ids=model.prepare_decoder_input_ids_from_labels(labels)).logits
        total += seq2seq_loss(logits, labels, num_items_in_batch=1)  # the sum
        count += (labels != -100).sum()
    return total, count
