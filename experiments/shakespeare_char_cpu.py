"""nanoGPT's CPU "baby" shakespeare_char run: validation loss 1.88 in minutes on a laptop CPU.

4 layers, d 128, 4 heads, 2000 steps of 12 x 64 characters, no dropout, nanoGPT's optimizer settings.

Command:  make shakespeare-char-cpu
          jaxformer train --experiment shakespeare-char-cpu --workdir runs/shakespeare-char-cpu
Expected: validation loss 1.88 (nanoGPT's README: "a loss of only 1.88", about 3 minutes on a CPU).
Measured: 1.879 at step 2000, 2 min 46 s (~11,000 tokens/s) on 2 CPU cores, fp32, jax 0.10.2 (README,
          "Measured here").
"""

PRESET = "shakespeare-char-cpu"
OVERRIDES = []
