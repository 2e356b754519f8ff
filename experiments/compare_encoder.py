"""The encoder half of the encoder-vs-decoder comparison (notebooks/encoder_vs_decoder.py).

encoder-tiny (MLM, 15% of the characters masked) on tiny shakespeare, 300 steps of 16 x 128 characters, the
same data, budget and seed as compare-decoder.

Command:  make compare-encoder
          jaxformer train --experiment compare-encoder --workdir runs/compare-encoder
Expected: an MLM validation loss still near the characters' unigram entropy (3.31 nats on this file) at this
          budget: with learned absolute positions the encoder needs hundreds of steps to leave that plateau (README).
Measured: validation loss 3.29 (step 50) -> 3.16 (step 300), accuracy 0.21 on the masked characters; 4 min 39 s
          on 2 shared CPU cores (load ~10), fp32, jax 0.10.2.
"""

PRESET = "encoder-tiny"
OVERRIDES = ["data.source=text:@data/tinyshakespeare/input.txt", "train.steps=300", "train.eval_every=50",
             "train.log_every=25", "train.checkpoint_every=1000"]
