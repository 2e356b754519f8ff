"""The base run of the decoder ablation grids (`make ablate-positions`, -norms, -attention, -mlp, -moe, -objective,
-size).

decoder-tiny on the built-in offline corpus, 300 steps of 16 x 128 characters; each grid variant changes one
setting of this.
The grids first set their scale's shapes and budget on it (experiments/ablations.py SCALES), then each
cell's one change.

Command:  make ablation-decoder
          jaxformer train --experiment ablation-decoder --workdir runs/ablation-decoder
Expected: validation loss about 2.1 (learned positions); about 1.6 with model.positions=rope.
Measured: 2.08 (learned) and 1.62 (`--set model.positions=rope`) at step 300 (README, "Measured here").
"""

PRESET = "decoder-tiny"
OVERRIDES = ["train.steps=300"]
