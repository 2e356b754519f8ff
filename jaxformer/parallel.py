"""Mesh construction and the ONE table that maps logical parameter axes to mesh axes.

Parameters are annotated with logical names (`embed`, `vocab`, `heads`, `kv_heads`, `mlp`, `expert`, ...) in
`jaxformer/model/`; `RULES` below is the only place that says where each name lives on the mesh.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxformer.config import MeshConfig

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated)
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp", "expert"),
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "expert": "expert",
    "head_dim": None,
    "norm": None,
    # ALBERT's factorised embedding width (model.embed_dim, ~128): replicated. Sharding it over fsdp as "embed"
    # gave wrong gradients on a data x fsdp x tensor = 2x2x2 mesh (XLA's partitioner, jax 0.10.2; the loss was
    # right); it is small next to d_model, so keeping it whole costs little.
    "embed_factor": None,
}


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
    """A 4-axis mesh (`data`, `fsdp`, `tensor`, `expert`); Auto axis types so the rules table drives sharding."""
    devices = jax.devices() if devices is None else devices
    shape = (cfg.data, cfg.fsdp, cfg.tensor, cfg.expert)
    if -1 in shape:
        shape = tuple(len(devices) // math.prod(s for s in shape if s != -1) if s == -1 else s for s in shape)
    grid = np.asarray(devices[: math.prod(shape)]).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
    """PartitionSpec for one array: each dim goes where RULES says, unless that mesh axis is already used by
    another dim or does not divide the dim evenly (then that dim is replicated, e.g. 65 chars over tensor=2)."""
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape, strict=True):
        target = RULES.get(name) if name else None
        names = (target,) if isinstance(target, str) else tuple(target or ())
        names = tuple(a for a in names if a not in used and mesh.shape[a] > 1)
        if names and dim % math.prod(mesh.shape[a] for a in names) == 0:
            used.update(names)
            spec.append(names[0] if len(names) == 1 else names)
        else:
            spec.append(None)
    return P(*spec)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def tree_shardings(tree, mesh: Mesh):
    """NamedShardings for a pytree holding nnx Variables (params, and optimizer moments that mirror them):
    Variables follow their `axes` metadata through RULES, every other leaf (step counters) is replicated."""
    def one(x):
        if _is_variable(x):
            axes = x.get_metadata().get("axes") or (None,) * len(x.shape)
            return NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh))
        return NamedSharding(mesh, P())
    return jax.tree.map(one, tree, is_leaf=_is_variable)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Global batches are split over the batch axes (`data`, `fsdp`, `expert`); other dims are replicated."""
    return NamedSharding(mesh, P(RULES["batch"], *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())

