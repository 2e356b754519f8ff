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

import os

__version__ = "0.1.0"

# XLA:CPU orders a program for concurrency by default, keeping every layer's activations alive until the
# backward pass and recomputing a rematerialised block right after its forward pass (so `model.remat` changed
# nothing on CPU). Its memory-aware scheduler frees activations early: an 8-layer GPT-2-width train step (batch
# 8 x 256) needs 3,689 MB of XLA scratch under the default, 2,645 MB with this scheduler (2,052 MB with remat as
# well); peak RSS of the M benchmark cells fell 15-17% at the same speed (2-core CPU, two A/B rounds: 0.98x CLM,
# 1.01x MLM). XLA reads it only from XLA_FLAGS when JAX starts its CPU backend (a per-jit compiler option does
# not reach the scheduler), so it is set here, on import, unless XLA_FLAGS already chooses
# (tests/test_cpu_memory.py); other backends ignore it.
if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()
