"""jaxformer: one functional Flax transformer, two objectives (masked-LM encoder, next-token decoder),
one sharded jit-compiled train step. See README.md.

Shape suffixes. An array's name ends in its shape, one capital per axis joined by `x` (`x_BxTxD` is
[batch, positions, d_model]); each letter means one thing everywhere in the package:

    B  batch rows                      V  vocabulary
    T  positions (queries)             S  key/value positions (attention, KV cache slots)
    D  model width (d_model)           F  MLP hidden width
    N  query heads                     G  key/value heads (n_kv_heads; GQA groups)
    H  head dimension                  E  experts
    C  expert capacity (slots)         K  top-k choices (router picks, sampling candidates)
    M  prediction slots (MLM masks)    P  prompt length
    L  prompt + generated buffer       W  width of the chunk being decoded
    R  generated (returned) tokens     1  an axis of size one
    U  vocabulary padded to model.vocab_pad_multiple (the head's matmul width; sliced to V right after)
"""

__version__ = "0.1.0"

# Before anything can start XLA's CPU threads: keep a step's freed scratch memory mapped for the next step
# (jaxformer/host_memory.py; JAXFORMER_HOST_MALLOC=system keeps glibc's defaults).
from jaxformer import host_memory as _host_memory  # noqa: E402

_host_memory.apply_policy()
