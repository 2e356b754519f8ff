"""Multi-process (multi-host) start-up: `jax.distributed.initialize` from the environment, when asked for.

Set `JAX_COORDINATOR_ADDRESS=host:port`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (or run under a cluster that
JAX detects itself: TPU pods, SLURM, ...). Every process then runs the same command; each feeds only its rows of
the global batch (`data.batching.batch_at` + `jax.make_array_from_process_local_data`), process 0 writes the
run's files, and orbax writes each process's shards of the checkpoint.
"""

from __future__ import annotations

import os

import jax

from jaxformer.errors import UserError


def maybe_initialize() -> bool:
    """Initialise JAX's distributed runtime if the environment describes more than one process."""
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return False
    try:
        n = int(os.environ.get("JAX_NUM_PROCESSES", ""))
        pid = int(os.environ.get("JAX_PROCESS_ID", ""))
    except ValueError:
        raise UserError("JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID must be set to "
                        "integers too (or unset JAX_COORDINATOR_ADDRESS for a single-process run).") from None
    timeout = int(os.environ.get("JAXFORMER_INIT_TIMEOUT_S", "300"))
    jax.distributed.initialize(address, num_processes=n, process_id=pid, initialization_timeout=timeout)
    return True
