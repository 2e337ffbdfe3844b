"""posformer's models and translation pipeline. Importing this package registers the models with transformers'
Auto classes; every `save_pretrained` also writes the code that loads them without posformer (`remote_code.py`)."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from ..configuration.configuration_posformer import PosformerConfig
from .from_transformers import UnsupportedModelError, convert_from_transformers
from .modeling_posformer import (
    PosformerDecoder,
    PosformerEncoder,
    PosformerForConditionalGeneration,
    PosformerModel,
    PosformerPreTrainedModel,
)
from .pipeline_posformer import TranslationPipeline
from .position_encodings import POSITION_ENCODINGS

AutoConfig.register(PosformerConfig.model_type, PosformerConfig, exist_ok=True)
AutoModel.register(PosformerConfig, PosformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(PosformerConfig, PosformerForConditionalGeneration, exist_ok=True)

__all__ = [
    "POSITION_ENCODINGS",
    "PosformerConfig",
    "PosformerDecoder",
    "PosformerEncoder",
    "PosformerForConditionalGeneration",
    "PosformerModel",
    "PosformerPreTrainedModel",
    "TranslationPipeline",
    "UnsupportedModelError",
    "convert_from_transformers",
]
