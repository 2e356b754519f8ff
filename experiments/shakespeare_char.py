"""nanoGPT's GPU shakespeare_char config: validation loss 1.47 on one accelerator.

6 layers, d 384, 6 heads, dropout 0.2, 5000 steps of 64 x 256 characters.

Command:  make shakespeare-char
          jaxformer train --experiment shakespeare-char --workdir runs/shakespeare-char
Expected: best validation loss 1.47 (nanoGPT's README: "On one A100 GPU this training run takes about 3 minutes
          and the best validation loss is 1.4697").
Measured: to be measured on an accelerator (82 M training tokens through 10.7 M parameters: hours on the
          2-core CPU these numbers are measured on).
"""

PRESET = "shakespeare-char"
OVERRIDES = []
