"""Multi-process (multi-host) start-up: `jax.distributed.initialize` from the environment.

- Explicit: `JAX_COORDINATOR_ADDRESS=host:port`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`.
- A cluster JAX detects itself: a SLURM job step with more than one task (`srun`), a multi-host Cloud TPU
  slice, an Open MPI launch (`mpirun`). There `jax.distributed.initialize()` is called with no arguments and
  JAX's own cluster detection fills in the coordinator, the process count and this process's id.

Every process then runs the same command; each feeds only its rows of the global batch, process 0 writes the
run's files (and holds the run directory's lock), and orbax writes each process's shards of the checkpoint.
Processes that did not form one JAX cluster each count as process 0 of 1, so the second to reach a run
directory is refused by its lock instead of training alone into it.
"""

from __future__ import annotations

import os

import jax

from jaxformer.errors import UserError


def _int_env(*names: str) -> int:
    for name in names:
        try:
            return int(os.environ[name])
        except (KeyError, ValueError):
            continue
    return 0


def detected_cluster() -> tuple[str, int] | None:
    """(what, number of processes) when the environment is a multi-process launch JAX can set up by itself."""
    if "SLURM_JOB_ID" in os.environ and _int_env("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS") > 1:
        return "SLURM", _int_env("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1:
        return "Cloud TPU", len(hosts)
    if _int_env("OMPI_COMM_WORLD_SIZE") > 1:
        return "Open MPI", _int_env("OMPI_COMM_WORLD_SIZE")
    return None


def maybe_initialize() -> bool:
    """Initialise JAX's distributed runtime when the environment describes more than one process."""
    timeout = int(os.environ.get("JAXFORMER_INIT_TIMEOUT_S", "300"))
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        try:
            n = int(os.environ.get("JAX_NUM_PROCESSES", ""))
            pid = int(os.environ.get("JAX_PROCESS_ID", ""))
        except ValueError:
            raise UserError("JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES and JAX_PROCESS_ID must be set "
                            "to integers too (or unset JAX_COORDINATOR_ADDRESS for a single-process run).") from None
        jax.distributed.initialize(address, num_processes=n, process_id=pid, initialization_timeout=timeout)
        return True
    cluster = detected_cluster()
    if cluster is None:
        return False
    what, n = cluster
    jax.distributed.initialize(initialization_timeout=timeout)
    if jax.process_count() != n:
        raise UserError(f"This {what} launch has {n} processes but JAX joined {jax.process_count()}: every "
                        f"process must run the same jaxformer command in the same job step.")
    return True
