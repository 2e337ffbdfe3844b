"""posformer's models. Importing this package registers them with transformers' Auto classes."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM

from ..configuration.configuration_posformer import PosformerConfig
from .modeling_posformer import (
    PosformerDecoder,
    PosformerEncoder,
    PosformerForConditionalGeneration,
    PosformerModel,
    PosformerPreTrainedModel,
)
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
]
