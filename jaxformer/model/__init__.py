"""The transformer: one NNX module tree for encoders and decoders (see transformer.py)."""

from jaxformer.model.transformer import Transformer, build_model

__all__ = ["Transformer", "build_model"]
