"""jaxformer: one functional Flax transformer, two objectives (masked-LM encoder, next-token decoder),
one sharded jit-compiled train step. See README.md and the design notes (DESIGN.md)."""

__version__ = "0.1.0"
