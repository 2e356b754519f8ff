"""The base run of the encoder ablation grid (`make ablate-mask-rate`).

encoder-tiny (MLM) on the built-in offline corpus, 300 steps of 16 x 128 characters.
The grid first sets its scale's shapes and budget on it (experiments/ablations.py SCALES), then each cell's
mask rate.

Command:  make ablation-encoder
          jaxformer train --experiment ablation-encoder --workdir runs/ablation-encoder
Expected: MLM validation loss about 2.8 (learned positions, still near the unigram plateau); about 1.9 with
          model.positions=rope.
Measured: 2.81 (learned) and 1.91 (`--set model.positions=rope`) at step 300 (README, "Measured here").
"""

PRESET = "encoder-tiny"
OVERRIDES = ["train.steps=300"]
