"""The decoder half of the encoder-vs-decoder comparison (notebooks/encoder_vs_decoder.py).

decoder-tiny on tiny shakespeare, 300 steps of 16 x 128 characters; compare-encoder is the same with the MLM
objective and the same data, budget and seed.

Command:  make compare-decoder
          jaxformer train --experiment compare-decoder --workdir runs/compare-decoder
Expected: a validation loss well under the characters' unigram entropy (3.31 nats on this file).
Measured: validation loss 2.62 (step 50) -> 2.37 (step 300), accuracy 0.30; 5 min 15 s on 2 shared CPU cores
          (load ~10, 2,100-3,300 tokens/s), fp32, jax 0.10.2.
"""

PRESET = "decoder-tiny"
OVERRIDES = ["data.source=text:@data/tinyshakespeare/input.txt", "train.steps=300", "train.eval_every=50",
             "train.log_every=25", "train.checkpoint_every=1000"]
