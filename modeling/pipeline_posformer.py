"""`TranslationPipeline`: text in, translated text out, for any sequence-to-sequence model that generates.

transformers 5 removed its built-in `translation` and `text2text-generation` pipelines. A posformer checkpoint
declares this one in its `config.json` (`custom_pipelines`, written by `save_pretrained`) and carries this file,
so that where only transformers is installed

    translator = pipeline("translation", model="org/name", trust_remote_code=True)
    translator(["A sentence.", "Another one."], batch_size=2, num_beams=4, max_new_tokens=64)
    # [{"translation_text": "..."}, {"translation_text": "..."}]

works as the removed pipeline did. This file travels with the checkpoint: it imports only transformers and torch.
"""

from typing import Any

import torch
from transformers import Pipeline


class TranslationPipeline(Pipeline):
    """Tokenize the source text, `model.generate`, decode: `{"translation_text": ...}` per returned sequence.

    Call forms, as transformers 4's translation pipeline: a string gives a list with one record per returned
    sequence; a list of strings gives one record per string (a list of records per string when
    `num_return_sequences > 1`). Generation parameters (`num_beams`, `max_new_tokens`, a `generation_config`,
    ...) are accepted when the pipeline is built and when it is called, and go to `generate` unchanged on top
    of the model's generation config. Other parameters: `truncation` (tokenizer) and
    `clean_up_tokenization_spaces` (decoding).
    """

    _pipeline_calls_generate = True
    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def _sanitize_parameters(
        self,
        truncation: bool | str | None = None,
        clean_up_tokenization_spaces: bool | None = None,
        **generate_kwargs: Any,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Split keyword arguments into tokenizer, `generate` and decoding parameters."""
        preprocess_params = {} if truncation is None else {"truncation": truncation}
        postprocess_params = (
            {}
            if clean_up_tokenization_spaces is None
            else {"clean_up_tokenization_spaces": clean_up_tokenization_spaces}
        )
        return preprocess_params, generate_kwargs, postprocess_params

    def __call__(self, inputs: str | list[str], **kwargs: Any) -> list[dict[str, str]] | list[list[dict[str, str]]]:
        """Translate one text or a list of texts (see the class docstring for what comes back)."""
        result = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(len(records) == 1 for records in result):
            return [records[0] for records in result]
        return result

    def preprocess(self, text: str, truncation: bool | str = False) -> dict[str, torch.Tensor]:
        """One text -> `(1, S)` `input_ids` and `attention_mask` (the pipeline pads batches)."""
        if not isinstance(text, str):
            raise TypeError(f"TranslationPipeline translates strings or lists of strings, got {type(text).__name__}.")
        return self.tokenizer(text, return_tensors="pt", truncation=truncation)

    def _forward(self, model_inputs: dict[str, torch.Tensor], **generate_kwargs: Any) -> dict[str, torch.Tensor]:
        """`(B, S)` inputs -> `(B, n, T)` generated ids, `n` sequences per input."""
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs)
        output_ids = self.model.generate(**model_inputs, **generate_kwargs)  # (B * n, T)
        batch = model_inputs["input_ids"].shape[0]
        return {"output_ids": output_ids.reshape(batch, -1, output_ids.shape[-1])}

    def postprocess(
        self, model_outputs: dict[str, torch.Tensor], clean_up_tokenization_spaces: bool = False
    ) -> list[dict[str, str]]:
        """`(1, n, T)` ids of one input -> `n` records `{"translation_text": ...}`."""
        return [
            {
                "translation_text": self.tokenizer.decode(
                    ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces
                )
            }
            for ids in model_outputs["output_ids"][0]
        ]


__all__ = ["TranslationPipeline"]
