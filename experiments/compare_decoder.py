"""The decoder half of the encoder-vs-decoder comparison (notebooks/encoder_vs_decoder.py).

decoder-tiny on tiny shakespeare, 300 steps of 16 x 128 characters; compare-encoder is the same with the MLM
objective and the same data, budget and seed.

Command:  make compare-decoder
          jaxformer train --experiment compare-decoder --workdir runs/compare-decoder
Expected: a validation loss well under the unigram entropy of the characters (about 3.3 nats): about 2.0.
Measured: see MEASURED below (2 CPU cores, fp32, jax 0.10.2).
"""

PRESET = "decoder-tiny"
OVERRIDES = ["data.source=text:@data/tinyshakespeare/input.txt", "train.steps=300", "train.eval_every=50",
             "train.log_every=25", "train.checkpoint_every=1000"]
