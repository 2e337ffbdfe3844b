"""posformer's configuration: `PosformerConfig`."""

from .configuration_posformer import PosformerConfig

__all__ = ["PosformerConfig"]
