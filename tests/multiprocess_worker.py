"""Worker for test_multiprocess.py: train a tiny run (possibly as one of several JAX processes) and save
the final parameters, gathered to process 0, as .npz."""

import sys

from jaxformer import distributed

distributed.maybe_initialize()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from tiny import tiny_config  # noqa: E402

from jaxformer import trainer  # noqa: E402
from jaxformer.model import attention_kernels  # noqa: E402

workdir, out = sys.argv[1], sys.argv[2]
cfg = tiny_config("clm", "train.steps=4", "train.log_every=2", "train.eval_every=4", "train.eval_batches=1",
                  "train.checkpoint_every=2", "mesh.data=2", "mesh.fsdp=2", resolved=False)
result = trainer.train_loop(cfg, workdir, show_progress=False)
print("attention kernel:", attention_kernels.resolve_for(result["run"].state.cfg), flush=True)
params = [np.asarray(multihost_utils.process_allgather(p, tiled=True))
          for p in jax.tree.leaves(result["run"].state.params)]
if jax.process_index() == 0:
    np.savez(out, *params, loss=np.float64(result["loss"]), valid_loss=np.float64(result["valid_loss"]))
